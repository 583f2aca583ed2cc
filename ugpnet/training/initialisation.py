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
    target = getattr(model.resmodule, "regression", model.resmodule)
    load_state_dict_strict(target, read_pretrained(path), f"{path} (regression backbone)")


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
    head = model.resmodule.encoder.to_img.body[0] if hasattr(model.resmodule, "encoder") \
        else model.resmodule.conv_last
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


# Separable [1, 2, 1]/4 after a nearest ×2 upsampling is exactly bilinear ×2 (align_corners=False).
BILINEAR_AFTER_NEAREST = torch.tensor([0.25, 0.5, 0.25])


def _zero_rows(conv: nn.Conv2d, rows: slice) -> None:
    conv.weight[rows] = 0
    if conv.bias is not None:
        conv.bias[rows] = 0


def _pass_through(conv: nn.Conv2d, channels: int = 3, kernel: torch.Tensor | None = None) -> None:
    """Rows 0..channels-1 of `conv` copy input channel i to output channel i (through `kernel`, a
    centred 3×3 tap by default) and read nothing else; the other rows keep their weights and carry on
    learning. On a to-image conv (3 output rows) that is every row: it reads channels 0..2 alone."""
    _zero_rows(conv, slice(0, channels))
    if kernel is None:
        kernel = torch.zeros(3, 3)
        kernel[1, 1] = 1.0
    for i in range(channels):
        conv.weight[i, i] = kernel


def _init_residual_identity(model: UGPNet) -> None:
    regression, encoder = model.resmodule.regression, model.resmodule.encoder
    if not hasattr(regression, "intro") or not hasattr(regression, "ups"):
        raise ValueError(f"init_identity supports the NAFNet backbones and rrdb_x8, not {model.preset.backbone!r}")
    blocks = [m for m in regression.modules() if hasattr(m, "beta") and hasattr(m, "gamma")]
    if any(b.beta.abs().sum() or b.gamma.abs().sum() for b in blocks):
        raise ValueError("init_identity needs a fresh NAFNet (every block's beta and gamma zero, as built)")
    # With zero beta/gamma every NAFBlock is the identity, so the last feature is intro(x) plus the last
    # up-projection: zeroing their rows for channels 0..2 (PixelShuffle(2) fills channel c from rows
    # 4c..4c+3) leaves those channels of the regression feature at exactly 0.
    _zero_rows(regression.intro, slice(0, 3))
    _zero_rows(regression.ups[-1][0], slice(0, 12))
    for block in [encoder.input_encoder, *encoder.merge_decoder]:
        for conv in block.conv:
            _pass_through(conv)
    _pass_through(encoder.to_img.body[0])


def _init_direct_identity(model: UGPNet) -> None:
    net = model.resmodule
    _pass_through(net.conv_first)
    _zero_rows(net.conv_body, slice(0, 3))            # feat + conv_body(body(feat)) keeps channels 0..2
    # Nearest ×2 twice, then bilinear ×2: smoothing at 32 and 64 px too would be closer to bicubic
    # inside but darkens a 4–8 px border band (zero padding); measured on 128 px photo crops this mix
    # starts 1.5 dB below bicubic against 2–4 dB for the others. Training takes it from there.
    for conv in (net.conv_up1, net.conv_up2):
        _pass_through(conv)
    _pass_through(net.conv_up3, kernel=torch.outer(BILINEAR_AFTER_NEAREST, BILINEAR_AFTER_NEAREST))
    _pass_through(net.conv_hr)
    _pass_through(net.conv_last)


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
    the first step, and from then on the whole network learns.
    """
    if hasattr(model.resmodule, "encoder"):
        _init_residual_identity(model)
    else:
        _init_direct_identity(model)
