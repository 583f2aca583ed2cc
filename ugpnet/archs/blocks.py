"""Small building blocks shared by UGPNet's own modules (official `archs/blocks.py` names)."""

import torch
from torch import nn
from torch.nn import functional as F

from ugpnet.fastpath import runs_fast


class ConvBlock(nn.Module):
    """Three 3×3 convs, each followed by [BatchNorm] and LeakyReLU(0.2); optional average-pool down."""

    def __init__(self, in_channels, out_channels, down=False, downscale=2, batch_norm=False):
        super().__init__()
        self.conv = nn.ModuleList([nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, 1, 1)
                                   for i in range(3)])
        if batch_norm:
            self.bn = nn.ModuleList([nn.BatchNorm2d(out_channels) for _ in range(3)])
        self.down, self.downscale = down, downscale

    def forward(self, x):
        activate = F.leaky_relu_ if runs_fast(self) else F.leaky_relu
        for i, conv in enumerate(self.conv):
            x = conv(x)
            if hasattr(self, "bn"):
                x = self.bn[i](x)
            x = activate(x, 0.2)
        if self.down:
            x = F.avg_pool2d(x, self.downscale)
        return x


class ResBlock(nn.Module):
    """conv → ReLU → conv, plus identity, then ReLU (SRNTT style)."""

    def __init__(self, n_filters=64):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_filters, n_filters, 3, 1, 1), nn.ReLU(),
                                  nn.Conv2d(n_filters, n_filters, 3, 1, 1))

    def forward(self, x):
        if runs_fast(self):
            conv1, _, conv2 = self.body
            return F.relu_(conv2(F.relu_(conv1(x))).add_(x))
        return F.relu(self.body(x) + x)


class ToImage(nn.Module):
    """3×3 conv to RGB followed by LeakyReLU(0.2), as the official restoration head does."""

    def __init__(self, in_channels):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 3, 3, 1, 1), nn.LeakyReLU(0.2))

    def forward(self, x):
        if runs_fast(self):
            return F.leaky_relu_(self.body[0](x), 0.2)
        return self.body(x)


def initialize_weights(*modules: nn.Module) -> None:
    """Official init: kaiming-normal (fan_out) convs with zero bias, unit BN, N(0, 0.01) linears."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_out", nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)


def zero_rows(conv: nn.Conv2d, rows: slice) -> None:
    """Output channels `rows` of `conv` read nothing and add no bias: they are 0 for every input."""
    conv.weight[rows] = 0
    if conv.bias is not None:
        conv.bias[rows] = 0


def pass_through(conv: nn.Conv2d, channels: int = 3, kernel: torch.Tensor | None = None) -> None:
    """Rows 0..channels-1 of `conv` copy input channel i to output channel i (through `kernel`, a
    centred 3×3 tap by default) and read nothing else; the other rows keep their weights and carry on
    learning. On a to-image conv (3 output rows) that is every row: it reads channels 0..2 alone.
    Identity warm starts (`init_identity`) are built from these two; call them under no_grad."""
    zero_rows(conv, slice(0, channels))
    if kernel is None:
        kernel = torch.zeros(3, 3)
        kernel[1, 1] = 1.0
    for i in range(channels):
        conv.weight[i, i] = kernel


def pad_to_multiple(x, multiple: int):
    """Zero-pad right/bottom so H and W are multiples of `multiple`; returns (padded, (H, W))."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    return x, (h, w)
