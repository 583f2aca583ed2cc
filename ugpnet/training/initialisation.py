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

from ugpnet.model import UGPNet
from ugpnet.official import read_official_file, unwrap_state_dict
from ugpnet.state_dicts import load_state_dict_strict


def read_pretrained(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Plain tensors from a safetensors file or a `.pth` (BasicSR `params_ema` > `params` > plain)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file {path} does not exist")
    raw = load_file(str(path)) if path.suffix == ".safetensors" else read_official_file(path)
    return unwrap_state_dict(raw, str(path))


def init_regression_backbone(model: UGPNet, path: str | os.PathLike) -> None:
    """Stage 1: the regression backbone (residual approach) or the whole ×8 net (direct approach)."""
    load_state_dict_strict(model.resmodule.regression_backbone, read_pretrained(path), f"{path} (regression backbone)")


def init_generator(model: UGPNet, path: str | os.PathLike) -> None:
    """Stage 2: the StyleGAN2 generator from a BasicSR `net_g` file (its EMA weights when present)."""
    load_state_dict_strict(model.synmodule.generator, read_pretrained(path), f"{path} (StyleGAN2 generator)")


def init_discriminator(discriminator: nn.Module, path: str | os.PathLike) -> None:
    """Stage 2: the StyleGAN2 discriminator from a BasicSR `net_d` file. Note the official code then feeds
    it [0,1] images although it was trained on [-1,1] (reference §9.8): see `discriminator_range`."""
    load_state_dict_strict(discriminator, read_pretrained(path), f"{path} (StyleGAN2 discriminator)")


# Lifts F_R above zero through the fusion ReLUs. Small on purpose: F_R leaves a LeakyReLU(0.2), so its
# negative part is small, and at the image border the zero padding of `last` sees 0 instead of the shift,
# an error proportional to it (measured on the default denoiser: fused 30.9 dB vs restored 32.7 dB at the
# start, 33.4 dB on the interior; a shift of 1.0 gave 19.7 dB). Training removes the border error.
FUSION_INIT_SHIFT = 0.05


@torch.no_grad()
def init_fusion_from_restoration(model: UGPNet) -> None:
    """Stage 3 warm start (ours, not the official recipe): make the fused image start out as the
    restored one, so a short run only has to learn what the synthesis feature adds.

    FusionNet computes last(body(conv(F_G) + F_R)), each ResBlock being relu(x + conv(relu(conv(x)))).
    Zeroing `conv`'s weight drops F_G, and its bias becomes a constant shift s that lifts F_R above
    zero so the ReLUs pass it unchanged; zeroing the second conv of every ResBlock makes each block
    the identity on that; `last` becomes the restoration head (the residual encoder's to-image conv,
    or RRDBNet's `conv_last`) with its bias lowered by s times the head's weight sums, which cancels
    the shift. So I_F = head(F_R) = I_R wherever F_R > −s, away from the 1-pixel image border (and
    before the head's LeakyReLU, which only touches negative pixels). Gradients reach every zeroed weight.
    """
    fusion = model.fusmodule
    head = model.resmodule.image_head
    if head.weight.shape != fusion.last.weight.shape:
        raise ValueError(f"restoration head {tuple(head.weight.shape)} and fusion output conv "
                         f"{tuple(fusion.last.weight.shape)} differ; cannot start fusion from restoration")
    nn.init.zeros_(fusion.conv.weight)
    nn.init.constant_(fusion.conv.bias, FUSION_INIT_SHIFT)
    for block in fusion.body:
        nn.init.zeros_(block.body[2].weight)
        nn.init.zeros_(block.body[2].bias)
    fusion.last.weight.copy_(head.weight)
    fusion.last.bias.copy_(head.bias - FUSION_INIT_SHIFT * head.weight.sum(dim=(1, 2, 3)))


@torch.no_grad()
def init_restoration_identity(model: UGPNet) -> None:
    """Stage 1 warm start (ours, not the official recipe): make the restored image start out as the
    input (for ×8 SR, the input upscaled: nearest ×4, then bilinear ×2), so a short run learns only what
    improves on it. Without it a small net first spends hundreds of steps learning to reproduce the
    input and, on mild blur, ends worse than the input itself.

    Channels 0..2 of every layer on the path from the input to the image become a pass-through (a
    centred tap; for SR's last ×2 a bilinear kernel after the nearest upsampling), the regression
    feature is zeroed on those channels, and the to-image conv reads only them. Images are ≥ 0, so
    the LeakyReLUs pass them unchanged: I_R = LQ exactly for the residual backbones (border included).
    The other channels keep their random weights; the to-image conv's zeroed columns get gradients at
    the first step, and from then on the whole network learns. Each architecture does its own part
    (`RestorationModule.init_identity`, `RegressionBackbone.init_identity` in ugpnet.archs).
    """
    model.resmodule.init_identity()
