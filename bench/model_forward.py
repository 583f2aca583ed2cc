"""Model forward speed, side by side: the reference path, the default fast path and the compiled path.

The reference path (`ugpnet.set_fast(model, False)`) is the official computation op for op, so its
speed stands in for the official code's. One process, same weights and inputs, the paths alternated
run by run so drifting machine load hits them alike; min and median of `--runs` runs. Printed with
the machine load (os.getloadavg()) because other work on the machine changes every figure.

For each preset: model GFLOP per image (torch.utils.flop_counter), ms/image and model GFLOP/s per
path and batch size, as a fraction of the measured channels_last 3×3 conv throughput, the speed-up
over the reference, and (--split) the per-module time at batch 1; --layouts times each fast-path
module in channels_last against contiguous (what sets the modules' `fast_channels_last`).

    python bench/model_forward.py                                  # the three 512² presets, all paths
    python bench/model_forward.py --presets nafnet_denoise --paths reference fast --batches 1 --runs 3
    python bench/model_forward.py --presets small_denoise --paths reference fast compiled --batches 1 2
    python bench/model_forward.py --presets nafnet_denoise --compile-option freezing=1 --compile-option cpp_wrapper=1

Every path runs every batch in --batches (default 1 2 4); the compiled path compiles once per batch
size (static shapes, as the actors do), and its first call at each batch is printed as compile time.
"""

import argparse
import copy
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import ugpnet
from ugpnet.compiled import compile_model

DEFAULT_PRESETS = ["nafnet_denoise", "rrdb_x8", "hinet_deblur"]
PATHS = ("reference", "fast", "compiled")


def load() -> str:
    return "load {:.1f}/{:.1f}/{:.1f}".format(*os.getloadavg())


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def conv_gflops(runs: int) -> float:
    """Throughput of a 64-channel 3×3 conv at 512², channels_last, batch 1 (the model's common op)."""
    x = torch.randn(1, 64, 512, 512).contiguous(memory_format=torch.channels_last)
    w = torch.randn(64, 64, 3, 3)
    flops = 2 * 64 * 64 * 9 * 512 * 512
    with torch.inference_mode():
        F.conv2d(x, w, padding=1)
        return flops / min(timed(lambda: F.conv2d(x, w, padding=1)) for _ in range(runs)) / 1e9


def model_flops(model, lq) -> int:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(lq)
    return counter.get_total_flops()


def build_paths(preset: str, names, cache_dir, options=None):
    reference = ugpnet.set_fast(ugpnet.build(preset, seed=0), False)
    paths = {"reference": reference}
    if "fast" in names:
        paths["fast"] = ugpnet.set_fast(copy.deepcopy(reference), True)
    if "compiled" in names:
        paths["compiled"] = compile_model(ugpnet.set_fast(copy.deepcopy(reference), True), cache_dir,
                                          options=options or None)
    return paths


def time_paths(paths: dict, lq, runs: int) -> dict[str, list[float]]:
    """Seconds per call for each path, alternated; the first (warm-up / compile) call is not counted."""
    times = {name: [] for name in paths}
    with torch.inference_mode():
        for name, model in paths.items():
            seconds = timed(lambda m=model: m(lq))
            if name == "compiled":
                print(f"    compile + first call at batch {lq.shape[0]}: {seconds:.1f} s ({load()})", flush=True)
        for _ in range(runs):
            for name, model in paths.items():
                times[name].append(timed(lambda m=model: m(lq)))
    return times


def conv_rate_now(runs: int) -> float:
    """The conv throughput measured right beside a preset's runs (load drifts between presets)."""
    return conv_gflops(runs)


def module_split(paths: dict, lq, runs: int) -> dict[str, dict[str, float]]:
    """Median ms of each top-level module per path at batch 1 (inputs computed once)."""
    reference = paths["reference"]
    with torch.inference_mode():
        restored, feature_r = reference.resmodule(lq)
        _, feature_g = reference.synmodule(restored)
    calls = {"resmodule": lambda m: m.resmodule(lq), "synmodule": lambda m: m.synmodule(restored),
             "fusmodule": lambda m: m.fusmodule(feature_g, feature_r)}
    split = {}
    with torch.inference_mode():
        for module, call in calls.items():
            samples = {name: [] for name in paths}
            for model in paths.values():
                call(model)
            for _ in range(runs):
                for name, model in paths.items():
                    samples[name].append(timed(lambda c=call, m=model: c(m)))
            split[module] = {name: 1000 * statistics.median(s) for name, s in samples.items()}
    return split


def layout_modules(model) -> dict[str, torch.nn.Module]:
    res, syn = model.resmodule, model.synmodule
    modules = {"regression": getattr(res, "regression", res)}
    if hasattr(res, "encoder"):
        modules["residual_encoder"] = res.encoder
    modules.update(fencoder=syn.fencoder, generator=syn.generator, fusion=model.fusmodule)
    return modules


def layout_probe(model, lq, runs: int) -> None:
    """Fast-path model time with one module at a time switched to contiguous activations."""
    modules = layout_modules(model)
    with torch.inference_mode():
        model(lq)
        base, alt = {name: [] for name in modules}, {name: [] for name in modules}
        for _ in range(runs):
            for name, module in modules.items():
                default = type(module).__dict__.get("fast_channels_last", True)
                base[name].append(timed(lambda: model(lq)))
                module.fast_channels_last = not default
                alt[name].append(timed(lambda: model(lq)))
                del module.fast_channels_last
        for name, module in modules.items():
            default = type(module).__dict__.get("fast_channels_last", True)
            b, a = statistics.median(base[name]), statistics.median(alt[name])
            print(f"    layout {name:17} default={'channels_last' if default else 'contiguous':13} "
                  f"model {1000 * b:8.0f} ms, flipped {1000 * a:8.0f} ms ({a / b:.2f}x)", flush=True)


def bench_preset(preset: str, args, conv_rate: float) -> None:
    paths = build_paths(preset, args.paths, args.cache_dir, compile_options(args.compile_option))
    size = paths["reference"].input_size
    lq1 = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    gflop = model_flops(paths["reference"], lq1) / 1e9
    print(f"{preset}: {gflop:.0f} GFLOP/image (reference path, batch 1); {load()}", flush=True)
    for batch in args.batches:
        lq = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        compiled_batches = args.batches if args.compiled_batches is None else args.compiled_batches
        active = {n: m for n, m in paths.items() if n != "compiled" or batch in compiled_batches}
        times = time_paths(active, lq, args.runs)
        conv_rate = conv_rate_now(args.runs)
        print(f"  channels_last 3x3 conv now: {conv_rate:.0f} GFLOP/s ({load()})", flush=True)
        ref_median = statistics.median(times["reference"])
        for name, samples in times.items():
            low, mid = min(samples) / batch, statistics.median(samples) / batch
            rate = gflop / mid
            print(f"  b{batch} {name:9} ms/img min {1000 * low:8.0f} median {1000 * mid:8.0f}  "
                  f"{rate:6.1f} GFLOP/s = {100 * rate / conv_rate:4.0f}% of conv  "
                  f"x{ref_median / statistics.median(samples):.2f} vs reference  ({load()})", flush=True)
    if args.split:
        for module, row in module_split(paths, lq1, args.runs).items():
            cells = "  ".join(f"{name} {ms:8.0f} ms" for name, ms in row.items())
            print(f"  split {module:9} {cells}", flush=True)
    if args.layouts and "fast" in paths:
        layout_probe(paths["fast"], lq1, args.runs)


def compile_options(pairs: list[str]) -> dict:
    """`freezing=1` → {"freezing": True}; other values are kept as ints or strings."""
    options = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        options[name] = {"1": True, "0": False}.get(value, int(value) if value.isdigit() else value)
    return options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="*", default=DEFAULT_PRESETS)
    parser.add_argument("--paths", nargs="*", default=list(PATHS), choices=PATHS)
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 2, 4])
    parser.add_argument("--compiled-batches", nargs="*", type=int, default=None,
                        help="batch sizes the compiled path runs (each compiles anew); default: --batches")
    parser.add_argument("--compile-option", action="append", default=[], metavar="NAME=VALUE",
                        help="inductor option for the compiled path, e.g. freezing=1, cpp_wrapper=1 (repeatable)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", default=None, help="persistent inductor cache (ugpnet.compiled)")
    parser.add_argument("--split", action=argparse.BooleanOptionalAction, default=True,
                        help="per-module time at batch 1")
    parser.add_argument("--layouts", action="store_true", help="time each module channels_last vs contiguous")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 CPU; "
          f"compile options {compile_options(args.compile_option)}; {load()}")
    conv_rate = conv_gflops(args.runs)
    print(f"channels_last 3x3 conv 64ch 512²: {conv_rate:.0f} GFLOP/s; {load()}", flush=True)
    for preset in args.presets:
        bench_preset(preset, args, conv_rate)


if __name__ == "__main__":
    main()
