"""The UGPNet composite: restoration → synthesis → fusion (reference §1.2).

Attribute names `resmodule`, `synmodule`, `fusmodule` are public: they make the composite
state-dict keys of the bundle format.
"""

from typing import NamedTuple

import torch
from torch import nn

from ugpnet.archs.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator
from ugpnet.backbones import get_backbone
from ugpnet.fastpath import runs_fast
from ugpnet.fitting import fit_and_run
from ugpnet.fusion import FusionNet
from ugpnet.presets import Preset, get_preset
from ugpnet.restoration import ResModule
from ugpnet.synthesis import Fencoder, SynModule, Wmodule


class UGPNetOutput(NamedTuple):
    restored: torch.Tensor     # I_R, ≈[0,1]
    synthesized: torch.Tensor  # I_G, ≈[0,1]
    fused: torch.Tensor        # I_F, raw (no clamp)


def build_restoration(preset: Preset) -> nn.Module:
    backbone = get_backbone(preset.backbone)
    net = backbone.build(**preset.backbone_kwargs)
    if backbone.approach == "direct":
        if net.feature_channels != preset.restoration_feature_channels:
            raise ValueError(f"preset {preset.name}: direct backbone feature width {net.feature_channels} "
                             f"!= restoration_feature_channels {preset.restoration_feature_channels}")
        return net
    return ResModule(net, preset.restoration_feature_channels)


def build_synthesis(preset: Preset) -> SynModule:
    g = preset.generator
    generator = StyleGAN2Generator(out_size=g.out_size, num_style_feat=g.num_style_feat, num_mlp=g.num_mlp,
                                   channel_multiplier=g.channel_multiplier, lr_mlp=g.lr_mlp, narrow=g.narrow,
                                   basecode_size=g.basecode_size)
    fencoder = Fencoder(spatial_size=g.basecode_size, encoder_input_size=g.out_size, narrow=g.narrow)
    if fencoder.conv1x1.out_channels != generator.basecode_channels:
        raise ValueError(f"preset {preset.name}: base code has {fencoder.conv1x1.out_channels} channels, "
                         f"the generator expects {generator.basecode_channels}")
    wmodule = Wmodule(in_c=fencoder.tap_channels, out_c=g.num_style_feat, wpdim=generator.num_latent)
    return SynModule(generator, fencoder, wmodule)


def build_discriminator(preset: Preset) -> StyleGAN2Discriminator:
    d = preset.discriminator
    return StyleGAN2Discriminator(d.out_size, channel_multiplier=d.channel_multiplier, narrow=d.narrow)


class UGPNet(nn.Module):
    def __init__(self, preset: Preset | str):
        super().__init__()
        self.preset = get_preset(preset) if isinstance(preset, str) else preset
        self.resmodule = build_restoration(self.preset)
        self.synmodule = build_synthesis(self.preset)
        generator = self.synmodule.generator
        self.fusmodule = FusionNet(self.preset.fusion_blocks, chan=generator.channels[generator.out_size],
                                   width=self.preset.restoration_feature_channels)
        self.randomize_noise = False  # official default: the stored noise buffers are used

    @property
    def input_size(self) -> int:
        return self.preset.input_size

    @property
    def scale(self) -> int:
        return self.preset.scale

    def unused_parameter_names(self) -> list[str]:
        """Parameters that never influence the output (kept only so official checkpoints load)."""
        names = [f"resmodule.{n}" for n in self.resmodule.unused_parameter_names()]
        return names + [f"synmodule.{n}" for n in self.synmodule.unused_parameter_names()]

    def check_input(self, lq: torch.Tensor) -> None:
        size = self.input_size
        if lq.dim() != 4 or lq.shape[1] != 3 or lq.shape[-2:] != (size, size):
            raise ValueError(f"UGPNet preset {self.preset.name} takes (B,3,{size},{size}) RGB in [0,1]; "
                             f"got {tuple(lq.shape)} (use a fit policy: resize or tile)")

    def forward(self, lq, return_all=False, randomize_noise=None, compute_discarded=False):
        """lq (B,3,s,s) in [0,1] → fused (B,3,S,S), or UGPNetOutput when `return_all`.

        Without autograd this takes the fast path unless `ugpnet.set_fast(model, False)` chose the
        reference path (ugpnet.fastpath); with autograd it is always the reference computation.
        """
        self.check_input(lq)
        restored, restoration_feature = self.resmodule(lq)
        noise = self.randomize_noise if randomize_noise is None else randomize_noise
        synthesized, synthesis_feature = self.synmodule(restored, randomize_noise=noise,
                                                        compute_discarded=compute_discarded)
        fused = self.fusmodule(synthesis_feature, restoration_feature)
        if runs_fast(self):  # the fast path may run channels_last inside; callers get plain NCHW
            restored, synthesized, fused = (t.contiguous() for t in (restored, synthesized, fused))
        return UGPNetOutput(restored, synthesized, fused) if return_all else fused

    def restore(self, image, fit="resize", batch_size=4, return_all=False, tile_overlap=None):
        """Any-size image (3,H,W) or (B,3,H,W) in [0,1] → output(s) at ×scale through a fit policy
        (`resize`, `tile` or `error`; see ugpnet.fitting). Call under torch.inference_mode()."""
        def forward(batch):
            out = self(batch, return_all=return_all)
            return torch.cat(out, dim=1) if return_all else out

        result = fit_and_run(image, forward, input_size=self.input_size, scale=self.scale, policy=fit,
                             batch_size=batch_size, tile_overlap=tile_overlap,
                             out_channels=9 if return_all else 3)
        return UGPNetOutput(*result.split(3, dim=-3)) if return_all else result
