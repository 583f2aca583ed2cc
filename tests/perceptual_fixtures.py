"""Stand-in pretrained files for the perceptual losses: random weights in the published layouts.

The real files (torchvision VGG16/VGG19, lpips v0.1 heads) cannot be downloaded here; these have the
same keys and shapes, so they exercise loading and the loss maths, not what the weights mean.
"""

import torch
from safetensors.torch import save_file

from ugpnet.vgg import LPIPS_CHANNELS, VGG_LAYOUTS, PerceptualWeights


def random_vgg_state(arch: str, seed: int = 0, with_classifier: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state, index, in_channels = {}, 0, 3
    for width in VGG_LAYOUTS[arch]:
        if width == "M":
            index += 1
            continue
        std = (2 / (9 * in_channels)) ** 0.5  # He init keeps activations alive through the stack
        state[f"features.{index}.weight"] = torch.randn(width, in_channels, 3, 3, generator=g) * std
        state[f"features.{index}.bias"] = torch.zeros(width)
        index, in_channels = index + 2, width
    if with_classifier:  # torchvision's full state dict also holds the classifier; it must be ignored
        state["classifier.0.weight"] = torch.randn(16, 8, generator=g)
        state["classifier.0.bias"] = torch.zeros(16)
    return state


def random_lpips_heads(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for i, c in enumerate(LPIPS_CHANNELS)}


def write_perceptual_weights(directory) -> PerceptualWeights:
    """vgg16 as a torch file (full torchvision layout), vgg19 as safetensors (features only), lpips heads."""
    torch.save(random_vgg_state("vgg16", 1), directory / "vgg16.pth")
    save_file(random_vgg_state("vgg19", 2, with_classifier=False), str(directory / "vgg19.safetensors"))
    torch.save(random_lpips_heads(3), directory / "lpips_vgg.pth")
    return PerceptualWeights(vgg16=str(directory / "vgg16.pth"), lpips_heads=str(directory / "lpips_vgg.pth"),
                             vgg19=str(directory / "vgg19.safetensors"))
