"""bf16 (and, on CUDA, fp16) against fp32 on the conformance inputs, as 8-bit outputs.

For each official preset: the conformance weights and input (shared/conformance), one fp32 forward
and one forward per reduced precision, and the distance of each output (I_R, I_G, I_F) written as an
8-bit image (ugpnet.inference.eight_bit_distance). Then the same for the shipped default models
(trained weights) on a real photo. These figures are the documented tolerance (docs/execution.md).
Usage:

    python bench/precision_tolerance.py                         # five official presets, three defaults
    python bench/precision_tolerance.py --presets rrdb_x8 --defaults sr
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
from conformance_fixtures import CONFORMANCE_DIR, OFFICIAL_PRESETS, lq_input, write_official_files  # noqa: E402

import ugpnet  # noqa: E402
from ugpnet.inference import autocast, eight_bit_distance  # noqa: E402
from ugpnet.tasks import TASKS, get_task  # noqa: E402

OUTPUTS = ("I_R", "I_G", "I_F")


def measure(preset: str, precisions: list[str], device: torch.device) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        model = ugpnet.import_official(preset, **write_official_files(preset, Path(tmp))).to(device)
    lq = lq_input(preset).to(device)
    row = {"preset": preset}
    with torch.inference_mode():
        started = time.perf_counter()
        reference = model(lq, return_all=True)
        row["fp32_s"] = round(time.perf_counter() - started, 2)
        for precision in precisions:
            started = time.perf_counter()
            with autocast(precision, device):
                outputs = model(lq, return_all=True)
            row[f"{precision}_s"] = round(time.perf_counter() - started, 2)
            for name, ref, out in zip(OUTPUTS, reference, outputs, strict=True):
                row[f"{precision}_{name}"] = {k: round(v, 6) for k, v in eight_bit_distance(ref, out).items()}
    return row


def measure_default(task: str, precisions: list[str], device: torch.device) -> dict:
    """A shipped (trained) default model on a real photo: the conformance input of a preset of the same
    task, resized to the model's input size."""
    from PIL import Image

    model = ugpnet.load(get_task(task).default_model).to(device).eval()
    source = next(name for name in OFFICIAL_PRESETS if ugpnet.get_preset(name).task == task)
    with Image.open(CONFORMANCE_DIR / f"{source}.lq.png") as image:
        image = image.convert("RGB").resize((model.input_size, model.input_size), Image.Resampling.BICUBIC)
        lq = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None].to(device)
    row = {"default": task, "preset": model.preset.name}
    with torch.inference_mode():
        reference = model(lq, return_all=True)
        for precision in precisions:
            with autocast(precision, device):
                outputs = model(lq, return_all=True)
            for name, ref, out in zip(OUTPUTS, reference, outputs, strict=True):
                row[f"{precision}_{name}"] = {k: round(v, 6) for k, v in eight_bit_distance(ref, out).items()}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="*", default=list(OFFICIAL_PRESETS))
    parser.add_argument("--defaults", nargs="*", default=list(TASKS),
                        help="shipped default models to measure too (trained weights, real photos)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precisions = ["bf16", "fp16"] if device.type == "cuda" else ["bf16"]
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} "
          f"load={os.getloadavg()}", flush=True)
    for preset in args.presets:
        print(json.dumps(measure(preset, precisions, device)), flush=True)
    for task in args.defaults:
        print(json.dumps(measure_default(task, precisions, device)), flush=True)
    print(f"load={os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
