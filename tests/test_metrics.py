import math

import torch
from torch.nn import functional as F

from ugpnet.metrics import gmsd, high_frequency_energy_ratio, psnr, psnr_uint8, ssim


def textured(batch=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.rand(batch, 3, 8, 8, generator=g), size=(size, size), mode="bicubic",
                           align_corners=False)
    return (coarse + 0.15 * torch.rand(batch, 3, size, size, generator=g)).clamp(0, 1)


def blurred(images, sigma=1.5):
    coords = torch.arange(9, dtype=torch.float32) - 4
    g = torch.exp(-coords**2 / (2 * sigma**2))
    kernel = (g[:, None] * g[None, :] / g.sum() ** 2).expand(3, 1, 9, 9)
    return F.conv2d(F.pad(images, (4, 4, 4, 4), mode="reflect"), kernel, groups=3)


def test_psnr_known_values():
    gt = torch.zeros(2, 3, 8, 8)
    output = torch.full_like(gt, 0.1)  # MSE 0.01 → 20 dB
    assert torch.allclose(psnr(output, gt), torch.full((2,), 20.0))
    # uint8 version rounds first: 0.1·255 = 25.5 → 26 levels, so 20·log10(255/26)
    assert math.isclose(float(psnr_uint8(output, gt)[0]), 20 * math.log10(255 / 26), rel_tol=1e-6)
    assert torch.isinf(psnr_uint8(gt, gt)).all()
    per_image = psnr(torch.stack([output[0], gt[0]]), gt)
    assert per_image.shape == (2,) and per_image[0] == 20.0 and torch.isinf(per_image[1])


def test_ssim_identity_and_ordering():
    images = textured()
    assert torch.allclose(ssim(images, images), torch.ones(2), atol=1e-6)
    noisy = (images + 0.05 * torch.randn_like(images)).clamp(0, 1)
    noisier = (images + 0.2 * torch.randn_like(images)).clamp(0, 1)
    assert (ssim(noisy, images) < 1).all() and (ssim(noisier, images) < ssim(noisy, images)).all()
    assert ssim(noisy, images).shape == (2,)


def test_ssim_of_a_constant_shift_matches_the_closed_form():
    # constant images: σ = 0, so SSIM = (2μxμy + C1)/(μx² + μy² + C1)
    x, y = torch.full((1, 3, 16, 16), 0.5), torch.full((1, 3, 16, 16), 0.6)
    c1 = 0.01**2
    expected = (2 * 0.5 * 0.6 + c1) / (0.25 + 0.36 + c1)
    assert math.isclose(float(ssim(x, y)), expected, rel_tol=1e-6)


def test_high_frequency_energy_ratio():
    images = textured()
    assert torch.allclose(high_frequency_energy_ratio(images, images), torch.ones(2))
    assert (high_frequency_energy_ratio(blurred(images), images) < 0.5).all()   # blurring removes energy
    noisy = (images + 0.1 * torch.randn_like(images)).clamp(0, 1)
    assert (high_frequency_energy_ratio(noisy, images) > 1.5).all()            # noise adds energy


def test_gmsd():
    images = textured()
    assert torch.allclose(gmsd(images, images), torch.zeros(2), atol=1e-7)
    slightly, strongly = blurred(images, 0.7), blurred(images, 2.0)
    assert (gmsd(slightly, images) > 0).all() and (gmsd(strongly, images) > gmsd(slightly, images)).all()
    assert (gmsd(images * 0.5 + 0.25, images) > 0).all()  # contrast change
