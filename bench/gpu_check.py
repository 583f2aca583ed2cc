"""The GPU check: one prepared run that says whether this project is right and fast on a CUDA machine.

Steps (each prints one JSON line; the last line is the verdict):
1. conformance: every official preset's conformance weights and input (shared/conformance) on the
   device in fp32 with TF32 off; outputs within 1e-3 relative L2 of the official reference.
2. precision: bf16 (and fp16 on CUDA) against fp32 on one preset, as 8-bit outputs.
3. model-only images/s: the model alone at 512² output, batch 8.
4. pipeline images/s: `ugpnet restore` of the same model over PNG files, fused (one actor, one GPU) and
   split (three pools on a third of the GPU each), batch 8 — beside step 3's figure.

With `--dry` (the default without CUDA) the same code runs on CPU at tiny sizes: a tiny preset
stands in for the official ones (its reference is its own fp32 CPU output), 4 images, batch 4, and Ray
declares one (absent) GPU so the actors are placed with the same whole and fractional GPU requests; the
whole check takes under a minute on 2 idle cores. Usage: bench/gpu_check.sh [--dry] [--images N].
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conformance_fixtures import (  # noqa: E402
    CONFORMANCE_DIR,
    OFFICIAL_PRESETS,
    lq_input,
    reference_outputs,
    write_official_files,
)

import ugpnet  # noqa: E402
from ugpnet.inference import autocast, eight_bit_distance  # noqa: E402

CONFORMANCE_TOLERANCE = 1e-3  # relative L2 on the device (issue 15: cuDNN may sum in another order)
THROUGHPUT_PRESET = "nafnet_denoise"
DRY_PRESET = "tiny_denoise"


def report(step: str, **values) -> dict:
    print(json.dumps({"step": step, **values}), flush=True)
    return values


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def official_model(preset: str, device: torch.device):
    with tempfile.TemporaryDirectory() as tmp:
        return ugpnet.import_official(preset, **write_official_files(preset, Path(tmp))).to(device).eval()


def conformance(device: torch.device, dry: bool) -> bool:
    """Each output's centre crop and subsampled grid against the official reference."""
    passed = True
    for preset in [DRY_PRESET] if dry else OFFICIAL_PRESETS:
        if dry:
            model = ugpnet.build(preset, seed=0).eval()
            lq = torch.rand(1, 3, model.input_size, model.input_size, generator=torch.Generator().manual_seed(0))
            with torch.inference_mode():
                reference = [t[0].numpy() for t in model(lq, return_all=True)]
            model = model.to(device)
        else:
            model, lq = official_model(preset, device), lq_input(preset)
            stored = reference_outputs(preset)
        with torch.inference_mode():
            outputs = [t[0].float().cpu().numpy() for t in model(lq.to(device), return_all=True)]
        errors = {}
        for index, (name, ours) in enumerate(zip(("I_R", "I_G", "I_F"), outputs, strict=True)):
            if dry:
                errors[name] = relative_error(ours, reference[index])
                continue
            size = ours.shape[-1]
            c, step = size // 2 - 64, size // 128
            errors[name] = max(relative_error(ours[:, c:c + 128, c:c + 128], stored[f"{name}_crop"]),
                               relative_error(ours[:, ::step, ::step], stored[f"{name}_sub"]))
        ok = max(errors.values()) <= CONFORMANCE_TOLERANCE
        passed &= ok
        report("conformance", preset=preset, device=str(device), ok=ok, tolerance=CONFORMANCE_TOLERANCE,
               relative_l2={k: float(f"{v:.3g}") for k, v in errors.items()})
    return passed


def precision(model, device: torch.device) -> None:
    lq = torch.rand(1, 3, model.input_size, model.input_size, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.inference_mode():
        reference = model(lq, return_all=True)
        for name in ("bf16", "fp16") if device.type == "cuda" else ("bf16",):
            with autocast(name, device):
                outputs = model(lq, return_all=True)
            report("precision", precision=name, device=str(device),
                   **{out: eight_bit_distance(ref, got) for out, ref, got in
                      zip(("I_R", "I_G", "I_F"), reference, outputs, strict=True)})


def model_images_per_s(model, device: torch.device, batch: int, repeats: int) -> float:
    lq = torch.rand(batch, 3, model.input_size, model.input_size).to(device)
    with torch.inference_mode():
        model(lq)  # warm-up: kernel choice, allocation
        best = float("inf")
        for _ in range(repeats):
            _synchronize(device)
            started = time.perf_counter()
            model(lq)
            _synchronize(device)
            best = min(best, time.perf_counter() - started)
    return batch / best


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write_inputs(size: int, folder: Path, count: int, seed: int = 2) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        pixels = (rng.random((size, size, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{index:04d}.png")


def pipeline_images_per_s(bundle: Path, inputs: Path, work: Path, stages: str, batch: int, gpus: float,
                          cpus_per_actor: float) -> dict:
    from pipelines.restore.run import RestoreConfig, run

    pools = 1 if stages == "fused" else 3
    # Split mode puts its three pools on fractions of the one GPU (Ray counts GPUs to 1e-4).
    config = RestoreConfig(input=str(inputs), output=str(work / f"out-{stages}"), model=str(bundle), stages=stages,
                           batch_size=batch, fit="error", gpus_per_actor=round(gpus / pools, 4),
                           cpus_per_actor=cpus_per_actor, run_id=f"gpu-check-{stages}")
    summary = run(config)
    return {"ok": summary.ok, "total": summary.total, "images_per_s": summary.images_per_s,
            "model_ms_per_image": round(summary.stage_ms.get("model_ms", 0.0) / max(1, summary.ok), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry", action="store_true", help="CPU, tiny sizes (the default without CUDA)")
    parser.add_argument("--images", type=int, default=None, help="pipeline inputs (default: 256, dry: 4)")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    dry = args.dry or not cuda
    device = torch.device("cuda" if cuda and not dry else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32: TF32 would fail the 1e-3 check
    torch.backends.cudnn.allow_tf32 = False
    started = time.perf_counter()
    report("start", device=str(device), dry=dry, torch=torch.__version__, load=os.getloadavg(),
           gpu=torch.cuda.get_device_name(0) if cuda else None, conformance_dir=str(CONFORMANCE_DIR))
    passed = conformance(device, dry)
    model = (ugpnet.build(DRY_PRESET, seed=0) if dry else official_model(THROUGHPUT_PRESET, device)).to(device).eval()
    precision(model, device)
    batch = 4 if dry else 8
    report("model", preset=model.preset.name, batch=batch, output=model.preset.resolution, device=str(device),
           images_per_s=round(model_images_per_s(model, device, batch, repeats=2 if dry else 5), 3))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = ugpnet.save(model.cpu(), work / "bundle")
        write_inputs(model.input_size, work / "in", args.images or (4 if dry else 256))
        del model  # the actors load their own copy from the object store
        import ray

        # Dry: a 2-CPU Ray that declares one GPU, so the actors are placed exactly as on a GPU machine
        # (whole and fractional GPUs); without CUDA each actor then runs on its CPU.
        ray.init(include_dashboard=False, num_cpus=2 if dry else None, num_gpus=1 if dry else None)
        try:
            for stages in ("fused", "split"):
                result = pipeline_images_per_s(bundle, work / "in", work, stages, batch, gpus=1.0,
                                               cpus_per_actor=0.5 if dry else 1.0)
                passed &= result["ok"] == result["total"]
                report("pipeline", stages=stages, batch=batch, device=str(device), **result)
        finally:
            ray.shutdown()
    report("verdict", ok=bool(passed), seconds=round(time.perf_counter() - started, 1), load=os.getloadavg())
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
