"""A fixed-size UGPNet restores images of any size through the fit policies."""

import pytest
import torch

import ugpnet
from ugpnet.fitting import FitError

SIZES = [(1, 1), (1, 300), (300, 1), (37, 91), (64, 64), (200, 130)]


@pytest.fixture(scope="module")
def denoiser():
    return ugpnet.build("tiny_denoise", seed=0)


@pytest.fixture(scope="module")
def upscaler():
    return ugpnet.build("tiny_sr_x8", seed=0)


@pytest.mark.parametrize("fit", ["resize", "tile"])
@pytest.mark.parametrize("height,width", SIZES)
def test_output_is_input_size_times_scale(denoiser, upscaler, fit, height, width):
    g = torch.Generator().manual_seed(height * 1000 + width)
    image = torch.rand(3, height, width, generator=g)
    with torch.inference_mode():
        assert denoiser.restore(image, fit=fit).shape == (3, height, width)
        if height * width <= 4000:  # ×8 outputs grow 64×; keep the big ones to the ×1 model
            assert upscaler.restore(image, fit=fit).shape == (3, height * 8, width * 8)


@pytest.mark.slow
@pytest.mark.parametrize("fit", ["resize", "tile"])
def test_large_photo_size(denoiser, fit):
    image = torch.rand(1, 3, 2000, 3000)
    with torch.inference_mode():
        assert denoiser.restore(image, fit=fit, batch_size=16).shape == (1, 3, 2000, 3000)


def test_return_all_fits_the_three_outputs_together(denoiser):
    image = torch.rand(3, 70, 90)
    with torch.inference_mode():
        out = denoiser.restore(image, fit="tile", return_all=True)
        fused = denoiser.restore(image, fit="tile")
    assert [t.shape for t in out] == [(3, 70, 90)] * 3
    torch.testing.assert_close(out.fused, fused)


def test_tile_of_an_exactly_sized_image_is_the_plain_forward(denoiser):
    image = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(denoiser.restore(image, fit="tile"), denoiser(image))


def test_error_policy_names_the_expected_size(denoiser):
    with pytest.raises(FitError, match="64×64"):
        denoiser.restore(torch.rand(3, 65, 64), fit="error")
    with torch.inference_mode():
        assert denoiser.restore(torch.rand(3, 64, 64), fit="error").shape == (3, 64, 64)
