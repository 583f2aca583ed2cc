"""Restoration module: a regression backbone plus, for residual backbones, the ResidualEncoder.

Residual approach (NAFNet, HINet, U-Net): those nets predict a residual, so their last feature
does not carry image content; an extra encoder of the LQ input supplies it (reference §2.4).
Direct approach (RRDBNet ×8): the backbone's HR feature is used as it is, and the backbone itself
is the restoration module (keys `resmodule.conv_first.*`).
"""

from torch import nn

from ugpnet.archs import RegressionBackbone, RestorationModule
from ugpnet.archs.blocks import ConvBlock, ToImage, initialize_weights, pass_through
from ugpnet.fastpath import in_fast_layout, runs_fast


class ResidualEncoder(nn.Module):
    """Encodes the LQ input, adds the regression feature, and decodes F_R (64 ch) and I_R."""

    def __init__(self, chan=32, out_chan=64):
        super().__init__()
        self.input_encoder = ConvBlock(3, chan)
        self.merge_decoder = nn.ModuleList([ConvBlock(chan, out_chan), ConvBlock(out_chan, out_chan)])
        self.to_img = ToImage(out_chan)
        initialize_weights(self)

    def forward(self, lq, regression_feature):
        if runs_fast(self):
            feature = self.input_encoder(in_fast_layout(self, lq)).add_(regression_feature)
        else:
            feature = regression_feature + self.input_encoder(lq)
        for block in self.merge_decoder:
            feature = block(feature)
        return self.to_img(feature), feature


class ResModule(nn.Module, RestorationModule):
    """Residual-approach restoration: `regression` backbone + `encoder` (official key names)."""

    def __init__(self, regression: RegressionBackbone, feature_channels=64):
        super().__init__()
        self.regression = regression
        self.encoder = ResidualEncoder(regression.feature_channels, feature_channels)

    def unused_parameter_names(self) -> list[str]:
        return [f"regression.{n}" for n in self.regression.unused_parameter_names()]

    @property
    def regression_backbone(self) -> nn.Module:
        return self.regression

    @property
    def image_head(self) -> nn.Conv2d:
        return self.encoder.to_img.body[0]

    def init_identity(self) -> None:
        """The backbone leaves channels 0..2 of its feature at 0; every encoder conv on the path to
        the image passes channels 0..2 through, so I_R = LQ exactly (images are ≥ 0, the LeakyReLUs
        pass them unchanged)."""
        self.regression.init_identity()
        for block in [self.encoder.input_encoder, *self.encoder.merge_decoder]:
            for conv in block.conv:
                pass_through(conv)
        pass_through(self.image_head)

    def forward(self, lq):
        """lq (B,3,H,W) in [0,1] → (restored (B,3,H,W) ≈[0,1], F_R (B,64,H,W))."""
        return self.encoder(lq, self.regression(lq))
