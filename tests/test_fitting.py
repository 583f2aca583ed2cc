"""Fit policies against fake fixed-size models: shapes, blending normalisation, seams, uint8 writer."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ugpnet.fitting import (
    FIT_POLICIES,
    FitError,
    fit_and_run,
    numpy_to_tensor,
    pil_to_tensor,
    tensor_to_numpy,
    tensor_to_pil,
)

# (input_size, scale): a denoise-like model and a ×8 SR-like model.
MODELS = [(64, 1), (16, 8)]
# (H, W). The 3000×2000 image only goes through the scale-1 model: at ×8 its output alone is 4.6 GB.
SIZES_BY_SCALE = {
    1: [(1, 1), (1, 3000), (3000, 1), (3000, 2000), (17, 513), (64, 64), (63, 65), (211, 37)],
    8: [(1, 1), (1, 3000), (120, 80), (17, 513), (16, 16), (15, 17), (93, 41)],
}


def exact_size_upsampler(input_size: int, scale: int):
    """Nearest-neighbour ×scale 'model' that, like UGPNet, rejects anything but input_size×input_size."""
    def forward(batch: torch.Tensor) -> torch.Tensor:
        assert batch.dim() == 4 and tuple(batch.shape[1:]) == (3, input_size, input_size), batch.shape
        if scale == 1:  # interpolate at ×1 is a slow no-op on a busy CPU; the big-image tests use ×1
            return batch.clone()
        return F.interpolate(batch, scale_factor=scale, mode="nearest")
    return forward


@pytest.mark.parametrize("policy", ["resize", "tile"])
@pytest.mark.parametrize(("input_size", "scale", "height", "width"),
                         [(s, k, h, w) for s, k in MODELS for h, w in SIZES_BY_SCALE[k]])
def test_any_size_gives_exactly_scaled_output(policy, input_size, scale, height, width):
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(height * 7919 + width))
    forward = exact_size_upsampler(input_size, scale)
    restored = fit_and_run(image, forward, input_size=input_size, scale=scale, policy=policy)
    assert restored.shape == (3, height * scale, width * scale)
    assert restored.dtype == image.dtype
    # Bicubic overshoots on sharp random pixels; the [0,1] range must survive the resampling.
    assert 0.0 <= restored.min() and restored.max() <= 1.0


def test_leading_batch_dim_is_kept():
    image = torch.rand(1, 3, 20, 30)
    forward = exact_size_upsampler(16, 8)
    for policy in ("resize", "tile"):
        restored = fit_and_run(image, forward, input_size=16, scale=8, policy=policy)
        assert restored.shape == (1, 3, 160, 240)


@pytest.mark.parametrize("policy", ["resize", "tile"])
@pytest.mark.parametrize(("input_size", "scale", "height", "width"),
                         [(64, 1, 300, 170), (64, 1, 1, 700), (16, 8, 41, 29), (16, 8, 5, 3)])
def test_constant_image_stays_constant(policy, input_size, scale, height, width):
    colour = torch.tensor([0.2, 0.55, 0.9]).view(3, 1, 1)
    image = colour.expand(3, height, width).clone()
    restored = fit_and_run(image, exact_size_upsampler(input_size, scale), input_size=input_size,
                           scale=scale, policy=policy)
    assert (restored - colour).abs().max() <= 1e-5


@pytest.mark.parametrize(("input_size", "scale", "height", "width", "tile_overlap"),
                         [(64, 1, 257, 130, None), (64, 1, 257, 130, 0), (64, 1, 70, 66, 63),
                          (16, 8, 45, 38, None), (16, 8, 45, 38, 1), (16, 8, 7, 50, 0), (16, 8, 21, 24, 15)])
def test_tiling_an_identity_model_reproduces_the_image(input_size, scale, height, width, tile_overlap):
    # Holds only if the weights are normalised per pixel, whatever the window shape or overlap count
    # (overlap 15 of 16 or 63 of 64 stacks many tiles on each pixel; overlap 0 has no ramps at all).
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(3))
    expected = F.interpolate(image[None], scale_factor=scale, mode="nearest")[0]
    restored = fit_and_run(image, exact_size_upsampler(input_size, scale), input_size=input_size,
                           scale=scale, policy="tile", batch_size=3, tile_overlap=tile_overlap)
    assert (restored - expected).abs().max() <= 1e-5


def test_tiles_are_cross_faded_without_seams():
    # A model that adds one constant per tile turns a black image into a map of the blend weights.
    # Geometry: 40 px, tile 16, overlap 4 → starts 0, 12, 24 on both axes, overlaps of exactly 4 px.
    input_size, scale, overlap, size = 16, 8, 4, 40
    offsets = []

    def offset_per_tile(batch: torch.Tensor) -> torch.Tensor:
        upsampled = F.interpolate(batch, scale_factor=scale, mode="nearest")
        # Golden-ratio steps: neighbouring tiles get very different offsets in [0,1).
        tile_offsets = torch.tensor([(len(offsets) + i) * 0.618034 % 1.0 for i in range(len(batch))])
        offsets.extend(tile_offsets.tolist())
        return upsampled + tile_offsets.view(-1, 1, 1, 1)

    image = torch.zeros(3, size, size)
    blended = fit_and_run(image, offset_per_tile, input_size=input_size, scale=scale, policy="tile",
                          batch_size=4, tile_overlap=overlap)[0]
    assert len(offsets) == 9

    # Where only one tile covers a pixel (tile centres), it must show exactly that tile's offset.
    centres = [(start + input_size // 2) * scale for start in (0, 12, 24)]
    centre_values = sorted(blended[y, x].item() for y in centres for x in centres)
    assert np.allclose(centre_values, sorted(offsets), atol=1e-5)

    # A sin² cross-fade over `ramp` output pixels changes by at most (π/2)/ramp of the offset gap per
    # pixel. A hard seam would jump by the whole gap, a flat average by half of it.
    ramp = overlap * scale
    gap = max(offsets) - min(offsets)
    allowed_step = gap * math.pi / (2 * ramp) * 1.05
    largest_step = max(blended.diff(dim=0).abs().max().item(), blended.diff(dim=1).abs().max().item())
    assert largest_step <= allowed_step
    # ...and the offsets really did differ enough for a seam to have shown.
    assert gap / 2 > 4 * allowed_step


def test_error_policy_names_the_expected_size():
    forward = exact_size_upsampler(512, 1)
    with pytest.raises(FitError, match=r"500×300 \(W×H\).*exactly 512×512.*'resize' or 'tile'"):
        fit_and_run(torch.rand(3, 300, 500), forward, input_size=512, scale=1, policy="error")
    assert issubclass(FitError, ValueError)


def test_error_policy_passes_an_exact_input_through():
    image = torch.rand(1, 3, 16, 16)
    restored = fit_and_run(image, exact_size_upsampler(16, 8), input_size=16, scale=8, policy="error")
    assert torch.equal(restored, F.interpolate(image, scale_factor=8, mode="nearest"))


@pytest.mark.parametrize(("input_size", "scale", "height", "width"),
                         [(64, 1, 40, 64), (64, 1, 64, 9), (16, 8, 10, 16), (16, 8, 16, 1)])
def test_resize_crops_its_padding_back_out(input_size, scale, height, width):
    # Longer side already equals input_size, so only padding happens: the result must be exact,
    # which fails if the crop is off by a pixel or forgets the ×scale.
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(5))
    expected = F.interpolate(image[None], scale_factor=scale, mode="nearest")[0]
    restored = fit_and_run(image, exact_size_upsampler(input_size, scale), input_size=input_size,
                           scale=scale, policy="resize")
    assert (restored - expected).abs().max() <= 1e-6


def test_resize_of_a_large_smooth_image_comes_back_close():
    rows = torch.linspace(0, 1, 300).view(1, -1, 1)
    cols = torch.linspace(0, 1, 500).view(1, 1, -1)
    image = torch.cat([rows.expand(1, 300, 500), cols.expand(1, 300, 500), (rows * cols).expand(1, 300, 500)])
    restored = fit_and_run(image, exact_size_upsampler(64, 1), input_size=64, scale=1, policy="resize")
    assert 0.0 <= restored.min() and restored.max() <= 1.0
    assert (restored - image).abs().mean() <= 0.01
    assert (restored - image).abs().max() <= 0.05


def test_resize_of_an_exact_input_is_a_single_untouched_run():
    image = torch.rand(3, 64, 64)
    restored = fit_and_run(image, exact_size_upsampler(64, 1), input_size=64, scale=1, policy="resize")
    assert torch.equal(restored, image)


def test_bad_arguments_are_rejected():
    forward = exact_size_upsampler(16, 1)
    assert FIT_POLICIES == ("resize", "tile", "error")
    with pytest.raises(ValueError, match="unknown fit policy"):
        fit_and_run(torch.rand(3, 8, 8), forward, input_size=16, scale=1, policy="crop")
    with pytest.raises(ValueError, match="RGB"):
        fit_and_run(torch.rand(4, 8, 8), forward, input_size=16, scale=1, policy="tile")
    with pytest.raises(ValueError, match="tile_overlap"):
        fit_and_run(torch.rand(3, 8, 8), forward, input_size=16, scale=1, policy="tile", tile_overlap=16)


def test_model_with_wrong_scale_is_caught():
    wrong_scale = exact_size_upsampler(16, 2)
    with pytest.raises(RuntimeError, match="expected"):
        fit_and_run(torch.rand(3, 20, 20), wrong_scale, input_size=16, scale=4, policy="tile")


def test_dtype_and_autograd_follow_the_caller():
    image = torch.rand(3, 20, 33, dtype=torch.float64, requires_grad=True)
    restored = fit_and_run(image, exact_size_upsampler(16, 1), input_size=16, scale=1, policy="tile")
    assert restored.dtype == torch.float64
    restored.sum().backward()
    assert image.grad is not None and image.grad.shape == image.shape


def test_pil_round_trip_is_lossless():
    pixels = np.random.default_rng(0).integers(0, 256, size=(13, 29, 3), dtype=np.uint8)
    tensor = pil_to_tensor(Image.fromarray(pixels))
    assert tensor.shape == (1, 3, 13, 29) and tensor.dtype == torch.float32
    assert 0.0 <= tensor.min() and tensor.max() <= 1.0
    assert np.array_equal(np.asarray(tensor_to_pil(tensor)), pixels)
    assert np.array_equal(np.asarray(tensor_to_pil(tensor[0])), pixels)


def test_non_rgb_modes_are_converted():
    grey = Image.fromarray(np.full((4, 5), 200, dtype=np.uint8), mode="L")
    assert torch.allclose(pil_to_tensor(grey), torch.full((1, 3, 4, 5), 200 / 255))
    rgba = Image.new("RGBA", (5, 4), (10, 20, 30, 0))
    assert pil_to_tensor(rgba).shape == (1, 3, 4, 5)


def test_writer_rounds_half_up_and_clips():
    half_step = 0.5 / 255
    values = [-0.5, 0.0, half_step - 1e-6, half_step + 1e-6, 0.5, 254.4 / 255, 254.6 / 255, 1.0, 1.7]
    expected = [0, 0, 0, 1, 128, 254, 255, 255, 255]
    tensor = torch.tensor(values).view(1, 1, -1).expand(3, 1, -1)
    written = np.asarray(tensor_to_pil(tensor))
    assert written.dtype == np.uint8 and written.shape == (1, len(values), 3)
    assert written[0, :, 0].tolist() == expected


def test_numpy_round_trip():
    rgb = np.random.default_rng(1).random((6, 9, 3), dtype=np.float32)
    tensor = numpy_to_tensor(rgb)
    assert tensor.shape == (1, 3, 6, 9) and tensor.dtype == torch.float32
    assert np.array_equal(tensor_to_numpy(tensor), rgb)
    assert tensor_to_numpy(tensor[0]).dtype == np.float32
