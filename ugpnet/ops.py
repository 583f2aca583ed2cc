"""Pure-PyTorch versions of the two CUDA ops that BasicSR's StyleGAN2 relies on.

The official code JIT-compiles `fused_act` and `upfirdn2d`; both are exact formulas, so plain
tensor ops reproduce them on any device (reference §3.5).
"""

import math

import torch
import torch.nn.functional as F

SQRT2 = math.sqrt(2.0)


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor, negative_slope: float = 0.2,
                     scale: float = SQRT2) -> torch.Tensor:
    """leaky_relu(x + bias) * scale, with a per-channel bias on dim 1."""
    shape = [1, -1] + [1] * (x.dim() - 2)
    return F.leaky_relu(x + bias.view(shape), negative_slope) * scale


def fused_leaky_relu_(x: torch.Tensor, bias: torch.Tensor, negative_slope: float = 0.2,
                      scale: float = SQRT2) -> torch.Tensor:
    """`fused_leaky_relu` computed in place in `x` (inference only: no autograd through it)."""
    shape = [1, -1] + [1] * (x.dim() - 2)
    return F.leaky_relu_(x.add_(bias.view(shape)), negative_slope).mul_(scale)


def make_resample_kernel(taps: tuple[int, ...]) -> torch.Tensor:
    """2-D FIR kernel from 1-D taps (outer product), normalised to sum 1."""
    k1 = torch.tensor(taps, dtype=torch.float32)
    kernel = k1[None, :] * k1[:, None]
    return kernel / kernel.sum()


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Upsample by zero insertion, pad, filter with `kernel`, then keep every `down`-th pixel.

    `pad=(p0, p1)` is applied identically to both axes (BasicSR's convention); negative
    padding crops. The kernel is flipped as in a true convolution.
    """
    b, c, h, w = x.shape
    p0, p1 = pad
    out = x.reshape(b * c, 1, h, w)
    if up > 1:
        zeros = out.new_zeros(b * c, 1, h * up, w * up)
        zeros[:, :, ::up, ::up] = out
        out = zeros
    out = upfirdn2d_pad(out, p0, p1)
    weight = torch.flip(kernel, [0, 1]).to(dtype=out.dtype, device=out.device)[None, None]
    out = F.conv2d(out, weight)
    if down > 1:
        out = out[:, :, ::down, ::down]
    return out.reshape(b, c, out.shape[-2], out.shape[-1])


def upfirdn2d_depthwise(x: torch.Tensor, kernel: torch.Tensor, down: int = 1,
                        pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """`upfirdn2d` without upsampling, as one depthwise conv over all channels.

    Same result as `upfirdn2d(x, kernel, 1, down, pad)`, but it keeps `x`'s memory format
    (channels_last stays channels_last: no (b·c, 1, h, w) reshape copy) and strides in the conv.
    """
    c = x.shape[1]
    p0, p1 = pad
    if p0 == p1 and p0 >= 0:
        padding = p0
    else:
        x = upfirdn2d_pad(x, p0, p1)
        padding = 0
    weight = torch.flip(kernel, [0, 1]).to(dtype=x.dtype, device=x.device)[None, None]
    return F.conv2d(x, weight.expand(c, 1, *kernel.shape), stride=down, padding=padding, groups=c)


def upfirdn2d_pad(x: torch.Tensor, p0: int, p1: int) -> torch.Tensor:
    """BasicSR's symmetric (p0 before, p1 after on both axes) padding; negative values crop."""
    x = F.pad(x, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    if p0 < 0 or p1 < 0:
        h, w = x.shape[-2:]
        x = x[:, :, max(-p0, 0):h - max(-p1, 0), max(-p0, 0):w - max(-p1, 0)]
    return x
