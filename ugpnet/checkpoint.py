"""Model bundles (directory: `model.safetensors` + `ugpnet.json`) and strict state-dict loading.

No pickles: weights are safetensors; official `.pth` files are read with `weights_only=True`.
"""

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ugpnet.model import UGPNet
from ugpnet.presets import Preset
from ugpnet.tasks import DEFAULT_TASK

BUNDLE_FORMAT = 1
# A bundle's layout: every module that reads or writes bundles takes these names from here.
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "ugpnet.json"  # written last: a bundle is complete once its config is there
DISCRIMINATOR_STEM = "discriminator"  # save(extra_tensors={DISCRIMINATOR_STEM: …}) after training stage 2
DISCRIMINATOR_FILE = f"{DISCRIMINATOR_STEM}.safetensors"


class CheckpointMismatchError(ValueError):
    """A state dict does not fit a module; lists every missing, unexpected and misshaped key."""

    def __init__(self, source: str, missing: list[str], unexpected: list[str],
                 misshaped: list[tuple[str, tuple, tuple]]):
        self.missing, self.unexpected, self.misshaped = missing, unexpected, misshaped
        lines = [f"checkpoint {source} does not match the model:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): " + ", ".join(missing[:50]))
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected[:50]))
        if misshaped:
            lines.append(f"  misshaped keys ({len(misshaped)}): " + ", ".join(
                f"{k} {tuple(got)} (model expects {tuple(want)})" for k, got, want in misshaped[:50]))
        super().__init__("\n".join(lines))


def load_state_dict_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str,
                           assign: bool = False) -> None:
    """Strict load that reports all problems in one error instead of stopping at the first.
    `assign`: the module takes `state`'s tensors as its own instead of copying them (one copy of the
    weights fewer; for a freshly loaded state dict nothing else holds)."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = [(k, tuple(state[k].shape), tuple(expected[k].shape))
                 for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    if missing or unexpected or misshaped:
        raise CheckpointMismatchError(source, missing, unexpected, misshaped)
    module.load_state_dict(state, strict=True, assign=assign)


def save(model: UGPNet, directory: str | os.PathLike, *, task: str | None = None,
         provenance: dict[str, Any] | None = None, extra_tensors: dict[str, dict] | None = None) -> Path:
    """Write a bundle. `extra_tensors` maps a file stem to more state (e.g. the discriminator)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "ugpnet", "preset": model.preset.name})
    for stem, tensors in (extra_tensors or {}).items():
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
                  str(directory / f"{stem}.safetensors"))
    config = {"format_version": BUNDLE_FORMAT, "preset": model.preset.to_dict(),
              "task": task or model.preset.task, "provenance": provenance or {}}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return directory


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


REF_RESOLVERS_GROUP = "ugpnet.model_refs"
DEFAULT_SCHEME = "default"     # `default:TASK` (or `default`): the bundles shipped in ugpnet/defaults/
DEFAULTS_DIR = Path(__file__).parent / "defaults"


def resolve_ref(ref: str | os.PathLike) -> Path:
    """Bundle directory for a reference: a path, or `SCHEME:…` handled by a resolver registered
    under the `ugpnet.model_refs` entry-point group (e.g. `models:` from the pipelines, which
    needs MLflow; this library itself never imports it)."""
    path = Path(ref)
    if path.is_dir():
        return path
    scheme, sep, rest = str(ref).partition(":")
    if scheme == DEFAULT_SCHEME and (rest or not sep):
        return default_bundle(rest or DEFAULT_TASK)
    if sep:
        from importlib.metadata import entry_points

        for entry in entry_points(group=REF_RESOLVERS_GROUP, name=scheme):
            return Path(entry.load()(str(ref)))
        raise ValueError(f"no resolver for model reference scheme {scheme!r} in {str(ref)!r}")
    raise FileNotFoundError(f"model reference {str(ref)!r} is not a bundle directory")


def default_bundle(task: str) -> Path:
    """The default model shipped inside this package for `task` (denoise | deblur | sr)."""
    bundle = DEFAULTS_DIR / task
    if not (bundle / CONFIG_FILE).is_file():
        shipped = sorted(p.name for p in DEFAULTS_DIR.glob("*") if (p / CONFIG_FILE).is_file())
        raise FileNotFoundError(f"no shipped default model for task {task!r} in {DEFAULTS_DIR} "
                                f"(shipped: {', '.join(shipped) or 'none'})")
    return bundle


def load(ref: str | os.PathLike, device: str | torch.device = "cpu") -> UGPNet:
    """Load a model: a bundle directory, `models:/NAME@ALIAS`, `models:/NAME/VERSION`, `default:TASK`."""
    return load_bundle(resolve_ref(ref), device)
