"""UGPNet image restoration in pure PyTorch: regression + generative prior + fusion.

    import ugpnet
    model = ugpnet.load("path/to/bundle")           # or "default:deblur", "preset:tiny_denoise@3", "models:/…"
    model = ugpnet.build("small_denoise")           # fresh weights
    fused = model(lq)                                # lq: (B,3,H,W) float RGB in [0,1]
    restored, synthesized, fused = model(lq, return_all=True)
"""

from ugpnet.catalog import PresetInfo, build, list_presets
from ugpnet.checkpoint import save
from ugpnet.fastpath import set_fast
from ugpnet.model import UGPNet, UGPNetOutput
from ugpnet.model_refs import ModelRefError, load, resolve_ref
from ugpnet.official import import_official
from ugpnet.presets import PRESETS, Preset, get_preset
from ugpnet.state_dicts import CheckpointMismatchError

__all__ = [
    "PRESETS", "CheckpointMismatchError", "ModelRefError", "Preset", "PresetInfo", "UGPNet", "UGPNetOutput", "build",
    "get_preset", "import_official", "list_presets", "load", "resolve_ref", "save", "set_fast",
]
