"""Typed hyperparameters of the three training stages, defaulting to the official scripts (reference §5).

Units: steps and intervals are optimiser iterations (one batch per worker each); learning rates are
Adam step sizes; loss weights are dimensionless multipliers of the loss terms named in §5.
`default_hyperparams(preset)` gives the official values for official presets and CPU-sized ones for
the small presets (perceptual and contextual weights 0: their VGG weights are not on every machine).
"""

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ugpnet.presets import Preset, get_preset
from ugpnet.stages import STAGES
from ugpnet.vgg import PerceptualWeights

PIXEL_LOSSES = ("psnr", "l1")
DEFAULT_SEED = 777  # the official scripts' seed
DISCRIMINATOR_RANGES = ("[0,1]", "[-1,1]")
WARM_START_STAGES = {"init_identity": "restoration", "init_from_restoration": "fusion"}  # flag → its stage
INTEGER_FIELDS = ("steps", "batch_size", "warmup_steps", "r1_interval", "contextual_patch_size", "validation_interval",
                  "checkpoint_interval")
NUMBER_FIELDS = ("lr", "lr_gamma", "pixel_weight", "perceptual_weight", "adversarial_weight", "discriminator_lr",
                 "r1_gamma", "contextual_weight", "contextual_band_width")


@dataclass(frozen=True)
class StageHyperparams:
    steps: int                                  # iterations this stage runs
    batch_size: int = 8                         # images per iteration per worker
    lr: float = 1e-4                            # Adam learning rate of the trained module
    betas: tuple[float, float] = (0.9, 0.999)   # Adam betas (official: PyTorch defaults)
    lr_milestones: tuple[int, ...] = ()         # iterations at which lr is multiplied by lr_gamma
    lr_gamma: float = 0.1                       # lr factor at each milestone (as MultiStepLR)
    warmup_steps: int = 0                       # iterations of linear lr warm-up from lr/warmup_steps
    pixel_loss: str = "psnr"                    # stage 1 only: "psnr" (PSNRLoss) or "l1"
    pixel_weight: float = 1.0                   # weight of L1 (stages 2, 3) / of the stage-1 loss
    perceptual_weight: float = 0.0              # weight of LPIPS(output, GT); > 0 needs vgg16 + lpips_heads
    lpips_resize: int | None = 256              # pixels: LPIPS inputs are bicubically resized to this (official)
    adversarial_weight: float = 0.0             # stage 2: weight of softplus(−D(I_G)).mean
    discriminator_lr: float = 2.5e-5            # stage 2: Adam learning rate of D
    discriminator_range: str = "[0,1]"          # stage 2: value range D sees; official "[0,1]" (§9.8)
    r1_gamma: float = 10.0                      # stage 2: R1 weight γ; applied as (γ/2)·R1·r1_interval
    r1_interval: int = 10                       # stage 2: iterations between lazy R1 steps
    augment: bool = True                        # stage 2: the geometric augmentation of I_R and GT
    contextual_weight: float = 0.0              # stage 3: weight of PatchContextual(I_F, I_G); needs vgg19
    contextual_patch_size: int = 128            # stage 3: pixels, side of the non-overlapping patches
    contextual_band_width: float = 0.5          # stage 3: h of the contextual loss
    init_from_restoration: bool = False         # stage 3: start with I_F ≈ I_R (see training/initialisation)
    init_identity: bool = False                 # stage 1: start with I_R ≈ LQ (upscaled for ×8; ibid.)
    validation_interval: int = 2000             # iterations between validations (official save_interval)
    checkpoint_interval: int = 2000             # iterations between checkpoints


@dataclass(frozen=True)
class TrainHyperparams:
    restoration: StageHyperparams
    synthesis: StageHyperparams
    fusion: StageHyperparams
    seed: int = DEFAULT_SEED                    # also seeds the stage-2 augmentation draws
    perceptual: PerceptualWeights = field(default_factory=PerceptualWeights)

    def stage(self, name: str) -> StageHyperparams:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
        return getattr(self, name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: "TrainHyperparams | None" = None) -> "TrainHyperparams":
        """From `to_dict()` output; with `base`, `data` may name only the fields it changes."""
        data = dict(data)
        unknown = set(data) - {*STAGES, "seed", "perceptual"}
        if unknown:
            raise ValueError(f"unknown hyperparameter fields: {', '.join(sorted(unknown))}")
        if base is None:
            missing = [name for name in STAGES if name not in data]
            if missing:
                raise ValueError(f"hyperparameters lack the stages {', '.join(missing)} (or pass a base)")
            stages = {name: stage_from_dict(data[name], name) for name in STAGES}
            return cls(**stages, seed=data.get("seed", DEFAULT_SEED),
                       perceptual=PerceptualWeights(**data.get("perceptual", {})))
        stages = {name: stage_from_dict(data.get(name, {}), name, base.stage(name)) for name in STAGES}
        perceptual = replace(base.perceptual, **data.get("perceptual", {}))
        return cls(**stages, seed=data.get("seed", base.seed), perceptual=perceptual)


def stage_from_dict(data: dict[str, Any], name: str = "stage", base: StageHyperparams | None = None
                    ) -> StageHyperparams:
    known = {f.name for f in fields(StageHyperparams)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown fields in {name}: {', '.join(sorted(unknown))}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    if base is None and "steps" not in values:
        raise ValueError(f"{name}.steps is required")
    return replace(base, **values) if base is not None else StageHyperparams(**values)


OFFICIAL = TrainHyperparams(
    restoration=StageHyperparams(steps=20_000, lr=1e-4, pixel_loss="psnr"),
    synthesis=StageHyperparams(steps=40_000, lr=1e-4, perceptual_weight=10.0, adversarial_weight=0.3,
                               checkpoint_interval=4000),
    fusion=StageHyperparams(steps=40_000, lr=1e-3, lr_milestones=(8000,), perceptual_weight=10.0,
                            contextual_weight=0.05),
)


def default_hyperparams(preset: Preset | str) -> TrainHyperparams:
    """Official §5 values for official presets; for small presets shorter stages, the same learning
    rates and loss structure, perceptual/contextual weights 0, contextual patches of side/4
    (128 px at 512 px: 16 patches per image, as the official), and a fusion stage that starts from
    I_F ≈ I_R (a short CPU run cannot learn to decode F_R from scratch)."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    if preset.official:
        return OFFICIAL
    patch = preset.resolution // 4
    return TrainHyperparams(
        restoration=replace(OFFICIAL.restoration, steps=2000, validation_interval=200, checkpoint_interval=200),
        synthesis=replace(OFFICIAL.synthesis, steps=4000, perceptual_weight=0.0, validation_interval=400,
                          checkpoint_interval=400),
        fusion=replace(OFFICIAL.fusion, steps=2000, lr_milestones=(400,), perceptual_weight=0.0,
                       contextual_weight=0.0, contextual_patch_size=patch, validation_interval=200,
                       checkpoint_interval=200, init_from_restoration=True),
    )


def check_stage_hyperparams(hp: StageHyperparams, name: str = "stage", preset: Preset | None = None) -> None:
    """Raise ValueError naming the first bad field (`<name>.<field>`)."""
    def fail(field_name, message):
        raise ValueError(f"{name}.{field_name} {message}, got {getattr(hp, field_name)!r}")

    for integer in INTEGER_FIELDS:
        if not isinstance(getattr(hp, integer), int) or isinstance(getattr(hp, integer), bool):
            fail(integer, "must be an integer")
    for number in NUMBER_FIELDS:
        if not isinstance(getattr(hp, number), int | float) or isinstance(getattr(hp, number), bool):
            fail(number, "must be a number")
    for positive in ("steps", "batch_size", "lr", "discriminator_lr", "r1_interval", "contextual_patch_size",
                     "contextual_band_width", "validation_interval", "checkpoint_interval"):
        if not getattr(hp, positive) > 0:
            fail(positive, "must be > 0")
    for weight in ("warmup_steps", "pixel_weight", "perceptual_weight", "adversarial_weight", "contextual_weight",
                   "r1_gamma"):
        if getattr(hp, weight) < 0:
            fail(weight, "must be ≥ 0")
    if hp.pixel_loss not in PIXEL_LOSSES:
        fail("pixel_loss", f"must be one of {', '.join(PIXEL_LOSSES)}")
    if hp.discriminator_range not in DISCRIMINATOR_RANGES:
        fail("discriminator_range", f"must be one of {', '.join(DISCRIMINATOR_RANGES)}")
    if not (len(hp.betas) == 2 and all(0 <= b < 1 for b in hp.betas)):
        fail("betas", "must be two numbers in [0, 1)")
    if not 0 < hp.lr_gamma <= 1:
        fail("lr_gamma", "must be in (0, 1]")
    if any(m <= 0 for m in hp.lr_milestones) or list(hp.lr_milestones) != sorted(set(hp.lr_milestones)):
        fail("lr_milestones", "must be increasing positive iterations")
    if hp.lpips_resize is not None and hp.lpips_resize <= 0:
        fail("lpips_resize", "must be > 0 or None")
    if name in STAGES and name != "synthesis" and hp.adversarial_weight > 0:
        fail("adversarial_weight", "must be 0: only the synthesis stage has a discriminator")
    if name in STAGES and name != "fusion" and hp.contextual_weight > 0:
        fail("contextual_weight", "must be 0: only the fusion stage has a contextual target")
    for flag, stage in WARM_START_STAGES.items():
        if not isinstance(getattr(hp, flag), bool):
            fail(flag, "must be true or false")
        if name in STAGES and name != stage and getattr(hp, flag):
            fail(flag, f"must be false: it initialises the {stage} stage only")
    if preset is not None and hp.contextual_weight > 0 and preset.resolution % hp.contextual_patch_size:
        fail("contextual_patch_size", f"must divide the preset resolution {preset.resolution}")


def check_perceptual_weights(hp: StageHyperparams, weights: PerceptualWeights | None, name: str = "stage") -> None:
    """MissingWeightsError naming the file when a weight > 0 needs a pretrained file that is not there."""
    weights = weights or PerceptualWeights()
    if hp.perceptual_weight > 0:
        for file in ("vgg16", "lpips_heads"):
            weights.require(file, f"{name}.perceptual_weight = {hp.perceptual_weight} (LPIPS)")
    if hp.contextual_weight > 0:
        weights.require("vgg19", f"{name}.contextual_weight = {hp.contextual_weight} (patch contextual loss)")


def check_hyperparams(hp: TrainHyperparams, preset: Preset | str | None = None,
                      stages: tuple[str, ...] = STAGES) -> None:
    """Validate every field of the stages to run (and their pretrained files) before any work."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    if not isinstance(hp.seed, int):
        raise ValueError(f"seed must be an integer, got {hp.seed!r}")
    for name in stages:
        check_stage_hyperparams(hp.stage(name), name, preset)
    for name in stages:
        check_perceptual_weights(hp.stage(name), hp.perceptual, name)
