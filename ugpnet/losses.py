"""Training losses of the three stages (reference §5). Images are (B,3,H,W) in [0,1] unless named.

    stage 1: PSNRLoss (or L1) on I_R vs GT
    stage 2: L1 + 10·LPIPS + 0.3·non-saturating GAN on I_G vs GT; D: logistic loss + lazy R1
    stage 3: L1 + 10·LPIPS vs GT + 0.05·PatchContextualLoss(I_F, I_G)   (target: the synthesized image)
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from ugpnet.vgg import LPIPS, PerceptualWeights, VGGFeatures

VGG19_RELU3_4 = 18  # features[0:18] ends with relu3_4


class PSNRLoss(nn.Module):
    """(10/ln10)·mean over the batch of ln(per-image MSE + 1e-8): minus the mean PSNR in dB (peak 1)."""

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        mse = (output - target).pow(2).mean((1, 2, 3))
        return 10 / math.log(10) * torch.log(mse + 1e-8).mean()


def l1_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(output, target)


class LPIPSLoss(nn.Module):
    """Official usage: [0,1] → [-1,1], bicubic resize to 256×256, LPIPS, mean over the batch."""

    def __init__(self, weights: PerceptualWeights, resize_to: int | None = 256):
        super().__init__()
        self.lpips = LPIPS(weights)
        self.resize_to = resize_to

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        output, target = output * 2 - 1, target * 2 - 1  # now in [-1,1]
        if self.resize_to is not None:
            size = (self.resize_to, self.resize_to)
            output = F.interpolate(output, size=size, mode="bicubic", align_corners=False)
            target = F.interpolate(target, size=size, mode="bicubic", align_corners=False)
        return self.lpips(output, target).mean()


def split_patches(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B,C,H,W) → (B·H/p·W/p, C, p, p) non-overlapping patches."""
    b, c, h, w = images.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"images {h}×{w} do not split into {patch_size}×{patch_size} patches")
    patches = images.unfold(2, patch_size, patch_size).unfold(3, patch_size, patch_size)
    return patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, patch_size, patch_size)


def contextual_loss(x: torch.Tensor, y: torch.Tensor, band_width: float = 0.5, eps: float = 1e-5) -> torch.Tensor:
    """Weighted contextual loss of feature maps x, y (N,C,h,w), one term per pair; reference §5 steps 1–8."""
    y_mean = y.mean((0, 2, 3), keepdim=True)                       # 1. centre on y's channel mean
    x = F.normalize((x - y_mean).flatten(2), dim=1)                # 2. unit length over channels: (N,C,P)
    y = F.normalize((y - y_mean).flatten(2), dim=1)
    distance = (1 - x.transpose(1, 2) @ y).clamp(min=0)            # 3. d_ij, (N, P_x, P_y)
    relative = distance / (distance.min(2, keepdim=True).values + eps)      # 4. d̃_ij = d_ij / min_k d_ik
    cx = torch.softmax((1 - relative) / band_width, dim=2)         # 5. exp((1-d̃)/h) normalised over j
    best, best_i = cx.max(1)                                       # 6. m_j = max_i CX_ij at i*(j)
    best_distance = distance.gather(1, best_i.unsqueeze(1)).squeeze(1)
    weight = torch.exp((1 - best_distance) / band_width)           #    c_j = exp((1 - d_{i*j}) / h)
    score = (best * weight).sum(1) / weight.sum(1)                 # 7. Σ m_j c_j / Σ c_j
    return -torch.log(score + eps)                                 # 8. per pair; caller averages


class PatchContextualLoss(nn.Module):
    """Contextual loss between 128×128 patches of output and target in VGG19 relu3_4 space."""

    def __init__(self, weights: PerceptualWeights, patch_size: int = 128, band_width: float = 0.5):
        super().__init__()
        vgg19 = weights.require("vgg19", "the patch contextual loss")
        self.vgg = VGGFeatures("vgg19", vgg19, last_layer=VGG19_RELU3_4)  # ImageNet-normalises [0,1] input
        self.patch_size, self.band_width = patch_size, band_width

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        output_features = self.vgg(split_patches(output, self.patch_size))
        target_features = self.vgg(split_patches(target, self.patch_size))
        return contextual_loss(output_features, target_features, self.band_width).mean()


# --- GAN (non-saturating logistic, as StyleGAN2) ------------------------------------------------

def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(-fake_logits).mean()


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ‖∇_x D(x)‖² at the real images (`real` must require grad)."""
    (gradient,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return gradient.pow(2).flatten(1).sum(1).mean()


def lazy_r1_weight(gamma: float, interval: int) -> float:
    """Weight of R1 on the steps where it is computed: (γ/2)·interval (reference: (10/2)·R1·10)."""
    return gamma / 2 * interval
