import math

import numpy as np
import pytest
import torch

from ugpnet.degradations import (
    NAMED_DEGRADATIONS,
    BlurConfig,
    Degradation,
    JpegConfig,
    NoiseConfig,
    degrade,
    gaussian_kernel,
    get_degradation,
    motion_kernel,
    random_blur_kernel,
    sample_seed,
)
from ugpnet.tasks import TRAINING_DEGRADATIONS as DEFAULT_DEGRADATIONS


def smooth_image(size=64, seed=0):
    """A smooth random image (low frequencies only), so blur and noise are measurable against it."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 8, 8, generator=g)
    image = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return image[0].clamp(0, 1)


@pytest.mark.parametrize("name", sorted(NAMED_DEGRADATIONS))
def test_seeded_degradation_is_reproducible_and_in_range(name):
    gt = smooth_image()
    config = get_degradation(name)
    first = degrade(gt, config, sample_seed(7, 3))
    again = degrade(gt, config, sample_seed(7, 3))
    other = degrade(gt, config, sample_seed(7, 4))
    assert torch.equal(first, again)
    assert first.shape == (3, 64 // config.downscale, 64 // config.downscale)
    assert first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, (first * 255).round() / 255)  # quantised like an 8-bit file
    if name in DEFAULT_DEGRADATIONS and name != "sr":  # random draws differ between samples
        assert not torch.equal(first, other)


def test_integer_seed_equals_generator_from_that_seed():
    gt = smooth_image()
    config = DEFAULT_DEGRADATIONS["denoise"]
    assert torch.equal(degrade(gt, config, 5), degrade(gt, config, np.random.default_rng(5)))


def test_sr_output_is_one_eighth_and_antialiased_bicubic():
    gt = torch.rand(3, 64, 64)
    lq = degrade(gt, DEFAULT_DEGRADATIONS["sr"], 0)
    assert lq.shape == (3, 8, 8)
    expected = torch.nn.functional.interpolate(gt[None], size=(8, 8), mode="bicubic", antialias=True)[0]
    assert (lq - expected.clamp(0, 1)).abs().max() <= 0.5 / 255 + 1e-6  # only the 8-bit rounding differs
    # antialiasing averages the noise away instead of aliasing it
    assert float(lq.std()) < 0.5 * float(gt.std())
    with pytest.raises(ValueError, match="divide"):
        degrade(torch.rand(3, 60, 64), DEFAULT_DEGRADATIONS["sr"], 0)


def test_sigma_25_noise_has_that_std():
    flat = torch.full((3, 128, 128), 0.5)
    lq = degrade(flat, get_degradation("denoise_sigma25"), 0)
    assert math.isclose(float((lq - flat).std()), 25 / 255, rel_tol=0.03)
    # and a fixed σ is expressible directly
    config = Degradation(noise=NoiseConfig(sigma=(25.0, 25.0)), quantize=False)
    assert math.isclose(float((degrade(flat, config, 1) - flat).std()), 25 / 255, rel_tol=0.03)


def test_noise_sigma_is_drawn_in_range():
    flat = torch.full((3, 64, 64), 0.5)
    config = Degradation(noise=NoiseConfig(sigma=(10.0, 20.0)), quantize=False)
    stds = [float((degrade(flat, config, sample_seed(0, i)) - flat).std()) * 255 for i in range(20)]
    assert 9 < min(stds) and max(stds) < 21 and max(stds) - min(stds) > 3


@pytest.mark.parametrize("kind", ["isotropic", "anisotropic", "motion"])
def test_blur_kernels_sum_to_one_and_stay_in_size_range(kind):
    config = BlurConfig(kinds=(kind,), kernel_size=(7, 15))
    for i in range(10):
        kernel = random_blur_kernel(config, sample_seed(1, i))
        assert kernel.shape[0] == kernel.shape[1] and kernel.shape[0] % 2 == 1 and 7 <= kernel.shape[0] <= 15
        assert kernel.min() >= 0
        assert math.isclose(kernel.sum(), 1.0, rel_tol=1e-9)


def test_kernels_are_centred():
    for kernel in (gaussian_kernel(15, 1.0, 3.0, 0.7), motion_kernel(21, 12.0, np.random.default_rng(3))):
        r = kernel.shape[0] // 2
        y, x = np.mgrid[-r:r + 1, -r:r + 1]
        assert abs((kernel * x).sum()) < 0.5 and abs((kernel * y).sum()) < 0.5


def test_blur_lowers_high_frequencies_and_keeps_mean():
    gt = torch.rand(3, 64, 64)
    lq = degrade(gt, Degradation(blur=BlurConfig(sigma=(1.5, 2.5)), quantize=False), 0)
    assert lq.shape == gt.shape
    assert abs(float(lq.mean() - gt.mean())) < 0.01
    assert float((lq[:, 1:] - lq[:, :-1]).abs().mean()) < 0.5 * float((gt[:, 1:] - gt[:, :-1]).abs().mean())


def test_poisson_and_jpeg_are_optional_extras():
    gt = smooth_image()
    config = Degradation(noise=NoiseConfig(sigma=(1.0, 1.0), poisson_probability=1.0, poisson_peak=(30.0, 30.0)),
                         jpeg=JpegConfig(quality=(30, 30)))
    lq = degrade(gt, config, 0)
    assert lq.shape == gt.shape and 0.01 < float((lq - gt).abs().mean()) < 0.2


def test_config_round_trips_through_a_dict():
    for config in NAMED_DEGRADATIONS.values():
        assert Degradation.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown degradation"):
        get_degradation("nope")


def test_deblur_gaussian_draws_no_motion_kernels():
    """Gaussian kernels are point-symmetric; camera-shake trajectories almost never are."""
    def symmetric(kernel):
        return np.allclose(kernel, kernel[::-1, ::-1], atol=1e-9)

    rng = np.random.default_rng(0)
    gaussian = [random_blur_kernel(NAMED_DEGRADATIONS["deblur_gaussian"].blur, rng) for _ in range(60)]
    default = [random_blur_kernel(NAMED_DEGRADATIONS["deblur"].blur, rng) for _ in range(60)]
    assert all(symmetric(k) for k in gaussian)
    assert not all(symmetric(k) for k in default)
