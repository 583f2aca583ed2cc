"""Importer for the official UGPNet checkpoint files (three `.pth` files per model).

Accepted layouts (reference §2.6, §3.7): plain state dicts, `{"params": ...}` / `{"params_ema": ...}`
(BasicSR), keys with a `module.` prefix (DataParallel), and the synthesis file's
`{"generator", "fencoder", "wmodule", "discriminator"}` dict. Files are read with
`weights_only=True`, so no code is ever unpickled.
"""

import os

import torch

from ugpnet.model import UGPNet, build_discriminator
from ugpnet.presets import Preset, get_preset
from ugpnet.state_dicts import load_state_dict_strict

SYNTHESIS_PARTS = ("generator", "fencoder", "wmodule")


def read_official_file(path: str | os.PathLike) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # an unpicklable object or a corrupt file: say which file and why
        raise ValueError(f"cannot read official checkpoint {path} as plain tensors: {exc}") from exc


def unwrap_state_dict(obj: dict, source: str) -> dict[str, torch.Tensor]:
    """Plain tensor dict from any official layout: params_ema > params > itself; strip `module.`."""
    for key in ("params_ema", "params", "state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{source}: expected a dict of tensors (optionally under params/params_ema)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def import_official(preset: str | Preset, *, resmodule: str | os.PathLike, synmodule: str | os.PathLike,
                    fusmodule: str | os.PathLike, check_discriminator: bool = True) -> UGPNet:
    """Build `preset` and load the three official files into it strictly; returns the model (eval)."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    model = UGPNet(preset)
    load_state_dict_strict(model.resmodule, unwrap_state_dict(read_official_file(resmodule), str(resmodule)),
                           f"{resmodule} (restoration module)")
    synthesis = read_official_file(synmodule)
    missing = [part for part in SYNTHESIS_PARTS if part not in synthesis]
    if missing:
        raise ValueError(f"{synmodule}: synthesis checkpoint lacks {', '.join(missing)} "
                         f"(expected a dict with {', '.join(SYNTHESIS_PARTS)} [, discriminator])")
    for part in SYNTHESIS_PARTS:
        load_state_dict_strict(getattr(model.synmodule, part), unwrap_state_dict(synthesis[part], part),
                               f"{synmodule}[{part!r}]")
    if check_discriminator and "discriminator" in synthesis:
        official_discriminator(preset, synthesis)
    load_state_dict_strict(model.fusmodule, unwrap_state_dict(read_official_file(fusmodule), str(fusmodule)),
                           f"{fusmodule} (fusion module)")
    return model.eval()


def official_discriminator(preset: str | Preset, synmodule: str | os.PathLike | dict):
    """The stage-2 StyleGAN2 discriminator stored in an official synthesis file, loaded strictly."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    synthesis = synmodule if isinstance(synmodule, dict) else read_official_file(synmodule)
    if "discriminator" not in synthesis:
        raise ValueError("synthesis checkpoint has no 'discriminator' entry")
    discriminator = build_discriminator(preset)
    load_state_dict_strict(discriminator, unwrap_state_dict(synthesis["discriminator"], "discriminator"),
                           "synthesis checkpoint['discriminator']")
    return discriminator
