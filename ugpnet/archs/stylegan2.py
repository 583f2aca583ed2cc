"""StyleGAN2 generator (with UGPNet's base-code injection) and discriminator, BasicSR 1.3.5 semantics.

Layer and attribute names follow BasicSR's `stylegan2_arch` so that official state dicts load
strictly (reference §3.5, §10.5). Value range: the generator's image is in [-1, 1].
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from ugpnet.fastpath import runs_fast
from ugpnet.ops import fused_leaky_relu, fused_leaky_relu_, make_resample_kernel, upfirdn2d, upfirdn2d_depthwise

RESAMPLE_KERNEL = (1, 3, 3, 1)


def stylegan_channels(channel_multiplier: int, narrow: float) -> dict[int, int]:
    """Feature channels per resolution (BasicSR's table)."""
    wide = {4: 512, 8: 512, 16: 512, 32: 512}
    scaled = {64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
    table = {res: int(ch * narrow) for res, ch in wide.items()}
    table.update({res: int(ch * channel_multiplier * narrow) for res, ch in scaled.items()})
    return table


class FirFilter(nn.Module):
    """upfirdn2d with a fixed kernel; the kernel is not part of the state dict (as in BasicSR)."""

    def __init__(self, taps, up: int, down: int, pad: tuple[int, int], gain: float):
        super().__init__()
        self.register_buffer("kernel", make_resample_kernel(taps) * gain, persistent=False)
        self.up, self.down, self.pad = up, down, pad

    def forward(self, x):
        if runs_fast(self) and self.up == 1:
            return upfirdn2d_depthwise(x, self.kernel, down=self.down, pad=self.pad)
        return upfirdn2d(x, self.kernel, up=self.up, down=self.down, pad=self.pad)


def blur_after_transposed_conv(taps, kernel_size: int) -> FirFilter:
    """The smoothing that follows a stride-2 transposed conv (BasicSR UpFirDnSmooth, up=2)."""
    pad = (len(taps) - 2) - (kernel_size - 1)
    return FirFilter(taps, 1, 1, ((pad + 1) // 2 + 1, pad // 2 + 1), gain=4.0)


def blur_before_strided_conv(taps, kernel_size: int) -> FirFilter:
    """The smoothing before a stride-2 conv (BasicSR UpFirDnSmooth, down=2)."""
    pad = (len(taps) - 2) + (kernel_size - 1)
    return FirFilter(taps, 1, 1, ((pad + 1) // 2, pad // 2), gain=1.0)


def upsample_fir(taps) -> FirFilter:
    """×2 FIR upsampling of the RGB skip (BasicSR UpFirDnUpsample)."""
    pad = len(taps) - 2
    return FirFilter(taps, 2, 1, ((pad + 1) // 2 + 1, pad // 2), gain=4.0)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate: weights stored as randn/lr_mul, scaled at run time."""

    def __init__(self, in_features, out_features, bias=True, bias_init_val=0.0, lr_mul=1.0,
                 activation=None):
        super().__init__()
        self.lr_mul, self.activation = lr_mul, activation
        self.scale = lr_mul / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init_val))) if bias else None

    def forward(self, x):
        bias = None if self.bias is None else self.bias * self.lr_mul
        if self.activation == "fused_lrelu":
            out = F.linear(x, self.weight * self.scale)
            return fused_leaky_relu(out, bias if bias is not None else out.new_zeros(out.shape[1]))
        return F.linear(x, self.weight * self.scale, bias)


class EqualConv2d(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        self.stride, self.padding = stride, padding
        self.scale = 1 / math.sqrt(in_channels * kernel_size**2)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)


class FusedLeakyReLU(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        if runs_fast(self):
            return fused_leaky_relu_(x, self.bias)
        return fused_leaky_relu(x, self.bias)


class ModulatedConv2d(nn.Module):
    """Conv whose weights are scaled per sample by a style, then (optionally) demodulated."""

    def __init__(self, in_channels, out_channels, kernel_size, num_style_feat, demodulate=True,
                 upsample=False, resample_kernel=RESAMPLE_KERNEL, eps=1e-8):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.demodulate, self.upsample, self.eps = demodulate, upsample, eps
        self.modulation = EqualLinear(num_style_feat, in_channels, bias=True, bias_init_val=1)
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_channels * kernel_size**2)
        self.padding = kernel_size // 2
        if upsample:
            self.smooth = blur_after_transposed_conv(resample_kernel, kernel_size)

    def forward(self, x, style):
        if runs_fast(self):
            return self._forward_fast(x, style)
        return self._forward_reference(x, style)

    def _forward_reference(self, x, style):
        """The official layout: per-sample 5-D weights and one grouped conv over the batch."""
        b, c, h, w = x.shape
        k = self.kernel_size
        style = self.modulation(style).view(b, 1, c, 1, 1)
        weight = self.scale * self.weight * style  # (b, out, in, k, k)
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + self.eps)
            weight = weight * demod.view(b, self.out_channels, 1, 1, 1)
        x = x.reshape(1, b * c, h, w)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(b * c, self.out_channels, k, k)
            out = F.conv_transpose2d(x, weight, padding=0, stride=2, groups=b)
            out = self.smooth(out.view(b, self.out_channels, *out.shape[2:]))
        else:
            weight = weight.reshape(b * self.out_channels, c, k, k)
            out = F.conv2d(x, weight, padding=self.padding, groups=b)
            out = out.view(b, self.out_channels, *out.shape[2:])
        return out

    def _forward_fast(self, x, style):
        """The same function with one shared 4-D weight, so the conv is a plain (channels_last) conv.

        conv(x, W·s·d) = d·conv(x·s, W) for a per-input-channel style s and per-output-channel
        demodulation d. Batch 1 folds s and d into the weight (cheap: no activation is scaled);
        larger batches scale the input and the output instead of building per-sample weights.
        """
        b = x.shape[0]
        style = self.modulation(style)  # (b, in)
        weight = self.weight[0] * self.scale  # (out, in, k, k)
        demod = None
        if self.demodulate:  # Σ_{i,k}(W[o,i,k]·s[i])² = Σ_i s[i]²·Σ_k W[o,i,k]²
            demod = torch.rsqrt(style.square() @ weight.square().sum([2, 3]).t() + self.eps)  # (b, out)
        if b == 1:
            weight = weight * style.view(1, -1, 1, 1)
            if demod is not None:
                weight = weight * demod.view(-1, 1, 1, 1)
            out = self._conv(x, weight)
        else:
            out = self._conv(x * style.view(b, -1, 1, 1), weight)
            if demod is not None:
                out = out.mul_(demod.view(b, -1, 1, 1))
        return self.smooth(out) if self.upsample else out

    def _conv(self, x, weight):
        if self.upsample:  # the smoothing is per channel, so demodulating before it is the same
            return F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
        return F.conv2d(x, weight, padding=self.padding)


class StyleConv(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, num_style_feat, upsample=False,
                 resample_kernel=RESAMPLE_KERNEL):
        super().__init__()
        self.modulated_conv = ModulatedConv2d(in_channels, out_channels, kernel_size, num_style_feat,
                                              demodulate=True, upsample=upsample,
                                              resample_kernel=resample_kernel)
        self.weight = nn.Parameter(torch.zeros(1))  # noise strength
        self.activate = FusedLeakyReLU(out_channels)

    def forward(self, x, style, noise=None):
        out = self.modulated_conv(x, style)
        if noise is None:
            noise = out.new_empty(out.shape[0], 1, *out.shape[2:]).normal_()
        if runs_fast(self):
            return self.activate(out.add_(self.weight * noise))
        return self.activate(out + self.weight * noise)


class ToRGB(nn.Module):
    def __init__(self, in_channels, num_style_feat, upsample=True, resample_kernel=RESAMPLE_KERNEL):
        super().__init__()
        if upsample:
            self.upsample = upsample_fir(resample_kernel)
        self.modulated_conv = ModulatedConv2d(in_channels, 3, 1, num_style_feat, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x, style, skip=None):
        out = self.modulated_conv(x, style) + self.bias
        if skip is not None:
            if hasattr(self, "upsample"):
                skip = self.upsample(skip)
            out = out + skip
        return out


class NormStyleCode(nn.Module):
    def forward(self, x):
        return x * torch.rsqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-8)


class ConstantInput(nn.Module):
    def __init__(self, channels, size):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch):
        return self.weight.repeat(batch, 1, 1, 1)


class StyleGAN2Generator(nn.Module):
    """StyleGAN2 synthesis network driven by per-layer codes, with the 16×16 activation replaced by
    a base code (UGPNet/BDInvert). Returns the image in [-1, 1] and the last full-resolution feature.

    `style_mlp` is kept for checkpoint compatibility only: the codes are already in W+.
    """

    def __init__(self, out_size=512, num_style_feat=512, num_mlp=8, channel_multiplier=2,
                 resample_kernel=RESAMPLE_KERNEL, lr_mlp=0.01, narrow=1.0, basecode_size=16):
        super().__init__()
        self.out_size, self.num_style_feat, self.basecode_size = out_size, num_style_feat, basecode_size
        self.log_size = int(math.log2(out_size))
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.num_latent = self.log_size * 2 - 2
        self.channels = stylegan_channels(channel_multiplier, narrow)
        self.style_mlp = nn.Sequential(NormStyleCode(), *[
            EqualLinear(num_style_feat, num_style_feat, bias=True, lr_mul=lr_mlp, activation="fused_lrelu")
            for _ in range(num_mlp)])
        self.constant_input = ConstantInput(self.channels[4], 4)
        self.style_conv1 = StyleConv(self.channels[4], self.channels[4], 3, num_style_feat,
                                     resample_kernel=resample_kernel)
        self.to_rgb1 = ToRGB(self.channels[4], num_style_feat, upsample=False)
        self.style_convs, self.to_rgbs = nn.ModuleList(), nn.ModuleList()
        self.noises = nn.Module()
        for layer in range(self.num_layers):
            res = 2 ** ((layer + 5) // 2)
            self.noises.register_buffer(f"noise{layer}", torch.randn(1, 1, res, res))
        in_channels = self.channels[4]
        for level in range(3, self.log_size + 1):
            out_channels = self.channels[2**level]
            self.style_convs.append(StyleConv(in_channels, out_channels, 3, num_style_feat, upsample=True,
                                              resample_kernel=resample_kernel))
            self.style_convs.append(StyleConv(out_channels, out_channels, 3, num_style_feat,
                                              resample_kernel=resample_kernel))
            self.to_rgbs.append(ToRGB(out_channels, num_style_feat, upsample=True,
                                      resample_kernel=resample_kernel))
            in_channels = out_channels
        # Index of the resolution level (into to_rgbs) where the base code enters.
        self.basecode_level = int(math.log2(basecode_size)) - 3
        if not 0 <= self.basecode_level < len(self.to_rgbs):
            raise ValueError(f"basecode_size {basecode_size} must lie between 8 and out_size {out_size}")

    @property
    def basecode_channels(self) -> int:
        return self.channels[self.basecode_size]

    def discarded_parameter_names(self) -> list[str]:
        """Parameters whose outputs the base code replaces, plus the unused mapping MLP."""
        level = self.basecode_level
        prefixes = ["style_mlp.", "constant_input.", "style_conv1.", "to_rgb1."]
        prefixes += [f"style_convs.{i}." for i in range(2 * level + 1)]
        prefixes += [f"to_rgbs.{i}." for i in range(level)]
        return [n for n, _ in self.named_parameters() if n.startswith(tuple(prefixes))]

    def _noise(self, layer, randomize_noise):
        return None if randomize_noise else getattr(self.noises, f"noise{layer}")

    def forward(self, codes, basecode, randomize_noise=False, compute_discarded=False):
        """codes: (B, num_latent, num_style_feat); basecode: (B, C16, 16, 16) for basecode_size 16.

        `compute_discarded=True` also runs the layers before the injection, as the official code
        does; their outputs are thrown away, so the result is identical (with fixed noise).
        """
        b = codes.shape[0]
        expected = (b, self.basecode_channels, self.basecode_size, self.basecode_size)
        if tuple(basecode.shape) != expected:
            raise ValueError(f"base code shape {tuple(basecode.shape)}, expected {expected}")
        if codes.shape[1] != self.num_latent:
            raise ValueError(f"{codes.shape[1]} codes given, the generator needs {self.num_latent}")
        level0 = self.basecode_level
        if compute_discarded:
            out = self.style_conv1(self.constant_input(b), codes[:, 0], self._noise(0, randomize_noise))
            self.to_rgb1(out, codes[:, 1])
            for level in range(level0):
                out = self.style_convs[2 * level](out, codes[:, 2 * level + 1],
                                                  self._noise(2 * level + 1, randomize_noise))
                out = self.style_convs[2 * level + 1](out, codes[:, 2 * level + 2],
                                                      self._noise(2 * level + 2, randomize_noise))
            self.style_convs[2 * level0](out, codes[:, 2 * level0 + 1],
                                         self._noise(2 * level0 + 1, randomize_noise))
        out, skip, feature = basecode, None, None
        for level in range(level0, len(self.to_rgbs)):
            i = 2 * level + 1  # pointer into the codes, as in the official loop
            if level > level0:
                out = self.style_convs[2 * level](out, codes[:, i], self._noise(2 * level + 1, randomize_noise))
            out = self.style_convs[2 * level + 1](out, codes[:, i + 1],
                                                  self._noise(2 * level + 2, randomize_noise))
            skip = self.to_rgbs[level](out, codes[:, i + 2], skip)
        feature = out
        return skip, feature


class ConvLayer(nn.Sequential):
    """[blur] → equalised conv → [fused bias + leaky ReLU], BasicSR's discriminator layer."""

    def __init__(self, in_channels, out_channels, kernel_size, downsample=False,
                 resample_kernel=RESAMPLE_KERNEL, bias=True, activate=True):
        layers = []
        if downsample:
            layers.append(blur_before_strided_conv(resample_kernel, kernel_size))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                  bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_channels) if bias else nn.LeakyReLU(0.2))
        super().__init__(*layers)


class DiscriminatorResBlock(nn.Module):
    def __init__(self, in_channels, out_channels, resample_kernel=RESAMPLE_KERNEL):
        super().__init__()
        self.conv1 = ConvLayer(in_channels, in_channels, 3)
        self.conv2 = ConvLayer(in_channels, out_channels, 3, downsample=True, resample_kernel=resample_kernel)
        self.skip = ConvLayer(in_channels, out_channels, 1, downsample=True, resample_kernel=resample_kernel,
                              bias=False, activate=False)

    def forward(self, x):
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


class StyleGAN2Discriminator(nn.Module):
    """Residual StyleGAN2 discriminator with a minibatch-stddev feature; one logit per image."""

    def __init__(self, out_size=512, channel_multiplier=1, resample_kernel=RESAMPLE_KERNEL,
                 stddev_group=4, narrow=1.0):
        super().__init__()
        channels = stylegan_channels(channel_multiplier, narrow)
        log_size = int(math.log2(out_size))
        body = [ConvLayer(3, channels[out_size], 1)]
        in_channels = channels[out_size]
        for level in range(log_size, 2, -1):
            body.append(DiscriminatorResBlock(in_channels, channels[2 ** (level - 1)], resample_kernel))
            in_channels = channels[2 ** (level - 1)]
        self.conv_body = nn.Sequential(*body)
        self.final_conv = ConvLayer(in_channels + 1, channels[4], 3)
        self.final_linear = nn.Sequential(
            EqualLinear(channels[4] * 16, channels[4], activation="fused_lrelu"),
            EqualLinear(channels[4], 1))
        self.stddev_group, self.stddev_feat = stddev_group, 1

    def forward(self, x):
        out = self.conv_body(x)
        b, c, h, w = out.shape
        group = min(b, self.stddev_group)
        if b % group:
            group = 1  # the stddev grouping needs the batch to split evenly
        stddev = out.view(group, -1, self.stddev_feat, c // self.stddev_feat, h, w)
        stddev = torch.sqrt(stddev.var(0, unbiased=False) + 1e-8)
        stddev = stddev.mean([2, 3, 4], keepdim=True).squeeze(2).repeat(group, 1, h, w)
        out = self.final_conv(torch.cat([out, stddev], 1))
        return self.final_linear(out.view(b, -1))
