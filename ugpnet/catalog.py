"""Building models from presets and listing what the presets are."""

from dataclasses import dataclass

import torch

from ugpnet.model import UGPNet
from ugpnet.presets import PRESETS, Preset, get_preset


def build(preset: str | Preset, *, seed: int | None = None) -> UGPNet:
    """A UGPNet with fresh (randomly initialised) weights, in eval mode."""
    if seed is not None:
        torch.manual_seed(seed)
    return UGPNet(get_preset(preset) if isinstance(preset, str) else preset).eval()


@dataclass(frozen=True)
class PresetInfo:
    name: str
    task: str
    backbone: str
    dataset: str
    input_size: int    # pixels, square
    resolution: int    # output pixels, square
    scale: int
    parameters: int
    official: bool
    description: str


def list_presets() -> list[PresetInfo]:
    """Every preset with its sizes and parameter count (counted on the meta device: no memory)."""
    infos = []
    for preset in PRESETS.values():
        with torch.device("meta"):
            count = sum(p.numel() for p in UGPNet(preset).parameters())
        infos.append(PresetInfo(preset.name, preset.task, preset.backbone, preset.dataset, preset.input_size,
                                preset.resolution, preset.scale, count, preset.official, preset.description))
    return infos
