"""Rebuild the official weights described by `shared/conformance/*.manifest.json` and write them in
the official three-file layout, so tests exercise the importer and strict loading together."""

import json
import zlib
from pathlib import Path

import numpy as np
import torch

CONFORMANCE_DIR = Path(__file__).resolve().parents[2] / "shared" / "conformance"
OFFICIAL_PRESETS = ("nafnet_deblur", "nafnet_denoise", "hinet_deblur", "hinet_denoise", "rrdb_x8")


def manifest(preset: str) -> dict:
    return json.loads((CONFORMANCE_DIR / f"{preset}.manifest.json").read_text())


def generated_tensor(key: str, shape, dtype: str, base: float, std: float) -> torch.Tensor:
    if dtype == "int64":
        return torch.zeros(shape, dtype=torch.int64)
    rng = np.random.default_rng(zlib.crc32(key.encode("utf-8")))
    return torch.from_numpy((base + std * rng.standard_normal(shape)).astype(np.float32))


def rebuild(entries) -> dict[str, torch.Tensor]:
    return {key: generated_tensor(key, shape, dtype, base, std) for key, shape, dtype, base, std in entries}


def write_official_files(preset: str, directory: Path) -> dict[str, Path]:
    """Save resmodule/synmodule/fusmodule `.pth` files as the official code would hold them."""
    data = manifest(preset)
    state = rebuild(data["tensors"])

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    resmodule = part("resmodule.")
    if preset.startswith("rrdb"):
        resmodule = {"params_ema": resmodule}
    synmodule = {name: part(f"synmodule.{name}.") for name in ("generator", "fencoder", "wmodule")}
    synmodule["discriminator"] = rebuild(data["discriminator_tensors"])
    paths = {"resmodule": directory / "resmodule.pth", "synmodule": directory / "synmodule.pth",
             "fusmodule": directory / "fusmodule.pth"}
    torch.save(resmodule, paths["resmodule"])
    torch.save(synmodule, paths["synmodule"])
    torch.save(part("fusmodule."), paths["fusmodule"])
    return paths


def lq_input(preset: str) -> torch.Tensor:
    from PIL import Image

    image = np.asarray(Image.open(CONFORMANCE_DIR / f"{preset}.lq.png").convert("RGB"), dtype=np.float32)
    return torch.from_numpy(image / 255.0).permute(2, 0, 1)[None].contiguous()


def reference_outputs(preset: str) -> dict[str, np.ndarray]:
    return dict(np.load(CONFORMANCE_DIR / f"{preset}.outputs.npz"))
