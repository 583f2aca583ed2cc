import numpy as np
import pytest
import torch

from ugpnet.augment import AffineParams, GeometricAugmentation, apply_affine, sample_affine


def test_one_transform_per_iteration_by_iteration_mod_3():
    rng = np.random.default_rng(0)
    for iteration in range(30):
        params = sample_affine(iteration, 512, rng)
        kind = iteration % 3
        if kind == 0:
            assert 7 / 8 <= params.scale <= 9 / 8 and params.translation == (0, 0) and params.angle == 0
        elif kind == 1:
            tx, ty = params.translation
            assert -128 <= tx <= 129 and -50 <= ty <= 51 and params.scale == 1.0 and params.angle == 0
        else:
            assert isinstance(params.angle, int) and -5 <= params.angle <= 5 and params.translation == (0, 0)


def test_translation_range_scales_with_image_size():
    rng = np.random.default_rng(1)
    shifts = [sample_affine(1, 64, rng).translation for _ in range(300)]
    assert max(abs(tx) for tx, _ in shifts) <= 17 and max(abs(tx) for tx, _ in shifts) >= 14  # 128·64/512 = 16
    assert max(abs(ty) for _, ty in shifts) <= 7                                                # 50·64/512 ≈ 6


def test_identity_and_integer_translation_are_exact_with_zero_fill():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32)
    assert torch.equal(apply_affine(images, AffineParams()), images)
    shifted = apply_affine(images, AffineParams(translation=(3, -2)))  # right by 3, up by 2
    assert torch.equal(shifted[..., :30, 3:], images[..., 2:, :29])
    assert shifted[..., :, :3].abs().max() == 0 and shifted[..., 30:, :].abs().max() == 0


def test_rotation_and_scale_keep_the_centre_and_use_nearest_values():
    images = torch.zeros(1, 1, 33, 33)
    images[..., 16, 16] = 1.0
    images[..., 16, 24] = 0.5  # 8 px right of the centre
    for params in (AffineParams(angle=5), AffineParams(scale=9 / 8), AffineParams(scale=7 / 8)):
        out = apply_affine(images, params)
        assert out[..., 16, 16] == 1.0
        assert set(out.unique().tolist()) <= {0.0, 0.5, 1.0}  # nearest: no new values
    rotated = apply_affine(images, AffineParams(angle=90))
    assert rotated[..., 24, 16] == 0.5  # clockwise on screen (y down): right of the centre goes down


def test_same_parameters_for_batch_and_both_images_and_clamped():
    augmentation = GeometricAugmentation(seed=3)
    restored = torch.rand(4, 3, 64, 64) * 1.2 - 0.1   # I_R may leave [0,1] slightly
    gt = restored.clone()
    for iteration in range(3):
        out_restored, out_gt = augmentation(iteration, restored, gt)
        assert torch.equal(out_restored, out_gt.clamp(0, 1))
        assert out_restored.min() >= 0 and out_restored.max() <= 1
    # each image of the batch moves the same way: a batch of copies stays copies
    copies = restored[:1].expand(4, -1, -1, -1)
    out = augmentation(1, copies)[0]
    assert all(torch.equal(out[0], out[i]) for i in range(4))


def test_draws_depend_only_on_seed_and_iteration():
    a, b = GeometricAugmentation(seed=5), GeometricAugmentation(seed=5)
    assert [a.params(i, 64) for i in range(6)] == [b.params(i, 64) for i in range(6)]
    assert a.params(0, 64) != GeometricAugmentation(seed=6).params(0, 64)


@pytest.mark.parametrize("size", [(1, 3, 48, 64)])
def test_non_square_images(size):
    images = torch.rand(*size)
    out = apply_affine(images, AffineParams(translation=(2, 1)))
    assert out.shape == images.shape and torch.equal(out[..., 1:, 2:], images[..., :-1, :-2])
