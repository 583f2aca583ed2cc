"""A plain U-Net regression backbone (the paper's Fig. 4 uses one; the official code has none).

Used with the residual approach: like NAFNet it predicts a residual image (`restore`), and UGPNet
takes its last full-resolution decoder feature.
"""

import torch
from torch import nn
from torch.nn import functional as F

from ugpnet.archs import RegressionBackbone
from ugpnet.archs.blocks import pad_to_multiple, zero_rows
from ugpnet.fastpath import in_fast_layout, runs_fast


class DoubleConv(nn.Sequential):
    def __init__(self, in_channels, out_channels):
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.LeakyReLU(0.2),
                         nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.LeakyReLU(0.2))


class UNet(nn.Module, RegressionBackbone):
    def __init__(self, img_channel=3, width=32, depth=4):
        super().__init__()
        self.feature_channels = width
        self.intro = nn.Conv2d(img_channel, width, 3, padding=1)
        chans = [width * 2**i for i in range(depth + 1)]
        self.encoders = nn.ModuleList([DoubleConv(chans[i], chans[i]) for i in range(depth)])
        self.downs = nn.ModuleList([nn.Conv2d(chans[i], chans[i + 1], 2, 2) for i in range(depth)])
        self.middle = DoubleConv(chans[depth], chans[depth])
        self.ups = nn.ModuleList([nn.ConvTranspose2d(chans[i + 1], chans[i], 2, 2)
                                  for i in reversed(range(depth))])
        self.decoders = nn.ModuleList([DoubleConv(2 * chans[i], chans[i]) for i in reversed(range(depth))])
        self.ending = nn.Conv2d(width, img_channel, 3, padding=1)
        self.padder_size = 2**depth

    def unused_parameter_names(self) -> list[str]:
        return ["ending.weight", "ending.bias"]

    def init_identity(self) -> None:
        """The feature is LeakyReLU(conv(...)) of the last decoder (the middle block when depth is 0):
        zeroing that conv's rows 0..2 makes those channels exactly 0."""
        last = self.decoders[-1] if len(self.decoders) else self.middle
        zero_rows(last[2], slice(0, 3))

    def forward(self, inp):
        x, (h, w) = pad_to_multiple(in_fast_layout(self, inp) if runs_fast(self) else inp, self.padder_size)
        x = F.leaky_relu(self.intro(x), 0.2)
        skips = []
        for encoder, down in zip(self.encoders, self.downs, strict=True):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        x = self.middle(x)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips), strict=True):
            x = decoder(torch.cat([up(x), skip], 1))
        return x[:, :, :h, :w]

    def restore(self, inp):
        return self.ending(self.forward(inp)) + inp
