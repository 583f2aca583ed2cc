"""Network architectures, and the two interfaces the rest of ugpnet reaches them through.

`RegressionBackbone` is what every entry of `ugpnet.backbones.BACKBONES` builds; `RestorationModule`
is what `UGPNet.resmodule` is: a `ResModule` (a residual backbone plus its encoder) or, for the direct
approach, the backbone itself. Each architecture subclasses the protocols it implements, and their
methods are abstract, so a class that lacks one cannot be instantiated (instead of a `hasattr` probe
quietly taking another branch).
"""

from abc import abstractmethod
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class RegressionBackbone(Protocol):
    """A regression network UGPNet's restoration module is built on (reference §2.4).

    Residual backbones return a full-resolution feature of `feature_channels` channels; direct
    backbones return (image, feature) at their scale, the feature having `feature_channels` channels.
    """

    feature_channels: int

    @abstractmethod
    def unused_parameter_names(self) -> list[str]:
        """Parameter names (relative to this module) that never reach the output: kept so that
        official checkpoints load strictly, left out of training."""

    @abstractmethod
    def init_identity(self) -> None:
        """The stage-1 warm start's part in this backbone, on fresh weights (call under no_grad).

        Residual backbones: feature channels 0..2 become exactly 0 for every input, so that the
        ResidualEncoder's pass-through carries the input image alone on them. Direct backbones: the
        image output becomes the input upscaled. Raises ValueError where a backbone has none."""


@runtime_checkable
class RestorationModule(Protocol):
    """UGPNet's restoration module: lq (B,3,h,w) in [0,1] → (restored ≈[0,1], F_R)."""

    @property
    @abstractmethod
    def regression_backbone(self) -> nn.Module:
        """The backbone that pretrained regression weights (NAFNet, HINet, RRDBNet files) load into."""

    @property
    @abstractmethod
    def image_head(self) -> nn.Conv2d:
        """The conv that turns F_R into the restored image (the fusion warm start copies it)."""

    @abstractmethod
    def unused_parameter_names(self) -> list[str]:
        """As RegressionBackbone.unused_parameter_names, relative to this module."""

    @abstractmethod
    def init_identity(self) -> None:
        """Stage-1 warm start: the restored image becomes the input (upscaled for the direct approach)."""

    @abstractmethod
    def forward(self, lq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ...
