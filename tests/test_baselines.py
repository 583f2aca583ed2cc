"""The classical baselines of `ugpnet evaluate` (ugpnet.baselines), each on a synthetic image degraded
by the evaluation's own degradation: every method must beat its degraded input, which fails if a
method is wired wrong (wrong channel order, range, kernel, σ units or scale)."""

import math

import numpy as np
import pytest
import torch

from ugpnet import baselines
from ugpnet.degradations import DegradationRecord, degrade, degrade_recorded, gaussian_kernel, sample_seed
from ugpnet.tasks import evaluation_degradation as task_degradation

SIDE = 64


def synthetic_image() -> np.ndarray:
    """(SIDE,SIDE,3) in [0,1]: smooth colour ramps, a bright disc and a dark bar (edges to keep)."""
    y, x = np.mgrid[0:SIDE, 0:SIDE] / (SIDE - 1)
    image = np.stack([0.2 + 0.6 * x, 0.3 + 0.4 * y, 0.7 - 0.5 * x * y], -1)
    image[(x - 0.35) ** 2 + (y - 0.4) ** 2 < 0.04] = (0.95, 0.85, 0.2)
    image[40:48, 8:56] = (0.1, 0.15, 0.3)
    return np.round(image * 255) / 255


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * math.log10(1 / np.mean((np.round(np.clip(a, 0, 1) * 255) / 255 - b) ** 2))


def degraded(task: str, strength: float, seed: int = 3) -> tuple[np.ndarray, np.ndarray, DegradationRecord]:
    gt = synthetic_image()
    lq, record = degrade_recorded(torch.from_numpy(gt.transpose(2, 0, 1)).float(), task_degradation(task, strength),
                                  sample_seed(seed, 0))
    return gt, lq.numpy().transpose(1, 2, 0), record


def test_degrade_recorded_draws_what_degrade_draws_and_records_the_truth():
    gt = torch.from_numpy(synthetic_image().transpose(2, 0, 1)).float()
    for task, strength in (("denoise", 25.0), ("deblur", 2.0), ("sr", 8.0)):
        lq, record = degrade_recorded(gt, task_degradation(task, strength), sample_seed(5, 1))
        assert torch.equal(lq, degrade(gt, task_degradation(task, strength), sample_seed(5, 1)))
    _, _, noisy = degraded("denoise", 25.0)
    assert noisy.noise_sigma == 25.0 and noisy.kernel is None and noisy.downscale == 1
    _, _, blurred = degraded("deblur", 2.0)
    np.testing.assert_allclose(blurred.kernel, gaussian_kernel(13, 2.0))  # 2·ceil(3σ)+1 px
    assert degraded("sr", 8.0)[2].downscale == 8


@pytest.mark.parametrize("name, strength", [("opencv nlm", 25.0), ("wavelet BayesShrink", 25.0),
                                            ("bm3d (true σ)", 25.0)])
def test_each_denoiser_beats_the_noisy_input(name, strength):
    gt, lq, record = degraded("denoise", strength)
    out = baselines.run_baseline(_named("denoise", name), lq, record)
    assert out.shape == gt.shape and out.dtype == np.float32
    assert psnr(out, gt) > psnr(lq, gt) + 3, (psnr(out, gt), psnr(lq, gt))


@pytest.mark.parametrize("name", ["unsharp mask", "wiener (true kernel)"])
def test_each_deblurrer_beats_the_blurred_input(name):
    gt, lq, record = degraded("deblur", 2.0)
    out = baselines.run_baseline(_named("deblur", name), lq, record)
    assert psnr(out, gt) > psnr(lq, gt) + 0.5, (psnr(out, gt), psnr(lq, gt))


@pytest.mark.parametrize("name", ["bicubic (PIL)", "lanczos (PIL)"])
def test_each_upscaler_beats_nearest_enlargement(name):
    gt, lq, record = degraded("sr", 8.0)
    out = baselines.run_baseline(_named("sr", name), lq, record)
    nearest = lq.repeat(8, 0).repeat(8, 1)
    assert out.shape == gt.shape and psnr(out, gt) > psnr(nearest, gt) + 0.5, (psnr(out, gt), psnr(nearest, gt))


def test_non_blind_baselines_are_marked_and_use_the_truth():
    assert [b.name for b in baselines.baselines_for("denoise") if not b.blind] == ["bm3d (true σ)"]
    assert [b.name for b in baselines.baselines_for("deblur") if not b.blind] == ["wiener (true kernel)"]
    assert all(b.blind for b in baselines.baselines_for("sr"))
    # Given a wrong kernel, Wiener does worse than given the true one: the record is what it uses.
    gt, lq, record = degraded("deblur", 2.0)
    wrong = DegradationRecord(kernel=gaussian_kernel(13, 0.7))
    wiener = _named("deblur", "wiener (true kernel)")
    assert psnr(baselines.run_baseline(wiener, lq, record), gt) > psnr(baselines.run_baseline(wiener, lq, wrong), gt)


def _named(task: str, name: str) -> baselines.Baseline:
    return next(b for b in baselines.baselines_for(task) if b.name == name)
