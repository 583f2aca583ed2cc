"""NAFNet (Chen et al., ECCV 2022) and its test-time local-statistics variant NAFNetLocal (TLSC).

Key names match upstream NAFNet so official weights load strictly. As a UGPNet backbone it returns
the last decoder feature (full resolution, `width` channels), before `ending` and the global skip.
"""

import torch
from torch import nn
from torch.nn import functional as F

from ugpnet.archs import RegressionBackbone
from ugpnet.archs.blocks import pad_to_multiple, zero_rows
from ugpnet.fastpath import CHANNELS_LAST, in_fast_layout, runs_fast


class LayerNorm2d(nn.Module):
    """LayerNorm over channels at each pixel (biased variance)."""

    def __init__(self, channels, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        if runs_fast(self):
            return self._forward_fast(x)
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        y = (x - mu) / (var + self.eps).sqrt()
        return self.weight.view(1, -1, 1, 1) * y + self.bias.view(1, -1, 1, 1)

    def _forward_fast(self, x):
        # channels_last is (B,H,W,C) in memory: one fused layer_norm over the last axis, no copies.
        if x.is_contiguous(memory_format=CHANNELS_LAST):
            y = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)
            return y.permute(0, 3, 1, 2)
        var, mu = torch.var_mean(x, 1, correction=0, keepdim=True)
        y = (x - mu).mul_(torch.rsqrt(var.add_(self.eps)))
        return torch.addcmul(self.bias.view(1, -1, 1, 1), y, self.weight.view(1, -1, 1, 1))


class SimpleGate(nn.Module):
    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return a * b


class LocalAvgPool2d(nn.Module):
    """Box mean over a fixed window, replicate-padded back to the input size (TLSC).

    Falls back to a global mean when the window covers the whole feature. Uses the same
    integral-image formula as the official code so results agree to float32 rounding.
    """

    def __init__(self, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size

    def forward(self, x):
        h, w = x.shape[-2:]
        if self.kernel_size >= h and self.kernel_size >= w:
            return F.adaptive_avg_pool2d(x, 1)
        k1, k2 = min(h, self.kernel_size), min(w, self.kernel_size)
        s = F.pad(x.cumsum(dim=-1).cumsum(dim=-2), (1, 0, 1, 0))
        out = s[:, :, k1:, k2:] + s[:, :, :-k1, :-k2] - s[:, :, :-k1, k2:] - s[:, :, k1:, :-k2]
        out = out / (k1 * k2)
        oh, ow = out.shape[-2:]
        return F.pad(out, ((w - ow) // 2, (w - ow + 1) // 2, (h - oh) // 2, (h - oh + 1) // 2), mode="replicate")


class NAFBlock(nn.Module):
    def __init__(self, c, dw_expand=2, ffn_expand=2):
        super().__init__()
        dw = c * dw_expand
        self.conv1 = nn.Conv2d(c, dw, 1)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.conv3 = nn.Conv2d(dw // 2, c, 1)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw // 2, dw // 2, 1))
        self.sg = SimpleGate()
        ffn = c * ffn_expand
        self.conv4 = nn.Conv2d(c, ffn, 1)
        self.conv5 = nn.Conv2d(ffn // 2, c, 1)
        self.norm1, self.norm2 = LayerNorm2d(c), LayerNorm2d(c)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, inp):
        if runs_fast(self):
            return self._forward_fast(inp)
        x = self.sg(self.conv2(self.conv1(self.norm1(inp))))
        x = self.conv3(x * self.sca(x))
        y = inp + x * self.beta
        x = self.conv5(self.sg(self.conv4(self.norm2(y))))
        return y + x * self.gamma

    def _forward_fast(self, inp):
        x = self.sg(self.conv2(self.conv1(self.norm1(inp))))
        x = self.conv3(x.mul_(self.sca(x)))
        y = torch.addcmul(inp, x, self.beta)
        x = self.conv5(self.sg(self.conv4(self.norm2(y))))
        return x.mul_(self.gamma).add_(y)


class NAFNet(nn.Module, RegressionBackbone):
    def __init__(self, img_channel=3, width=16, middle_blk_num=1, enc_blk_nums=(), dec_blk_nums=()):
        super().__init__()
        self.feature_channels = width
        self.intro = nn.Conv2d(img_channel, width, 3, padding=1)
        self.ending = nn.Conv2d(width, img_channel, 3, padding=1)  # unused by UGPNet, kept for keys
        self.encoders, self.decoders = nn.ModuleList(), nn.ModuleList()
        self.ups, self.downs = nn.ModuleList(), nn.ModuleList()
        chan = width
        for num in enc_blk_nums:
            self.encoders.append(nn.Sequential(*[NAFBlock(chan) for _ in range(num)]))
            self.downs.append(nn.Conv2d(chan, 2 * chan, 2, 2))
            chan *= 2
        self.middle_blks = nn.Sequential(*[NAFBlock(chan) for _ in range(middle_blk_num)])
        for num in dec_blk_nums:
            self.ups.append(nn.Sequential(nn.Conv2d(chan, chan * 2, 1, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            self.decoders.append(nn.Sequential(*[NAFBlock(chan) for _ in range(num)]))
        self.padder_size = 2 ** len(self.encoders)

    def unused_parameter_names(self) -> list[str]:
        return ["ending.weight", "ending.bias"]

    def init_identity(self) -> None:
        """With zero beta/gamma (as built) every NAFBlock is the identity, so the last feature is
        intro(x) plus the last up-projection: zeroing their rows for channels 0..2 (PixelShuffle(2)
        fills channel c from rows 4c..4c+3) leaves those channels of the feature at exactly 0."""
        blocks = [m for m in self.modules() if isinstance(m, NAFBlock)]
        if any(b.beta.abs().sum() or b.gamma.abs().sum() for b in blocks):
            raise ValueError("init_identity needs a fresh NAFNet (every block's beta and gamma zero, as built)")
        zero_rows(self.intro, slice(0, 3))
        if self.ups:
            zero_rows(self.ups[-1][0], slice(0, 12))

    def forward(self, inp):
        """Returns the last decoder feature (B, width, H, W) for any H×W."""
        x, (h, w) = pad_to_multiple(in_fast_layout(self, inp) if runs_fast(self) else inp, self.padder_size)
        x = self.intro(x)
        skips = []
        for encoder, down in zip(self.encoders, self.downs, strict=True):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        x = self.middle_blks(x)
        for decoder, up, skip in zip(self.decoders, self.ups, reversed(skips), strict=True):
            x = decoder(up(x) + skip)
        return x[:, :, :h, :w]

    def restore(self, inp):
        """NAFNet's own image output (ending + global residual), for stand-alone use."""
        return self.ending(self.forward(inp)) + inp


class NAFNetLocal(NAFNet):
    """NAFNet with every channel-attention pool replaced by a fixed local window (TLSC).

    Official kernels are fixed at construction from a dummy forward at `train_size`; they equal
    1.5 × train_size / 2^level (384, 192, 96, 48 and 24 for the middle blocks at train size 256),
    so they are computed here directly.
    """

    def __init__(self, *args, train_size=256, **kwargs):
        super().__init__(*args, **kwargs)
        base = int(train_size * 1.5)
        levels = [(self.encoders[i], i) for i in range(len(self.encoders))]
        levels.append((self.middle_blks, len(self.encoders)))
        levels += [(self.decoders[i], len(self.decoders) - 1 - i) for i in range(len(self.decoders))]
        for stage, level in levels:
            kernel = (train_size >> level) * base // train_size
            for block in stage:
                block.sca[0] = LocalAvgPool2d(kernel)
