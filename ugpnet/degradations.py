"""Synthetic degradations that turn a clean image into a training/evaluation input (issue 4).

The official code reads pre-degraded folders, so the paper's settings are unknown (reference §6);
ours are explicit configuration, documented in docs/degradations.md. A `Degradation` is applied in a
fixed order, each part optional:

    blur (Gaussian / anisotropic Gaussian / motion kernel) → ×s bicubic downscale → Gaussian noise
    → Poisson noise → JPEG → clamp to [0,1] → [round to 8 bits]

Every random draw comes from one numpy Generator, so `degrade(gt, config, sample_seed(seed, i))` is
the same on every machine and every run: validation sets are reproducible without storing them.
"""

import io
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from ugpnet.images import quantize_levels

BLUR_KINDS = ("isotropic", "anisotropic", "motion")


@dataclass(frozen=True)
class BlurConfig:
    kinds: tuple[str, ...] = BLUR_KINDS                 # one is drawn uniformly per sample
    kernel_size: tuple[int, int] = (7, 21)              # pixels, odd sizes drawn in this inclusive range
    sigma: tuple[float, float] = (0.5, 3.0)             # pixels, std of the Gaussian kernels (per axis)
    motion_length: tuple[float, float] = (5.0, 15.0)    # pixels, length of the motion trajectory
    motion_jitter: float = 0.3                          # radians per step: direction random walk (0 = line)


@dataclass(frozen=True)
class NoiseConfig:
    sigma: tuple[float, float] = (5.0, 50.0)            # 0–255 units; Gaussian std drawn uniformly
    poisson_probability: float = 0.0                    # chance of adding shot noise as well
    poisson_peak: tuple[float, float] = (20.0, 200.0)   # photons at white (lower = noisier), log-uniform


@dataclass(frozen=True)
class JpegConfig:
    quality: tuple[int, int] = (40, 95)                 # Pillow quality, inclusive range
    probability: float = 1.0                            # chance of compressing a sample


@dataclass(frozen=True)
class Degradation:
    blur: BlurConfig | None = None
    downscale: int = 1                                  # bicubic, antialiased; H and W must divide by it
    noise: NoiseConfig | None = None
    jpeg: JpegConfig | None = None
    quantize: bool = True                               # round to 8 bits like an LQ image saved as PNG

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Degradation":
        def part(kind, value):
            return None if value is None else kind(**{k: tuple(v) if isinstance(v, list) else v
                                                     for k, v in value.items()})
        data = dict(data)
        return cls(blur=part(BlurConfig, data.pop("blur", None)), noise=part(NoiseConfig, data.pop("noise", None)),
                   jpeg=part(JpegConfig, data.pop("jpeg", None)), **data)


NAMED_DEGRADATIONS: dict[str, Degradation] = {
    # The training degradations of the tasks (ugpnet.tasks names which is whose): random draws per sample.
    "denoise": Degradation(noise=NoiseConfig(sigma=(5.0, 50.0))),
    "deblur": Degradation(blur=BlurConfig()),
    "sr": Degradation(downscale=8),
    # Fixed settings for evaluation tables; any Degradation can be used the same way.
    "denoise_sigma15": Degradation(noise=NoiseConfig(sigma=(15.0, 15.0))),
    "denoise_sigma25": Degradation(noise=NoiseConfig(sigma=(25.0, 25.0))),
    "denoise_sigma50": Degradation(noise=NoiseConfig(sigma=(50.0, 50.0))),
    "deblur_gaussian_sigma2": Degradation(blur=BlurConfig(kinds=("isotropic",), kernel_size=(13, 13),
                                                          sigma=(2.0, 2.0))),
    "sr_bicubic_x8": Degradation(downscale=8),
    # Defocus-like blur only (no motion kernels): what `ugpnet evaluate --task deblur` measures.
    "deblur_gaussian": Degradation(blur=BlurConfig(kinds=("isotropic", "anisotropic"))),
}


def get_degradation(name: str) -> Degradation:
    try:
        return NAMED_DEGRADATIONS[name]
    except KeyError:
        raise ValueError(f"unknown degradation {name!r}; known: {', '.join(NAMED_DEGRADATIONS)}") from None


def sample_seed(base_seed: int, index: int) -> np.random.Generator:
    """The generator for sample `index` of a dataset seeded with `base_seed` (order-independent)."""
    return np.random.default_rng(np.random.SeedSequence([base_seed, index]))


# --- kernels: (k, k) float64 arrays that sum to 1 ---------------------------------------------

def gaussian_kernel(size: int, sigma_x: float, sigma_y: float | None = None, angle: float = 0.0) -> np.ndarray:
    """(Anisotropic) Gaussian; `angle` in radians rotates the x axis of the ellipse."""
    sigma_y = sigma_x if sigma_y is None else sigma_y
    r = (size - 1) / 2
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * x + s * y, -s * x + c * y
    kernel = np.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return kernel / kernel.sum()


def motion_kernel(size: int, length: float, rng: np.random.Generator, jitter: float = 0.3) -> np.ndarray:
    """A camera-shake trajectory: `length` px whose direction does a random walk, splatted bilinearly.

    The trajectory is centred on its mean point, so the blur does not shift the image against GT.
    """
    steps = max(2, int(math.ceil(length * 4)))
    direction = rng.uniform(0, 2 * math.pi) + np.cumsum(rng.normal(0.0, jitter / 4, steps))
    points = np.cumsum(np.stack([np.cos(direction), np.sin(direction)], 1) * (length / steps), axis=0)
    points -= points.mean(0)
    limit = (size - 1) / 2
    points = np.clip(points, -limit, limit - 1e-6) + limit  # keep inside the kernel, index coordinates
    kernel = np.zeros((size, size))
    for x, y in points:
        x0, y0 = int(x), int(y)
        fx, fy = x - x0, y - y0
        for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy),
                          (1, 1, fx * fy)):
            if x0 + dx < size and y0 + dy < size:
                kernel[y0 + dy, x0 + dx] += w
    return kernel / kernel.sum()


def random_blur_kernel(config: BlurConfig, rng: np.random.Generator) -> np.ndarray:
    low, high = config.kernel_size
    size = 2 * int(rng.integers((low - 1) // 2, (high - 1) // 2 + 1)) + 1
    kind = config.kinds[int(rng.integers(len(config.kinds)))]
    if kind == "isotropic":
        return gaussian_kernel(size, rng.uniform(*config.sigma))
    if kind == "anisotropic":
        return gaussian_kernel(size, rng.uniform(*config.sigma), rng.uniform(*config.sigma), rng.uniform(0, math.pi))
    if kind == "motion":
        length = min(rng.uniform(*config.motion_length), size - 1)
        return motion_kernel(size, length, rng, config.motion_jitter)
    raise ValueError(f"unknown blur kind {kind!r}; kinds are {', '.join(BLUR_KINDS)}")


# --- the individual degradations on (3,H,W) tensors in [0,1] -----------------------------------

def blur(image: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """Convolve each channel with `kernel` (reflect padding keeps the frame size and its borders)."""
    k = torch.as_tensor(kernel[::-1, ::-1].copy(), dtype=image.dtype, device=image.device)
    pad = kernel.shape[0] // 2
    padded = F.pad(image[None], (pad, pad, pad, pad), mode="reflect")
    return F.conv2d(padded, k.expand(3, 1, *k.shape), groups=3)[0]


def bicubic_downscale(image: torch.Tensor, factor: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"image {h}×{w} does not divide by the downscale factor {factor}")
    return F.interpolate(image[None], size=(h // factor, w // factor), mode="bicubic", antialias=True,
                         align_corners=False)[0]


def add_gaussian_noise(image: torch.Tensor, sigma_255: float, rng: np.random.Generator) -> torch.Tensor:
    noise = rng.normal(0.0, sigma_255 / 255.0, size=tuple(image.shape))
    return image + torch.as_tensor(noise, dtype=image.dtype, device=image.device)


def add_poisson_noise(image: torch.Tensor, peak: float, rng: np.random.Generator) -> torch.Tensor:
    photons = rng.poisson(image.clamp(0, 1).cpu().double().numpy() * peak)
    return torch.as_tensor(photons / peak, dtype=image.dtype, device=image.device)


def jpeg_round_trip(image: torch.Tensor, quality: int) -> torch.Tensor:
    pixels = quantize_levels(image).byte().permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=int(quality))
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return torch.as_tensor(decoded.copy(), device=image.device).permute(2, 0, 1).to(image.dtype) / 255


@dataclass(frozen=True)
class DegradationRecord:
    """What one `degrade` call drew: the truth a non-blind method is given (ugpnet.baselines)."""

    kernel: np.ndarray | None = None          # the blur kernel (k,k), sums to 1; None: no blur
    downscale: int = 1
    noise_sigma: float = 0.0                  # Gaussian noise std in 0–255 units; 0: no Gaussian noise
    poisson_peak: float | None = None         # photons at white, when shot noise was added
    jpeg_quality: int | None = None           # when the sample was JPEG-compressed


def degrade(gt: torch.Tensor, config: Degradation, rng: np.random.Generator | int) -> torch.Tensor:
    """gt (3,H,W) in [0,1] → lq (3,H/s,W/s) in [0,1]. `rng`: a numpy Generator or an integer seed."""
    return degrade_recorded(gt, config, rng)[0]


def degrade_recorded(gt: torch.Tensor, config: Degradation,
                     rng: np.random.Generator | int) -> tuple[torch.Tensor, DegradationRecord]:
    """`degrade`, also returning what was drawn (same draws, same order: the same lq as `degrade`)."""
    if gt.dim() != 3 or gt.shape[0] != 3:
        raise ValueError(f"degrade takes one RGB image (3,H,W) in [0,1], got {tuple(gt.shape)}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    drawn = {"downscale": config.downscale}
    lq = gt.float()
    if config.blur is not None:
        drawn["kernel"] = random_blur_kernel(config.blur, rng)
        lq = blur(lq, drawn["kernel"])
    if config.downscale > 1:
        lq = bicubic_downscale(lq, config.downscale)
    if config.noise is not None:
        drawn["noise_sigma"] = float(rng.uniform(*config.noise.sigma))
        lq = add_gaussian_noise(lq, drawn["noise_sigma"], rng)
        if rng.random() < config.noise.poisson_probability:
            drawn["poisson_peak"] = math.exp(rng.uniform(*np.log(config.noise.poisson_peak)))
            lq = add_poisson_noise(lq, drawn["poisson_peak"], rng)
    if config.jpeg is not None and rng.random() < config.jpeg.probability:
        drawn["jpeg_quality"] = int(rng.integers(config.jpeg.quality[0], config.jpeg.quality[1] + 1))
        lq = jpeg_round_trip(lq, drawn["jpeg_quality"])
    lq = lq.clamp(0, 1)
    return (quantize_levels(lq) / 255 if config.quantize else lq), DegradationRecord(**drawn)
