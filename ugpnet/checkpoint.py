"""Model bundles (directory: `model.safetensors` + `ugpnet.json`); strict loading is ugpnet.state_dicts.

No pickles: weights are safetensors; official `.pth` files are read with `weights_only=True`.
References to bundles (paths, `default:`, `preset:`, `models:/`…) are resolved by ugpnet.model_refs.
"""

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ugpnet.model import UGPNet
from ugpnet.presets import Preset
from ugpnet.state_dicts import load_state_dict_strict

BUNDLE_FORMAT = 1
# A bundle's layout: every module that reads or writes bundles takes these names from here.
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "ugpnet.json"  # written last: a bundle is complete once its config is there
DISCRIMINATOR_STEM = "discriminator"  # save(extra_tensors={DISCRIMINATOR_STEM: …}) after training stage 2
DISCRIMINATOR_FILE = f"{DISCRIMINATOR_STEM}.safetensors"


def save(model: UGPNet, directory: str | os.PathLike, *, task: str | None = None,
         provenance: dict[str, Any] | None = None, extra_tensors: dict[str, dict] | None = None) -> Path:
    """Write a bundle. `extra_tensors` maps a file stem to more state (e.g. the discriminator)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_weights(state, directory / WEIGHTS_FILE, metadata={"format": "ugpnet", "preset": model.preset.name})
    for stem, tensors in (extra_tensors or {}).items():
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
                  str(directory / f"{stem}.safetensors"))
    config = {"format_version": BUNDLE_FORMAT, "preset": model.preset.to_dict(),
              "task": task or model.preset.task, "provenance": provenance or {}}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return directory


def save_weights(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """safetensors' save_file, with file bytes that depend on the tensors and metadata only. save_file
    orders the metadata as a hash map iterates, which changes from process to process, and the file's
    content hash is the model version: rewrite the header with the metadata sorted (same length)."""
    save_file(state, str(path), metadata=metadata)
    with open(path, "r+b") as file:
        length = int.from_bytes(file.read(8), "little")
        header = json.loads(file.read(length))
        tensors = sorted((item for item in header.items() if item[0] != "__metadata__"),
                         key=lambda item: item[1]["data_offsets"])
        canonical = json.dumps({"__metadata__": dict(sorted(header.get("__metadata__", {}).items())),
                                **dict(tensors)}, separators=(",", ":"), ensure_ascii=False).encode()
        if len(canonical) <= length:  # the same entries in another order: never longer
            file.seek(8)
            file.write(canonical.ljust(length))


def read_bundle_config(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a UGPNet bundle: {CONFIG_FILE} is missing")
    config = json.loads(path.read_text())
    if config.get("format_version") != BUNDLE_FORMAT:
        raise ValueError(f"{path}: unsupported bundle format_version {config.get('format_version')!r}")
    return config


def load_bundle(directory: str | os.PathLike, device: str | torch.device = "cpu") -> UGPNet:
    config = read_bundle_config(directory)
    model = UGPNet(Preset.from_dict(config["preset"]))
    state = load_file(str(Path(directory) / WEIGHTS_FILE))
    load_state_dict_strict(model, state, str(Path(directory) / WEIGHTS_FILE))
    model.bundle_config = config
    return model.to(device).eval()


