"""Validation crops for training: fixed, inside the image, several per image when few are held out."""

import torch

from pipelines.train_data import validation_crops, validation_pairs
from ugpnet.degradations import NAMED_DEGRADATIONS


def test_validation_crops_lie_inside_the_image_and_differ():
    for h, w in [(64, 64), (65, 300), (427, 640), (600, 512)]:
        corners = validation_crops(h, w, 64, 5)
        assert len(corners) == 5
        assert all(0 <= top <= h - 64 and 0 <= left <= w - 64 for top, left in corners)
        if min(h, w) >= 256:
            assert len(set(corners)) == 5
    assert validation_crops(427, 640, 64, 1) == [((427 - 64) // 2 + 1, (640 - 64) // 2)]


def test_validation_pairs_are_fixed_and_spread_over_few_images(tmp_path):
    from PIL import Image

    uris = []
    for i in range(2):
        pixels = (torch.rand(3, 200, 240) * 255).byte().permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        uris.append(str(tmp_path / f"{i}.png"))
    degradation = NAMED_DEGRADATIONS["denoise_sigma25"]
    lq, gt = validation_pairs(uris, 64, degradation, limit=16)
    assert lq.shape == gt.shape == (10, 3, 64, 64)        # five crops from each of the two images
    again_lq, again_gt = validation_pairs(uris, 64, degradation, limit=16)
    assert torch.equal(lq, again_lq) and torch.equal(gt, again_gt)
    assert not torch.equal(lq, gt)
    assert validation_pairs(uris, 64, degradation, limit=1)[0].shape[0] == 1
