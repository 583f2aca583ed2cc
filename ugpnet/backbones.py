"""Registry of regression backbones. Adding a backbone is adding an entry here.

Each entry builds the module that the restoration module wraps. Residual backbones return a
full-resolution feature (and get a ResidualEncoder); direct backbones return (image, feature)
at `scale`× the input and are the restoration module themselves.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import nn

from ugpnet.archs.hinet import HINet
from ugpnet.archs.nafnet import NAFNet, NAFNetLocal
from ugpnet.archs.rrdbnet import RRDBNetX8
from ugpnet.archs.unet import UNet


@dataclass(frozen=True)
class Backbone:
    name: str
    build: Callable[..., nn.Module]
    approach: Literal["residual", "direct"]
    scale: int
    description: str


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in [
        Backbone("nafnet", NAFNet, "residual", 1, "NAFNet (global channel attention)"),
        Backbone("nafnet_local", NAFNetLocal, "residual", 1, "NAFNet with TLSC local pooling (deblur)"),
        Backbone("hinet", HINet, "residual", 1, "HINet, UGPNet's conv_01 reuse in stage 2"),
        Backbone("unet", UNet, "residual", 1, "plain U-Net (the paper's Fig. 4)"),
        Backbone("rrdb_x8", RRDBNetX8, "direct", 8, "RRDBNet ×8 (ESRGAN), direct approach"),
    ]
}


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}") from None
