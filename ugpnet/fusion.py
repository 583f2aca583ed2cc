"""Fusion module: merges the generator feature F_G with the restoration feature F_R (reference §4)."""

from torch import nn

from ugpnet.archs.blocks import ResBlock, initialize_weights
from ugpnet.fastpath import in_fast_layout, runs_fast


class FusionNet(nn.Module):
    def __init__(self, num_block=8, chan=64, width=64):
        super().__init__()
        self.conv = nn.Conv2d(chan, width, 3, 1, 1)
        self.body = nn.Sequential(*[ResBlock(width) for _ in range(num_block)])
        self.last = nn.Conv2d(width, 3, 3, 1, 1)
        initialize_weights(self)

    def forward(self, synthesis_feature, restoration_feature):
        """F_G (B,chan,S,S), F_R (B,width,S,S) → fused image (B,3,S,S), raw (no clamp)."""
        if runs_fast(self):
            merged = self.conv(in_fast_layout(self, synthesis_feature)).add_(restoration_feature)
            return self.last(self.body(merged))
        return self.last(self.body(self.conv(synthesis_feature) + restoration_feature))
