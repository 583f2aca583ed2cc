"""Optional starting weights for the stages, from published files (reference §5).

Stage 1 starts the regression backbone from a pretrained NAFNet/HINet/RRDBNet file; stage 2 starts
the StyleGAN2 generator and discriminator from BasicSR files (`net_g`: `params_ema`, `net_d`: `params`).
Loads are strict and report every mismatched key. Call these before building the StageTrainer (under
DDP, wrapping then broadcasts rank 0's weights to the other workers).
"""

import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ugpnet.checkpoint import load_state_dict_strict
from ugpnet.model import UGPNet
from ugpnet.official import read_official_file, unwrap_state_dict


def read_pretrained(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Plain tensors from a safetensors file or a `.pth` (BasicSR `params_ema` > `params` > plain)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file {path} does not exist")
    raw = load_file(str(path)) if path.suffix == ".safetensors" else read_official_file(path)
    return unwrap_state_dict(raw, str(path))


def init_regression_backbone(model: UGPNet, path: str | os.PathLike) -> None:
    """Stage 1: the regression backbone (residual approach) or the whole ×8 net (direct approach)."""
    target = getattr(model.resmodule, "regression", model.resmodule)
    load_state_dict_strict(target, read_pretrained(path), f"{path} (regression backbone)")


def init_generator(model: UGPNet, path: str | os.PathLike) -> None:
    """Stage 2: the StyleGAN2 generator from a BasicSR `net_g` file (its EMA weights when present)."""
    load_state_dict_strict(model.synmodule.generator, read_pretrained(path), f"{path} (StyleGAN2 generator)")


def init_discriminator(discriminator: nn.Module, path: str | os.PathLike) -> None:
    """Stage 2: the StyleGAN2 discriminator from a BasicSR `net_d` file. Note the official code then feeds
    it [0,1] images although it was trained on [-1,1] (reference §9.8): see `discriminator_range`."""
    load_state_dict_strict(discriminator, read_pretrained(path), f"{path} (StyleGAN2 discriminator)")
