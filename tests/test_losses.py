import math

import pytest
import torch
from perceptual_fixtures import random_vgg_state, write_perceptual_weights

from ugpnet.losses import (
    LPIPSLoss,
    PatchContextualLoss,
    PSNRLoss,
    contextual_loss,
    discriminator_loss,
    generator_adversarial_loss,
    lazy_r1_weight,
    r1_penalty,
    split_patches,
)
from ugpnet.metrics import psnr
from ugpnet.model import build_discriminator
from ugpnet.presets import get_preset
from ugpnet.state_dicts import CheckpointMismatchError
from ugpnet.vgg import LPIPS, MissingWeightsError, PerceptualWeights, VGGFeatures


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return write_perceptual_weights(tmp_path_factory.mktemp("vgg"))


def test_psnr_loss_is_minus_mean_psnr():
    torch.manual_seed(0)
    gt = torch.rand(4, 3, 16, 16)
    output = (gt + 0.05 * torch.randn_like(gt)).clamp(0, 1)
    assert math.isclose(float(PSNRLoss()(output, gt)), -float(psnr(output, gt).mean()), rel_tol=1e-4)


def test_vgg_loads_torchvision_layouts_and_normalises(weights, tmp_path):
    vgg = VGGFeatures("vgg16", weights.vgg16)                   # full state dict, classifier ignored
    assert set(vgg.state_dict()) == {k for k in random_vgg_state("vgg16") if k.startswith("features.")}
    # a state dict of `vgg.features` alone (keys without the prefix) loads as well
    plain = {k.removeprefix("features."): v for k, v in random_vgg_state("vgg16", 1, False).items()}
    torch.save(plain, tmp_path / "features_only.pth")
    same = VGGFeatures("vgg16", tmp_path / "features_only.pth")
    image = torch.rand(1, 3, 32, 32)
    assert torch.equal(vgg(image), same(image))
    assert not any(p.requires_grad for p in vgg.parameters()) and not vgg.train().training
    # truncation: VGG19 up to relu3_4 has 18 layers, 256 channels at 1/4 resolution
    assert VGGFeatures("vgg19", weights.vgg19, last_layer=18)(image).shape == (1, 256, 8, 8)


def test_missing_or_wrong_weight_files_raise_clear_errors(weights, tmp_path):
    with pytest.raises(MissingWeightsError, match="perceptual.vgg16"):
        LPIPS(PerceptualWeights(lpips_heads=weights.lpips_heads))
    with pytest.raises(MissingWeightsError, match=r"VGG19.*nowhere/vgg19\.pth does not exist"):
        PatchContextualLoss(PerceptualWeights(vgg19="/nowhere/vgg19.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(MissingWeightsError, match="junk.pth"):
        VGGFeatures("vgg16", tmp_path / "junk.pth")
    wrong = random_vgg_state("vgg16")
    wrong["features.0.weight"] = torch.zeros(32, 3, 3, 3)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointMismatchError, match=r"features\.0\.weight"):
        VGGFeatures("vgg16", tmp_path / "wrong.pth")


def test_lpips_is_zero_for_identical_images_and_grows_with_distortion(weights):
    lpips = LPIPS(weights)
    assert set(k for k in lpips.state_dict() if k.startswith("lin")) == {
        f"lin{i}.model.1.weight" for i in range(5)}
    torch.manual_seed(0)
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(lpips(image, image), torch.zeros(2), atol=1e-6)
    small = lpips(image, image + 0.05 * torch.randn_like(image))
    large = lpips(image, image + 0.5 * torch.randn_like(image))
    assert small.shape == (2,) and (small > 0).all() and (large > small).all()
    loss = LPIPSLoss(weights, resize_to=64)
    output = torch.rand(2, 3, 16, 16, requires_grad=True)
    value = loss(output, torch.rand(2, 3, 16, 16))
    value.backward()
    assert value.dim() == 0 and output.grad.abs().sum() > 0


def reference_contextual(x, y, h=0.5, eps=1e-5):
    """Step-by-step loops over the reference §5 formula, for one feature pair (C,P)."""
    mean = y.mean(1, keepdim=True)
    x = torch.nn.functional.normalize(x - mean, dim=0)
    y = torch.nn.functional.normalize(y - mean, dim=0)
    n = x.shape[1]
    d = [[max(0.0, 1 - float(x[:, i] @ y[:, j])) for j in range(n)] for i in range(n)]
    rel = [[d[i][j] / (min(d[i]) + eps) for j in range(n)] for i in range(n)]
    w = [[math.exp((1 - rel[i][j]) / h) for j in range(n)] for i in range(n)]
    cx = [[w[i][j] / sum(w[i]) for j in range(n)] for i in range(n)]
    numerator = denominator = 0.0
    for j in range(n):
        i_best = max(range(n), key=lambda i: cx[i][j])
        c = math.exp((1 - d[i_best][j]) / h)
        numerator += cx[i_best][j] * c
        denominator += c
    return -math.log(numerator / denominator + eps)


def test_contextual_loss_matches_the_reference_formula():
    torch.manual_seed(1)
    x, y = torch.randn(1, 6, 3, 3, dtype=torch.float64), torch.randn(1, 6, 3, 3, dtype=torch.float64)
    ours = contextual_loss(x, y)
    assert ours.shape == (1,)
    assert math.isclose(float(ours), reference_contextual(x[0].flatten(1), y[0].flatten(1)), rel_tol=1e-9)


def test_patch_contextual_loss_prefers_identical_images(weights):
    loss = PatchContextualLoss(weights, patch_size=16)
    torch.manual_seed(0)
    image = torch.rand(2, 3, 32, 32)
    same = float(loss(image, image))
    different = float(loss(image, torch.rand(2, 3, 32, 32)))
    assert same >= -2e-5  # −log(score + 1e-5) with score ≤ 1 (up to float rounding): ≥ −1e-5
    assert same < 1e-3 < different
    assert split_patches(image, 16).shape == (8, 3, 16, 16)
    with pytest.raises(ValueError, match="patches"):
        split_patches(torch.rand(1, 3, 24, 32), 16)


def test_gan_losses_and_r1():
    zeros = torch.zeros(4, 1)
    assert math.isclose(float(discriminator_loss(zeros, zeros)), 2 * math.log(2), rel_tol=1e-6)
    assert math.isclose(float(generator_adversarial_loss(zeros)), math.log(2), rel_tol=1e-6)
    torch.manual_seed(0)
    discriminator = build_discriminator(get_preset("tiny_denoise"))
    real = torch.rand(4, 3, 64, 64, requires_grad=True)
    r1 = r1_penalty(discriminator(real), real)
    assert r1 > 0
    r1.backward()  # differentiable w.r.t. D's parameters (the penalty trains D)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in discriminator.parameters())
    assert lazy_r1_weight(10.0, 10) == 50.0
