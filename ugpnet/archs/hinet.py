"""HINet (Chen et al., CVPRW 2021): two U-Net stages with half-instance normalisation.

Reproduces UGPNet's copy exactly: stage 2 starts from `conv_01(image)` again (upstream uses
`conv_02`, whose weights stay in the state dict unused). As a UGPNet backbone it returns the
stage-2 decoder output (`wf` channels, full resolution), before `last`.
"""

import torch
from torch import nn
from torch.nn import functional as F

from ugpnet.archs import RegressionBackbone
from ugpnet.archs.blocks import pad_to_multiple
from ugpnet.fastpath import in_fast_layout, runs_fast


class UNetConvBlock(nn.Module):
    def __init__(self, in_size, out_size, downsample, relu_slope, use_csff=False, use_hin=False):
        super().__init__()
        self.relu_slope = relu_slope
        self.identity = nn.Conv2d(in_size, out_size, 1, 1, 0)
        self.conv_1 = nn.Conv2d(in_size, out_size, 3, padding=1)
        self.conv_2 = nn.Conv2d(out_size, out_size, 3, padding=1)
        if downsample and use_csff:
            self.csff_enc = nn.Conv2d(out_size, out_size, 3, 1, 1)
            self.csff_dec = nn.Conv2d(out_size, out_size, 3, 1, 1)
        if use_hin:
            self.norm = nn.InstanceNorm2d(out_size // 2, affine=True)
        if downsample:
            self.downsample = nn.Conv2d(out_size, out_size, 4, 2, 1, bias=False)

    def forward(self, x, enc=None, dec=None):
        out = self._forward_fast(x, enc, dec) if runs_fast(self) else self._forward_reference(x, enc, dec)
        if hasattr(self, "downsample"):
            return self.downsample(out), out
        return out

    def _forward_reference(self, x, enc, dec):
        out = self.conv_1(x)
        if hasattr(self, "norm"):
            normed_half, kept_half = out.chunk(2, dim=1)
            out = torch.cat([self.norm(normed_half), kept_half], dim=1)
        out = F.leaky_relu(out, self.relu_slope)
        out = F.leaky_relu(self.conv_2(out), self.relu_slope) + self.identity(x)
        if enc is not None and dec is not None:
            out = out + self.csff_enc(enc) + self.csff_dec(dec)
        return out

    def _forward_fast(self, x, enc, dec):
        out = self.conv_1(x)
        if hasattr(self, "norm"):
            # nn.InstanceNorm2d returns a contiguous tensor whatever its input, and the cat with
            # the kept half then turns every later block (all of stage 2) contiguous: normalise
            # the first half in place instead, so the block stays channels_last and copies nothing.
            half_instance_norm_(out, self.norm)
        out = F.leaky_relu_(self.conv_2(F.leaky_relu_(out, self.relu_slope)), self.relu_slope)
        out = out.add_(self.identity(x))
        if enc is not None and dec is not None:
            out = out.add_(self.csff_enc(enc)).add_(self.csff_dec(dec))
        return out


def half_instance_norm_(out: torch.Tensor, norm: nn.InstanceNorm2d) -> torch.Tensor:
    """HINet's half-instance norm in place: `norm` applied to the first `norm.num_features`
    channels of `out` (instance statistics, biased variance, as nn.InstanceNorm2d without
    running stats); the other half is kept. `out` keeps its memory format."""
    half = out[:, : norm.num_features]
    var, mean = torch.var_mean(half, dim=(2, 3), keepdim=True, correction=0)
    scale = (var + norm.eps).rsqrt_().mul_(norm.weight.view(1, -1, 1, 1))
    half.sub_(mean).mul_(scale).add_(norm.bias.view(1, -1, 1, 1))
    return out


class UNetUpBlock(nn.Module):
    def __init__(self, in_size, out_size, relu_slope):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_size, out_size, kernel_size=2, stride=2, bias=True)
        self.conv_block = UNetConvBlock(in_size, out_size, False, relu_slope)

    def forward(self, x, bridge):
        return self.conv_block(torch.cat([self.up(x), bridge], 1))


class SupervisedAttention(nn.Module):
    """SAM: predicts an image from the stage-1 feature and gates the feature with it."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, 3, 3, padding=1)
        self.conv3 = nn.Conv2d(3, channels, 3, padding=1)

    def forward(self, x, image):
        if runs_fast(self):  # the same computation with in-place sigmoid, gate and residual
            predicted = self.conv2(x).add_(image)
            return self.conv1(x).mul_(torch.sigmoid_(self.conv3(predicted))).add_(x), predicted
        predicted = self.conv2(x) + image
        gated = self.conv1(x) * torch.sigmoid(self.conv3(predicted))
        return gated + x, predicted


class HINet(nn.Module, RegressionBackbone):
    def __init__(self, in_chn=3, wf=64, depth=5, relu_slope=0.2, hin_position_left=0, hin_position_right=4):
        super().__init__()
        self.depth, self.feature_channels = depth, wf
        self.conv_01 = nn.Conv2d(in_chn, wf, 3, 1, 1)
        self.conv_02 = nn.Conv2d(in_chn, wf, 3, 1, 1)  # unused (see module docstring)
        self.down_path_1, self.down_path_2 = nn.ModuleList(), nn.ModuleList()
        prev = wf
        for i in range(depth):
            use_hin = hin_position_left <= i <= hin_position_right
            down = i + 1 < depth
            self.down_path_1.append(UNetConvBlock(prev, (2**i) * wf, down, relu_slope, use_hin=use_hin))
            self.down_path_2.append(UNetConvBlock(prev, (2**i) * wf, down, relu_slope, use_csff=down,
                                                  use_hin=use_hin))
            prev = (2**i) * wf
        self.up_path_1, self.up_path_2 = nn.ModuleList(), nn.ModuleList()
        self.skip_conv_1, self.skip_conv_2 = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(depth - 1)):
            self.up_path_1.append(UNetUpBlock(prev, (2**i) * wf, relu_slope))
            self.up_path_2.append(UNetUpBlock(prev, (2**i) * wf, relu_slope))
            self.skip_conv_1.append(nn.Conv2d((2**i) * wf, (2**i) * wf, 3, 1, 1))
            self.skip_conv_2.append(nn.Conv2d((2**i) * wf, (2**i) * wf, 3, 1, 1))
            prev = (2**i) * wf
        self.sam12 = SupervisedAttention(prev)
        self.cat12 = nn.Conv2d(prev * 2, prev, 1, 1, 0)
        self.last = nn.Conv2d(prev, in_chn, 3, 1, 1)  # unused by UGPNet, kept for keys
        self.padder_size = 2 ** (depth - 1)

    def unused_parameter_names(self) -> list[str]:
        return ["conv_02.weight", "conv_02.bias", "last.weight", "last.bias"]

    def init_identity(self) -> None:
        raise ValueError("init_identity supports the NAFNet backbones, unet and rrdb_x8, not hinet")

    def forward(self, image):
        """Returns the stage-2 decoder feature (B, wf, H, W) for any H×W."""
        fast = runs_fast(self)
        image, (h, w) = pad_to_multiple(in_fast_layout(self, image) if fast else image, self.padder_size)
        stem = x1 = self.conv_01(image)  # the blocks only read their input: stage 2 may reuse it
        encs, decs = [], []
        for i, down in enumerate(self.down_path_1):
            if i + 1 < self.depth:
                x1, before_down = down(x1)
                encs.append(before_down)
            else:
                x1 = down(x1)
        for i, up in enumerate(self.up_path_1):
            x1 = up(x1, self.skip_conv_1[i](encs[-i - 1]))
            decs.append(x1)
        sam_feature, _ = self.sam12(x1, image)
        x2 = self.cat12(torch.cat([stem if fast else self.conv_01(image), sam_feature], dim=1))
        blocks = []
        for i, down in enumerate(self.down_path_2):
            if i + 1 < self.depth:
                x2, before_down = down(x2, encs[i], decs[-i - 1])
                blocks.append(before_down)
            else:
                x2 = down(x2)
        for i, up in enumerate(self.up_path_2):
            x2 = up(x2, self.skip_conv_2[i](blocks[-i - 1]))
        return x2[:, :, :h, :w]
