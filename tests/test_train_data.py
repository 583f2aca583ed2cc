"""Training data: validation crops fixed, inside the image, several per image when few are held out;
the training stream in few blocks, every image equally often, a new block order on every pass."""

import pytest
import torch

from pipelines.train.data import validation_crops, validation_pairs
from ugpnet.degradations import NAMED_DEGRADATIONS

pytest_plugins = ["services"]


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


def constant_photos(folder, count: int) -> list[str]:
    """Flat-colour PNGs: every crop of image i has the value i/16 everywhere, so a sample's gt names its image."""
    from PIL import Image

    uris = []
    for i in range(count):
        Image.new("RGB", (48, 40), (i * 16,) * 3).save(folder / f"{i}.png")
        uris.append(str(folder / f"{i}.png"))
    return uris


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_training_epoch_is_a_few_large_blocks_reordered_on_every_pass(ray_session, tmp_path):
    # Few blocks means few Ray Data tasks per epoch: on main an epoch of 256 rows was 200 blocks
    # (from_items) shuffled row by row (hundreds more tasks), whose scheduling cost a 1-CPU train worker.
    from pipelines.train.data import ROWS_PER_BLOCK, train_dataset

    uris = constant_photos(tmp_path, 8)
    dataset = train_dataset(uris, 16, NAMED_DEGRADATIONS["denoise_sigma25"], samples_per_epoch=256, max_tasks=2)
    # Ray Data shows a map's concurrency cap only on its logical operator.
    assert dataset._logical_plan.dag.compute.size == 2
    passes = []
    for _ in range(2):
        rows = list(dataset.iter_rows())
        assert all(r["gt"].shape == (3, 16, 16) and r["lq"].shape == (3, 16, 16) for r in rows)
        passes.append([round(float(r["gt"][0, 0, 0]) * 255 / 16) for r in rows])
    assert sorted(passes[0]) == sorted(passes[1]) == sorted(list(range(8)) * 32)  # every image equally often
    assert passes[0] != passes[1]  # 16 blocks in a new order each pass: equal by chance with p = 1/16!
    assert dataset.materialize().num_blocks() == 256 // ROWS_PER_BLOCK


def test_data_tasks_run_one_per_cpu_the_train_workers_leave_free():
    from pipelines.train.data import data_task_limit

    assert data_task_limit(2, 1) == 1          # this machine's bench: 2 CPUs, one 1-CPU worker
    assert data_task_limit(3, 2) == 1          # the defaults' head (--num-cpus 3), one 2-CPU worker
    assert data_task_limit(2, 2 * 0.75) == 1   # half a CPU free still runs one task
    assert data_task_limit(16, 2 * 4) == 8
    assert data_task_limit(4, 8) == 1          # more reserved than the cluster has (autoscaling): one
