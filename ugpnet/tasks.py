"""The restoration tasks, defined once: what each is called, its scale, how its inputs are degraded
for training, the demo and evaluation, and the model that serves it by default.

`TASK_SPECS[name]` is a frozen `TaskSpec`; every verb (train, evaluate, demo, restore's defaults)
and the presets read their task vocabulary from here, so a task added here is a task everywhere.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

from ugpnet.degradations import BlurConfig, Degradation, NoiseConfig, get_degradation

BLUR_RADIUS_SIGMAS = 3  # Gaussian kernel half-width in σ: 2·ceil(3σ)+1, so σ 2 → 13 px (deblur_gaussian_sigma2)


def noise_of_sigma(sigma_255: float) -> Degradation:
    """Gaussian noise of std `sigma_255` (0–255 units). σ 0 degrades nothing but the 8-bit rounding,
    which makes a useful identity reference on the evaluation plots."""
    return Degradation(noise=NoiseConfig(sigma=(float(sigma_255),) * 2)) if sigma_255 > 0 else Degradation()


def gaussian_blur_of_sigma(sigma_px: float) -> Degradation:
    """An isotropic Gaussian blur of std `sigma_px` pixels, kernel 2·ceil(3σ)+1 px; σ 0: none."""
    if sigma_px <= 0:
        return Degradation()
    size = 2 * math.ceil(BLUR_RADIUS_SIGMAS * sigma_px) + 1
    return Degradation(blur=BlurConfig(kinds=("isotropic",), kernel_size=(size, size), sigma=(float(sigma_px),) * 2))


def downscale_by(factor: float) -> Degradation:
    return Degradation(downscale=int(factor))


@dataclass(frozen=True)
class TaskSpec:
    name: str
    label: str                                                # for people: page titles, reports
    scale: int                                                # output side ÷ input side
    training_degradation: str                                 # key of NAMED_DEGRADATIONS drawn while training
    demo_degradation: str                                     # key of NAMED_DEGRADATIONS shown by `ugpnet demo`
    evaluation_degradation: Callable[[float], Degradation]    # strength → what `ugpnet evaluate` applies
    default_strengths: tuple[float, ...]                      # in the unit of `strength_label`
    strength_label: str                                       # what a strength measures, with its unit

    @property
    def default_model(self) -> str:
        """The model reference used when none is given: the bundle shipped in ugpnet/defaults/<name>/."""
        return f"default:{self.name}"

    @property
    def fixed_strengths(self) -> bool:
        """A super-resolution task is evaluated at its models' scale only: a ×8 model restores ×8 inputs."""
        return self.scale > 1


TASK_SPECS: dict[str, TaskSpec] = {spec.name: spec for spec in (
    TaskSpec("denoise", "denoising", 1, "denoise", "denoise_sigma25", noise_of_sigma,
             (15.0, 25.0, 50.0), "noise σ (0–255)"),
    TaskSpec("deblur", "deblurring", 1, "deblur", "deblur_gaussian_sigma2", gaussian_blur_of_sigma,
             (1.0, 2.0, 3.0), "Gaussian blur σ (px)"),
    # The paper's (and the presets') only super-resolution factor is 8.
    TaskSpec("sr", "×8 super-resolution", 8, "sr", "sr_bicubic_x8", downscale_by, (8.0,), "downscale factor"),
)}
TASKS = tuple(TASK_SPECS)
DEFAULT_TASK = "denoise"
# Each task's training degradation, resolved: what `ugpnet train` draws unless told otherwise.
TRAINING_DEGRADATIONS: dict[str, Degradation] = {
    name: get_degradation(spec.training_degradation) for name, spec in TASK_SPECS.items()}


def get_task(name: str) -> TaskSpec:
    try:
        return TASK_SPECS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r}; tasks are {', '.join(TASKS)}") from None


def evaluation_degradation(task: str, strength: float) -> Degradation:
    """The degradation `ugpnet evaluate` applies for `task` at `strength`."""
    return get_task(task).evaluation_degradation(strength)
