"""Named model configurations. Each pins every hyperparameter a strict checkpoint load needs.

Presets are data: `PRESETS[name]` is a frozen `Preset`. The official FFHQ-512 presets match the
released UGPNet checkpoints; `<name>_church` are their LSUN-Church-256 variants; `small_*` train
on a CPU in minutes to hours; `tiny_*` exist for tests.
"""

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ugpnet.backbones import get_backbone


@dataclass(frozen=True)
class GeneratorConfig:
    out_size: int = 512          # output side in pixels (square)
    num_style_feat: int = 512    # width of the W+ codes
    num_mlp: int = 8             # mapping MLP depth (kept for checkpoints; UGPNet bypasses it)
    channel_multiplier: int = 2  # StyleGAN2 width multiplier for resolutions ≥ 64
    narrow: float = 1.0          # uniform width factor (also scales the Fencoder)
    lr_mlp: float = 0.01         # equalised-lr multiplier of the mapping MLP
    basecode_size: int = 16      # side of the activation the base code replaces


@dataclass(frozen=True)
class DiscriminatorConfig:
    out_size: int = 512
    channel_multiplier: int = 1
    narrow: float = 1.0


@dataclass(frozen=True)
class Preset:
    name: str
    task: str                                  # a name in ugpnet.tasks.TASKS
    backbone: str                              # key of ugpnet.backbones.BACKBONES
    backbone_kwargs: dict[str, Any]
    generator: GeneratorConfig = GeneratorConfig()
    discriminator: DiscriminatorConfig = DiscriminatorConfig()
    restoration_feature_channels: int = 64     # F_R width (ResidualEncoder output); fusion width
    fusion_blocks: int = 8
    dataset: str = "ffhq"
    description: str = ""
    official: bool = False                     # matches released official checkpoints
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def resolution(self) -> int:
        """Output side in pixels."""
        return self.generator.out_size

    @property
    def scale(self) -> int:
        return get_backbone(self.backbone).scale

    @property
    def input_size(self) -> int:
        """Input side in pixels the whole model takes."""
        return self.resolution // self.scale

    @property
    def num_latent(self) -> int:
        return 2 * int(math.log2(self.resolution)) - 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preset":
        data = dict(data)
        data["generator"] = GeneratorConfig(**data.get("generator", {}))
        data["discriminator"] = DiscriminatorConfig(**data.get("discriminator", {}))
        return cls(**data)


NAFNET_GOPRO = dict(width=32, middle_blk_num=1, enc_blk_nums=[1, 1, 1, 28], dec_blk_nums=[1, 1, 1, 1],
                    train_size=256)
NAFNET_SIDD = dict(width=32, middle_blk_num=12, enc_blk_nums=[2, 2, 4, 8], dec_blk_nums=[2, 2, 2, 2])
HINET_GOPRO = dict(wf=64, hin_position_left=3, hin_position_right=4)
HINET_SIDD_HALF = dict(wf=32)
RRDB_X8 = dict(num_feat=64, num_block=23, num_grow_ch=32)

_OFFICIAL = [
    Preset("nafnet_deblur", "deblur", "nafnet_local", NAFNET_GOPRO, description="NAFNet-GoPro-width32 (TLSC)"),
    Preset("nafnet_denoise", "denoise", "nafnet", NAFNET_SIDD, description="NAFNet-SIDD-width32"),
    Preset("hinet_deblur", "deblur", "hinet", HINET_GOPRO, description="HINet-GoPro"),
    Preset("hinet_denoise", "denoise", "hinet", HINET_SIDD_HALF, description="HINet-SIDD-0.5x"),
    Preset("rrdb_x8", "sr", "rrdb_x8", RRDB_X8, description="RRDBNet ×8 (bicubic)"),
]


def _church(preset: Preset) -> Preset:
    return replace(preset, name=f"{preset.name}_church", dataset="lsun_church",
                   generator=GeneratorConfig(out_size=256),
                   discriminator=DiscriminatorConfig(out_size=256, channel_multiplier=2),
                   description=f"{preset.description}, LSUN-Church 256")


def _small(name: str, task: str, backbone: str, kwargs: dict, size: int, narrow: float, description: str,
           feature_channels: int = 32) -> Preset:
    return Preset(name, task, backbone, kwargs,
                  generator=GeneratorConfig(out_size=size, num_style_feat=128, num_mlp=2, narrow=narrow),
                  discriminator=DiscriminatorConfig(out_size=size, channel_multiplier=1, narrow=narrow),
                  restoration_feature_channels=feature_channels, fusion_blocks=4, dataset="photos",
                  description=description)


SMALL_NAFNET = dict(width=16, middle_blk_num=1, enc_blk_nums=[1, 1, 2], dec_blk_nums=[1, 1, 1])
TINY_NAFNET = dict(width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])

_SMALL = [
    _small("small_denoise", "denoise", "nafnet", SMALL_NAFNET, 128, 0.125, "CPU-trainable NAFNet denoiser"),
    _small("small_deblur", "deblur", "nafnet_local", dict(SMALL_NAFNET, train_size=64), 128, 0.125,
           "CPU-trainable NAFNet-TLSC deblurrer"),
    _small("small_unet_denoise", "denoise", "unet", dict(width=16, depth=3), 128, 0.125,
           "CPU-trainable U-Net denoiser (the paper's Fig. 4 backbone)"),
    _small("small_sr_x8", "sr", "rrdb_x8", dict(num_feat=32, num_block=3, num_grow_ch=16), 128, 0.125,
           "CPU-trainable RRDBNet ×8 (16 → 128 px)"),
    _small("tiny_denoise", "denoise", "nafnet", TINY_NAFNET, 64, 0.0625, "for tests", feature_channels=16),
    _small("tiny_deblur", "deblur", "nafnet_local", dict(TINY_NAFNET, train_size=32), 64, 0.0625, "for tests",
           feature_channels=16),
    _small("tiny_unet_denoise", "denoise", "unet", dict(width=8, depth=2), 64, 0.0625, "for tests",
           feature_channels=16),
    _small("tiny_hinet_denoise", "denoise", "hinet", dict(wf=8, depth=3), 64, 0.0625, "for tests",
           feature_channels=16),
    _small("tiny_sr_x8", "sr", "rrdb_x8", dict(num_feat=16, num_block=1, num_grow_ch=8), 64, 0.0625,
           "for tests (8 → 64 px)", feature_channels=16),
]

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [replace(p, official=True) for p in _OFFICIAL]
    + [replace(_church(p), official=True) for p in _OFFICIAL] + _SMALL
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
