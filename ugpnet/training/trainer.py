"""One training iteration of each UGPNet stage, in plain PyTorch (reference §5).

    trainer = StageTrainer(model, "synthesis", default_hyperparams(model.preset))
    for lq, gt in batches:                  # lq (B,3,s,s), gt (B,3,S,S), both in [0,1]
        terms = trainer.train_step(lq, gt)  # {"l1": …, "adversarial": …, "d_loss": …, "lr": …}

Only the stage's module trains; the others are frozen and stay in eval mode (`prepare_for_stage`).
`wrap` (e.g. DistributedDataParallel) wraps the trained module and the discriminator; the trained
module's forward goes through the wrapper, while `model.state_dict()` keeps its plain keys because
the wrapper is never stored inside the model. Validation and frozen modules use the plain model, so
rank-0-only validation never enters a collective.
"""

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from ugpnet.augment import GeometricAugmentation
from ugpnet.losses import (
    LPIPSLoss,
    PatchContextualLoss,
    PSNRLoss,
    discriminator_loss,
    generator_adversarial_loss,
    l1_loss,
    lazy_r1_weight,
    r1_penalty,
)
from ugpnet.metrics import PSNR_CAP_DB, psnr_uint8, ssim
from ugpnet.model import UGPNet, build_discriminator
from ugpnet.stages import STAGE_MODULES, prepare_for_stage
from ugpnet.training.hyperparams import (
    DEFAULT_SEED,
    StageHyperparams,
    TrainHyperparams,
    check_perceptual_weights,
    check_stage_hyperparams,
)
from ugpnet.training.initialisation import init_fusion_from_restoration, init_restoration_identity
from ugpnet.vgg import PerceptualWeights

OUTPUTS = ("restored", "synthesized", "fused")


def lr_factor(hp: StageHyperparams) -> Callable[[int], float]:
    """Learning-rate multiplier at an iteration: a linear warm-up over `warmup_steps` (Adam's first,
    sign-like steps would otherwise wreck a warm start), times `lr_gamma` per milestone passed."""
    def factor(step: int) -> float:
        warmup = min(1.0, (step + 1) / hp.warmup_steps) if hp.warmup_steps else 1.0
        return warmup * hp.lr_gamma ** sum(step >= m for m in hp.lr_milestones)
    return factor


class StageTrainer:
    def __init__(self, model: UGPNet, stage: str, hyperparams: StageHyperparams | TrainHyperparams, *,
                 perceptual: PerceptualWeights | None = None, discriminator: nn.Module | None = None,
                 wrap: Callable[[nn.Module], nn.Module] = lambda module: module, device: str | torch.device = "cpu",
                 seed: int | None = None):
        """Checks everything (hyperparameters, pretrained files) before building anything heavy.

        `hyperparams`: this stage's, or the whole TrainHyperparams (then its `perceptual` paths and
        `seed` are the defaults). `discriminator`: stage 2 only (ignored otherwise); a fresh one from
        the preset if None. `seed`: seeds the stage-2 augmentation draws, which depend on (seed, step)
        only. `device`: the model, discriminator and loss networks are moved there.
        """
        if stage not in STAGE_MODULES:
            raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGE_MODULES)}")
        if isinstance(hyperparams, TrainHyperparams):
            perceptual = perceptual or hyperparams.perceptual
            seed = hyperparams.seed if seed is None else seed
            hyperparams = hyperparams.stage(stage)
        check_stage_hyperparams(hyperparams, stage, model.preset)
        check_perceptual_weights(hyperparams, perceptual, stage)
        self.stage, self.hp, self.step = stage, hyperparams, 0
        self.device = torch.device(device)
        hp = hyperparams

        # Loss networks first: an unreadable VGG file fails here, before the model is touched.
        self.pixel_loss = PSNRLoss() if stage == "restoration" and hp.pixel_loss == "psnr" else l1_loss
        self.lpips = LPIPSLoss(perceptual, hp.lpips_resize).to(self.device) if hp.perceptual_weight > 0 else None
        self.contextual = (PatchContextualLoss(perceptual, hp.contextual_patch_size, hp.contextual_band_width)
                           .to(self.device) if hp.contextual_weight > 0 else None)

        self.model = model.to(self.device)
        self.trained_module: nn.Module = getattr(model, STAGE_MODULES[stage])
        trainable = prepare_for_stage(model, stage)
        self.trained = wrap(self.trained_module)
        self.optimizer = torch.optim.Adam(trainable, lr=hp.lr, betas=hp.betas)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(hp))

        self.discriminator = self.wrapped_discriminator = self.discriminator_optimizer = None
        self.augmentation = None
        if stage == "synthesis":
            self.discriminator = (discriminator or build_discriminator(model.preset)).to(self.device)
            self.discriminator.train().requires_grad_(True)
            self.wrapped_discriminator = wrap(self.discriminator)
            self.discriminator_optimizer = torch.optim.Adam(self.discriminator.parameters(),
                                                            lr=hp.discriminator_lr, betas=hp.betas)
            if hp.augment:
                self.augmentation = GeometricAugmentation(DEFAULT_SEED if seed is None else seed)

    # --- training ------------------------------------------------------------------------------

    def train_step(self, lq: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
        """One iteration on a batch: lq (B,3,s,s), gt (B,3,S,S) in [0,1] → loss terms as floats."""
        self._check_batch(lq, gt)
        lq, gt = lq.to(self.device), gt.to(self.device)
        # At the first step, not at construction: a trainer built to resume must keep the weights it loads.
        if self.stage == "fusion" and self.hp.init_from_restoration and self.step == 0:
            init_fusion_from_restoration(self.model)  # in place: DDP and the optimiser keep their tensors
        if self.stage == "restoration" and self.hp.init_identity and self.step == 0:
            init_restoration_identity(self.model)
        self.model.eval()               # frozen modules stay in eval, whatever the caller did
        self.trained_module.train()
        lr = self.optimizer.param_groups[0]["lr"]
        terms = {"restoration": self._restoration_step, "synthesis": self._synthesis_step,
                 "fusion": self._fusion_step}[self.stage](lq, gt)
        self.scheduler.step()
        self.step += 1
        return {name: float(torch.as_tensor(value).detach()) for name, value in terms.items()} | {"lr": lr}

    def _check_batch(self, lq, gt) -> None:
        size, resolution = self.model.input_size, self.model.preset.resolution
        if tuple(lq.shape[1:]) != (3, size, size) or tuple(gt.shape[1:]) != (3, resolution, resolution) \
                or len(lq) != len(gt):
            raise ValueError(f"preset {self.model.preset.name} trains on lq (B,3,{size},{size}) and gt "
                             f"(B,3,{resolution},{resolution}) in [0,1]; got {tuple(lq.shape)} and {tuple(gt.shape)}")

    def _perceptual(self, output, gt, terms) -> torch.Tensor | float:
        if self.lpips is None:
            return 0.0
        terms["lpips"] = self.lpips(output, gt)
        return self.hp.perceptual_weight * terms["lpips"]

    def _update(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def _restoration_step(self, lq, gt) -> dict[str, torch.Tensor]:
        restored, _ = self.trained(lq)
        name = "psnr_loss" if self.hp.pixel_loss == "psnr" else "l1"  # psnr_loss = −PSNR in dB
        terms = {name: self.pixel_loss(restored, gt)}
        loss = self.hp.pixel_weight * terms[name] + self._perceptual(restored, gt, terms)
        self._update(loss)
        return terms | {"loss": loss.detach()}

    def _to_discriminator_range(self, images):
        return images * 2 - 1 if self.hp.discriminator_range == "[-1,1]" else images

    def _synthesis_step(self, lq, gt) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            restored, _ = self.model.resmodule(lq)
        if self.augmentation is not None:  # identical transform for I_R and GT
            restored, gt = self.augmentation(self.step, restored, gt)
        synthesized, _ = self.trained(restored, randomize_noise=self.model.randomize_noise)
        terms = self._discriminator_update(synthesized.detach(), gt)

        # Generator: D is not updated here, so it runs unwrapped and without parameter gradients.
        self.discriminator.requires_grad_(False)
        terms["l1"] = l1_loss(synthesized, gt)
        loss = self.hp.pixel_weight * terms["l1"] + self._perceptual(synthesized, gt, terms)
        if self.hp.adversarial_weight > 0:
            terms["adversarial"] = generator_adversarial_loss(
                self.discriminator(self._to_discriminator_range(synthesized)))
            loss = loss + self.hp.adversarial_weight * terms["adversarial"]
        self._update(loss)
        self.discriminator.requires_grad_(True)
        return terms | {"loss": loss.detach()}

    def _discriminator_update(self, fake, real) -> dict[str, torch.Tensor]:
        """Non-saturating logistic D loss, plus lazy R1 on the reals every r1_interval iterations."""
        real = self._to_discriminator_range(real).detach()
        with_r1 = self.hp.r1_gamma > 0 and self.step % self.hp.r1_interval == 0
        real.requires_grad_(with_r1)
        real_logits = self.wrapped_discriminator(real)
        fake_logits = self.wrapped_discriminator(self._to_discriminator_range(fake))
        terms = {"d_loss": discriminator_loss(real_logits, fake_logits),
                 "d_real": real_logits.detach().mean(), "d_fake": fake_logits.detach().mean()}
        loss = terms["d_loss"]
        if with_r1:
            terms["r1"] = r1_penalty(real_logits, real)
            loss = loss + lazy_r1_weight(self.hp.r1_gamma, self.hp.r1_interval) * terms["r1"]
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.discriminator_optimizer.step()
        return terms

    def _fusion_step(self, lq, gt) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            restored, restoration_feature = self.model.resmodule(lq)
            synthesized, synthesis_feature = self.model.synmodule(restored,
                                                                  randomize_noise=self.model.randomize_noise)
        fused = self.trained(synthesis_feature, restoration_feature)
        terms = {"l1": l1_loss(fused, gt)}
        loss = self.hp.pixel_weight * terms["l1"] + self._perceptual(fused, gt, terms)
        if self.contextual is not None:  # the contextual target is I_G, not GT (reference §5)
            terms["contextual"] = self.contextual(fused, synthesized)
            loss = loss + self.hp.contextual_weight * terms["contextual"]
        self._update(loss)
        return terms | {"loss": loss.detach()}

    # --- validation ----------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self, lq: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
        """Batch means of uint8 PSNR (dB; identical images count as PSNR_CAP_DB) and SSIM of each output, and
        the PSNR of the input itself (bicubically resized to GT size for SR) as the baseline;
        `count` = batch size, to weight the means when averaging over batches."""
        self._check_batch(lq, gt)
        lq, gt = lq.to(self.device), gt.to(self.device)
        self.model.eval()
        try:
            outputs = self.model(lq, return_all=True)
        finally:
            self.trained_module.train()
        metrics = {}
        for name, image in zip(OUTPUTS, outputs, strict=True):
            metrics[f"{name}_psnr"] = psnr_uint8(image, gt).clamp(max=PSNR_CAP_DB).mean()
            metrics[f"{name}_ssim"] = ssim(image.clamp(0, 1), gt).mean()
        baseline = lq if lq.shape == gt.shape else nn.functional.interpolate(
            lq, size=gt.shape[-2:], mode="bicubic", align_corners=False)
        metrics["input_psnr"] = psnr_uint8(baseline, gt).clamp(max=PSNR_CAP_DB).mean()
        return {k: float(v) for k, v in metrics.items()} | {"count": float(lq.shape[0])}

    # --- resuming ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Optimisers, scheduler, discriminator and step (the model weights are saved by the caller)."""
        state = {"stage": self.stage, "step": self.step, "hyperparams": asdict(self.hp),
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        if self.discriminator is not None:
            state["discriminator"] = self.discriminator.state_dict()
            state["discriminator_optimizer"] = self.discriminator_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("stage") != self.stage:
            raise ValueError(f"trainer state is for stage {state.get('stage')!r}, this trainer runs {self.stage!r}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.discriminator is not None:
            if "discriminator" not in state:
                raise ValueError("synthesis trainer state lacks the discriminator")
            self.discriminator.load_state_dict(state["discriminator"])
            self.discriminator_optimizer.load_state_dict(state["discriminator_optimizer"])
        self.step = int(state["step"])
