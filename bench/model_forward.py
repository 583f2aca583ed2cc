"""Model forward speed on this machine (fp32, CPU unless a GPU is present).

For each preset prints ms/image at batch 1 and batch 4, and the speed-up from skipping the
generator layers whose outputs the base code replaces, measured side by side in the same run
(same weights, same inputs, alternating order). Usage:

    python bench/model_forward.py                    # official 512² presets and the small presets
    python bench/model_forward.py --presets small_denoise --repeats 5
"""

import argparse
import time

import torch

import ugpnet

OFFICIAL = ["nafnet_deblur", "nafnet_denoise", "hinet_deblur", "hinet_denoise", "rrdb_x8"]
SMALL = ["small_denoise", "small_deblur", "small_unet_denoise", "small_sr_x8"]


def seconds_per_call(fn, repeats: int) -> float:
    fn()  # warm-up: first calls pay for kernel selection and allocation
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_preset(name: str, repeats: int, device: torch.device) -> dict:
    model = ugpnet.build(name, seed=0).to(device)
    row = {"preset": name}
    with torch.inference_mode():
        for batch in (1, 4):
            lq = torch.rand(batch, 3, model.input_size, model.input_size, device=device)
            row[f"ms_b{batch}"] = 1000 * seconds_per_call(lambda lq=lq: model(lq), repeats) / batch
        lq = torch.rand(1, 3, model.input_size, model.input_size, device=device)
        restored, _ = model.resmodule(lq)
        syn = model.synmodule
        skipped, computed = [], []
        for _ in range(repeats):  # alternate so drift in machine load hits both equally
            skipped.append(seconds_per_call(lambda: syn(restored), 1))
            computed.append(seconds_per_call(lambda: syn(restored, compute_discarded=True), 1))
        row["synthesis_ms_skipping"] = 1000 * min(skipped)
        row["synthesis_ms_official"] = 1000 * min(computed)
        row["synthesis_speedup"] = min(computed) / min(skipped)
        full_official = seconds_per_call(lambda: model(lq, compute_discarded=True), repeats)
        row["model_speedup"] = full_official / (row["ms_b1"] / 1000)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="*", default=OFFICIAL + SMALL)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__}")
    header = f"{'preset':18} {'ms/img b1':>10} {'ms/img b4':>10} {'syn skip':>9} {'syn full':>9} " \
             f"{'syn x':>6} {'model x':>8}"
    print(header)
    for name in args.presets:
        r = bench_preset(name, args.repeats, device)
        print(f"{name:18} {r['ms_b1']:>10.1f} {r['ms_b4']:>10.1f} {r['synthesis_ms_skipping']:>9.1f} "
              f"{r['synthesis_ms_official']:>9.1f} {r['synthesis_speedup']:>6.2f} {r['model_speedup']:>8.2f}",
              flush=True)
    print("syn skip/full: synthesis module ms/image (batch 1) skipping vs computing the discarded layers; "
          "x: ratio full/skip")


if __name__ == "__main__":
    main()
