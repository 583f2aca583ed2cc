"""Stage-2 geometric augmentation (reference §5, `RandomAugmentation`).

One transform per iteration, chosen by `iteration % 3`: 0 isotropic scale ~ U(7/8, 9/8),
1 translation by integer pixels, 2 rotation by an integer angle in [−5, 5]°. The same parameters
apply to the whole batch and to both the restored image and GT (so they stay aligned with each
other but not with the encoder's expectations: that is the point). Nearest interpolation, zero
fill, about the image centre, clamped to [0,1], as torchvision's `affine` in the official code.

The official translation ranges (±128 px horizontally, ±50 px vertically) are for 512-px images;
we scale them by `size / 512` so small presets see the same relative shift (±16 / ±6 px at 64 px).
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

REFERENCE_SIZE = 512  # the image side the official pixel ranges are for


@dataclass(frozen=True)
class AugmentationConfig:
    scale_range: tuple[float, float] = (7 / 8, 9 / 8)   # isotropic zoom factor
    translation_x: int = 128                            # pixels at 512 px; tx ~ randint[−X, X+1] (official)
    translation_y: int = 50                             # pixels at 512 px; ty ~ randint[−Y, Y+1] (official)
    rotation: int = 5                                   # degrees; integer angle in [−R, R]


@dataclass(frozen=True)
class AffineParams:
    scale: float = 1.0
    translation: tuple[int, int] = (0, 0)   # (tx, ty) pixels, +x right, +y down
    angle: int = 0                           # degrees, positive = clockwise on screen (torchvision `affine`)


def sample_affine(iteration: int, size: int, rng: np.random.Generator,
                  config: AugmentationConfig = AugmentationConfig()) -> AffineParams:
    """The transform of `iteration` for `size`-px images (only one of scale/translation/rotation)."""
    choice = iteration % 3
    if choice == 0:
        return AffineParams(scale=float(rng.uniform(*config.scale_range)))
    if choice == 1:
        x = round(config.translation_x * size / REFERENCE_SIZE)
        y = round(config.translation_y * size / REFERENCE_SIZE)
        return AffineParams(translation=(int(rng.integers(-x, x + 2)), int(rng.integers(-y, y + 2))))
    return AffineParams(angle=int(rng.integers(-config.rotation, config.rotation + 1)))


def apply_affine(images: torch.Tensor, params: AffineParams) -> torch.Tensor:
    """images (B,C,H,W) in [0,1] → transformed, nearest-sampled, zero-filled, clamped to [0,1]."""
    b, _, h, w = images.shape
    a = math.radians(params.angle)
    # Output pixel u (relative to the centre) samples input A⁻¹(u − t), with A = scale·rotation.
    inverse = torch.tensor([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]], dtype=torch.float64)
    inverse = inverse / params.scale
    half = torch.tensor([w / 2, h / 2], dtype=torch.float64)  # normalised ↔ pixel units (align_corners=False)
    t = torch.tensor(params.translation, dtype=torch.float64)
    matrix = inverse * half[None, :] / half[:, None]
    offset = -(inverse @ t) / half
    theta = torch.cat([matrix, offset[:, None]], 1).to(images.dtype).to(images.device)
    grid = F.affine_grid(theta.expand(b, 2, 3), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False).clamp(0, 1)


class GeometricAugmentation:
    """Seeded by (seed, iteration), so a resumed run draws exactly the transforms it would have."""

    def __init__(self, seed: int = 0, config: AugmentationConfig = AugmentationConfig()):
        self.seed, self.config = seed, config

    def params(self, iteration: int, size: int) -> AffineParams:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, iteration]))
        return sample_affine(iteration, size, rng, self.config)

    def __call__(self, iteration: int, *images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        params = self.params(iteration, images[0].shape[-1])
        return tuple(apply_affine(image, params) for image in images)
