"""Pretrained VGG feature extractors and LPIPS, loaded only from files the user supplies.

Nothing here can be downloaded on our machines, and a perceptual loss on random VGG weights would
train silently towards nonsense, so a missing or unreadable file is always an error that names the
file needed. State-dict keys are torchvision's (`features.0.weight`, …) and the lpips package's
(`lin0.model.1.weight`, …), so the standard published files load as they are:

    vgg16: torchvision `vgg16(weights="IMAGENET1K_V1")` state dict, e.g. vgg16-397923af.pth
    vgg19: torchvision `vgg19(weights="IMAGENET1K_V1")` state dict, e.g. vgg19-dcbb9e9d.pth
    lpips heads: lpips 0.1.x `lpips/weights/v0.1/vgg.pth`
"""

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ugpnet.state_dicts import load_state_dict_strict

# Conv widths per block; "M" is a 2×2 max-pool. Layer indices then match torchvision's `features`.
VGG_LAYOUTS = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}
FILE_HINTS = {
    "vgg16": "torchvision's VGG16 ImageNet state dict (vgg16-397923af.pth, or its `features.*` part)",
    "vgg19": "torchvision's VGG19 ImageNet state dict (vgg19-dcbb9e9d.pth, or its `features.*` part)",
    "lpips_heads": "the LPIPS v0.1 linear heads for VGG (lpips package: lpips/weights/v0.1/vgg.pth)",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# LPIPS taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of VGG16 (indices into `features`).
LPIPS_TAPS = (3, 8, 15, 22, 29)
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
# lpips' ScalingLayer: maps [-1,1] inputs to roughly ImageNet-normalised values.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


class MissingWeightsError(FileNotFoundError):
    """A pretrained file that a loss needs is not given, missing, or unreadable."""


@dataclass(frozen=True)
class PerceptualWeights:
    """Paths of the pretrained files the perceptual (LPIPS) and contextual losses need."""
    vgg16: str | None = None        # torchvision VGG16 state dict: the LPIPS backbone
    lpips_heads: str | None = None  # lpips v0.1 'vgg' linear heads
    vgg19: str | None = None        # torchvision VGG19 state dict: the contextual loss features

    def require(self, name: str, needed_for: str) -> Path:
        """The path of `name` (a field), or MissingWeightsError saying which file `needed_for` needs."""
        path = getattr(self, name)
        if path is None:
            raise MissingWeightsError(f"{needed_for} needs {FILE_HINTS[name]}; set perceptual.{name} to its path")
        if not Path(path).is_file():
            raise MissingWeightsError(f"{needed_for} needs {FILE_HINTS[name]}: perceptual.{name} = {path} "
                                      f"does not exist")
        return Path(path)


def read_weights_file(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """A tensor dict from a safetensors file or a plain `torch.save` file (never unpickles code)."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"{what}: file {path} does not exist")
    try:
        state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(
            path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MissingWeightsError(f"{what}: cannot read {path} as plain tensors ({exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MissingWeightsError(f"{what}: {path} does not hold a dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


class VGGFeatures(nn.Module):
    """torchvision's VGG `features` (up to `last_layer`, exclusive), frozen, in eval mode.

    With `imagenet_input=True` (default) it takes images in [0,1] and ImageNet-normalises them;
    otherwise the caller normalises (LPIPS has its own scaling layer).
    """

    def __init__(self, arch: str, weights: str | os.PathLike, last_layer: int | None = None,
                 imagenet_input: bool = True):
        super().__init__()
        layers, in_channels = [], 3
        for width in VGG_LAYOUTS[arch]:
            if width == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU()]
                in_channels = width
        self.features = nn.Sequential(*layers[:last_layer])
        self.imagenet_input = imagenet_input
        # Non-persistent: the state dict stays exactly torchvision's.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        state = read_weights_file(weights, f"{arch} weights ({FILE_HINTS[arch]})")
        if not any(k.startswith("features.") for k in state):  # a saved `vgg.features` state dict
            state = {f"features.{k}": v for k, v in state.items()}
        # Ignore the classifier and the layers past the truncation; anything else must match exactly.
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")
                 and not (k.startswith("features.") and k.split(".")[1].isdigit()
                          and int(k.split(".")[1]) >= len(self.features))}
        load_state_dict_strict(self, state, f"{weights} ({arch})")
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True):
        return super().train(False)  # pretrained and frozen: never in train mode

    def forward(self, images: torch.Tensor, taps: tuple[int, ...] | None = None):
        """images (B,3,H,W) → the last activation, or the activations after each layer in `taps`."""
        x = (images - self.mean) / self.std if self.imagenet_input else images
        outputs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if taps is not None and index in taps:
                outputs.append(x)
        return outputs if taps is not None else x


class NetLinLayer(nn.Module):
    """lpips' per-tap head: dropout (inactive in eval) then a 1×1 conv to one channel, no bias."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x):
        return self.model(x)


def unit_normalize(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return features / (features.pow(2).sum(1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """LPIPS v0.1 with the VGG16 backbone: inputs in [-1,1], output (B,) distances."""

    def __init__(self, weights: PerceptualWeights):
        super().__init__()
        vgg16 = weights.require("vgg16", "the LPIPS perceptual loss")
        heads = weights.require("lpips_heads", "the LPIPS perceptual loss")
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.net = VGGFeatures("vgg16", vgg16, last_layer=LPIPS_TAPS[-1] + 1, imagenet_input=False)
        for i, channels in enumerate(LPIPS_CHANNELS):
            setattr(self, f"lin{i}", NetLinLayer(channels))
        state = read_weights_file(heads, f"LPIPS heads ({FILE_HINTS['lpips_heads']})")
        state = {k: v for k, v in state.items() if k.startswith("lin")}
        heads_module = nn.ModuleDict({f"lin{i}": getattr(self, f"lin{i}") for i in range(len(LPIPS_CHANNELS))})
        load_state_dict_strict(heads_module, state, f"{heads} (LPIPS heads)")
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """image, target (B,3,H,W) in [-1,1] → (B,) perceptual distance."""
        taps_image = self.net((image - self.shift) / self.scale, LPIPS_TAPS)
        taps_target = self.net((target - self.shift) / self.scale, LPIPS_TAPS)
        distance = 0
        for i, (a, b) in enumerate(zip(taps_image, taps_target, strict=True)):
            difference = (unit_normalize(a) - unit_normalize(b)) ** 2
            distance = distance + getattr(self, f"lin{i}")(difference).mean((2, 3))
        return distance.flatten()
