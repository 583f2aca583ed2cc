"""Synthesis module: Fencoder (base code), Wmodule (detail codes) and the StyleGAN2 generator.

The restored image I_R in [0,1] is encoded (no renormalisation) into a 16×16 base code that
replaces the generator's 16×16 activation, and into W+ detail codes; the generator's [-1,1]
output is mapped to [0,1] as (x+1)/2, without clamping (reference §3).
"""

import math

import torch
from torch import nn

from ugpnet.archs.blocks import ConvBlock, initialize_weights
from ugpnet.archs.stylegan2 import StyleGAN2Generator
from ugpnet.fastpath import in_fast_layout, runs_fast

# Fencoder output channels keyed by the resolution a block starts from (official table).
FENCODER_CHANNELS = {1024: 8, 512: 16, 256: 32, 128: 64, 64: 128, 32: 256, 16: 512, 8: 512}
DETAIL_TAP_SIZE = 32  # the Fencoder activation of this height feeds the Wmodule


class Fencoder(nn.Module):
    """Strided encoder of I_R: returns the base code (B,C,s,s) and the 32×32 tap for the Wmodule."""

    def __init__(self, spatial_size=16, encoder_input_size=512, narrow=1.0):
        super().__init__()
        num_blocks = int(math.log2(encoder_input_size // spatial_size)) + 1
        self.encoder_input_size = encoder_input_size
        blocks, in_channels = [], 3
        for i in range(num_blocks):
            out_channels = int(FENCODER_CHANNELS[encoder_input_size >> i] * narrow)
            blocks.append(ConvBlock(in_channels, out_channels, down=i < num_blocks - 1, batch_norm=True))
            in_channels = out_channels
        self.downblocks = nn.ModuleList(blocks)
        self.conv1x1 = nn.Conv2d(in_channels, in_channels, 1)
        # The tap is the output of the block that starts at 2×DETAIL_TAP_SIZE and pools to it.
        self.tap_channels = int(FENCODER_CHANNELS[2 * DETAIL_TAP_SIZE] * narrow)
        initialize_weights(self)

    def forward(self, restored):
        tap = None
        x = restored
        for block in self.downblocks:
            x = block(x)
            if x.shape[-2] == DETAIL_TAP_SIZE:
                tap = x
        if tap is None:
            raise ValueError(f"Fencoder input {tuple(restored.shape[-2:])} never reaches a "
                             f"{DETAIL_TAP_SIZE}×{DETAIL_TAP_SIZE} activation")
        return self.conv1x1(x), tap


class Wmodule(nn.Module):
    """pSp-style head: stride-2 convs from 32×32 to 1×1, then one linear per distinct code.

    Codes 0–4 all come from `linear[0]`: the generator discards what codes 0–3 drive.
    """

    def __init__(self, in_c=128, out_c=512, wpdim=16, spatial_size=32):
        super().__init__()
        num_convs = int(math.log2(spatial_size))
        layers = []
        for i in range(num_convs):
            layers += [nn.Conv2d(in_c if i == 0 else out_c, out_c, 3, 2, 1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = nn.ModuleList([nn.Linear(out_c, out_c) for _ in range(wpdim - 4)])
        self.out_c, self.wpdim = out_c, wpdim
        initialize_weights(self)

    def forward(self, tap):
        x = self.convs(tap)
        if x.shape[-2:] != (1, 1):
            raise ValueError(f"Wmodule expects a {2 ** (len(self.convs) // 2)}² input, got {tuple(tap.shape)}")
        x = x.flatten(1)
        first = self.linear[0](x)
        codes = [first] * 5 + [linear(x) for linear in self.linear[1:]]
        return torch.stack(codes, dim=1)


class SynModule(nn.Module):
    def __init__(self, generator: StyleGAN2Generator, fencoder: Fencoder, wmodule: Wmodule):
        super().__init__()
        self.generator, self.fencoder, self.wmodule = generator, fencoder, wmodule

    def unused_parameter_names(self) -> list[str]:
        return [f"generator.{n}" for n in self.generator.discarded_parameter_names()]

    def forward(self, restored, randomize_noise=False, compute_discarded=False):
        """restored (B,3,S,S) in [0,1] → (synthesized (B,3,S,S) ≈[0,1], F_G (B,C,S,S))."""
        fast = runs_fast(self)
        basecode, tap = self.fencoder(in_fast_layout(self.fencoder, restored) if fast else restored)
        codes = self.wmodule(tap)
        if fast:
            basecode = in_fast_layout(self.generator, basecode)
        image, feature = self.generator(codes, basecode, randomize_noise=randomize_noise,
                                        compute_discarded=compute_discarded)
        return (image + 1) / 2, feature

