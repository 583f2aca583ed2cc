"""UGPNet image restoration in pure PyTorch: regression + generative prior + fusion.

    import ugpnet
    model = ugpnet.load("path/to/bundle")           # or ugpnet.build("small_denoise")
    fused = model(lq)                                # lq: (B,3,H,W) float RGB in [0,1]
    restored, synthesized, fused = model(lq, return_all=True)
"""

from ugpnet.catalog import PresetInfo, build, list_presets
from ugpnet.checkpoint import load, save
from ugpnet.fastpath import set_fast
from ugpnet.model import UGPNet, UGPNetOutput
from ugpnet.official import import_official
from ugpnet.presets import PRESETS, Preset, get_preset
from ugpnet.state_dicts import CheckpointMismatchError

__all__ = [
    "PRESETS", "CheckpointMismatchError", "Preset", "PresetInfo", "UGPNet", "UGPNetOutput", "build", "get_preset",
    "import_official", "list_presets", "load", "save", "set_fast",
]
