"""Failure isolation and memory safety of `ugpnet restore`, on a real local Ray whose workers carry
the package's test-only fault hooks (pipelines/common/fault_hooks.py): one chosen image fails inside the
real model actor (an exception, or the actor's process SIGKILLed as the OOM killer would)."""

import os

import pyarrow.dataset as pads
import pytest
from restore_samples import photo

import ugpnet
from pipelines.common import fault_hooks, storage
from pipelines.restore.run import RestoreConfig, run

pytestmark = pytest.mark.integration
pytest_plugins = ["services"]

FAULTS = {fault_hooks.RAISE_ENV: "poison-raise", fault_hooks.KILL_ENV: "poison-kill"}


@pytest.fixture(scope="module")
def fault_env():
    """Set before `ray_session` starts Ray, so that every Ray worker inherits the hooks."""
    saved = {name: os.environ.get(name) for name in FAULTS}
    os.environ.update(FAULTS)
    yield FAULTS
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="module")
def faulty_ray(fault_env, ray_session):
    return ray_session


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return str(ugpnet.save(ugpnet.build("tiny_denoise", seed=0), tmp_path_factory.mktemp("bundle") / "tiny"))


def manifest_rows(folder) -> dict[str, dict]:
    location = storage.resolve(str(folder))
    table = pads.dataset(location.path, filesystem=location.filesystem, format="parquet").to_table()
    return {row["input_uri"].rsplit("/", 1)[-1]: row for row in table.to_pylist()}


@pytest.mark.timeout(300)
def test_one_failing_image_in_a_batch_of_four_is_the_only_error(tmp_path, bundle, faulty_ray):
    names = ["a.jpg", "b.jpg", "poison-raise.jpg", "d.jpg"]
    for index, name in enumerate(names):
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_bytes(photo(48, 40, seed=index))
    summary = run(RestoreConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), model=bundle,
                                batch_size=4, rows_per_block=4, run_id="isolated"))
    rows = manifest_rows(tmp_path / "out/_ugpnet/manifest/isolated")
    assert (summary.ok, summary.errors) == (3, 1)
    assert rows["poison-raise.jpg"]["status"] == "error"
    assert "model (fused): injected model fault" in rows["poison-raise.jpg"]["error"]
    assert {rows[name]["status"] for name in ("a.jpg", "b.jpg", "d.jpg")} == {"ok"}
    assert all((tmp_path / "out" / name.replace(".jpg", ".png")).is_file() for name in ("a.jpg", "b.jpg", "d.jpg"))


@pytest.mark.slow
@pytest.mark.timeout(500)
def test_an_actor_killed_on_every_attempt_ends_the_run_with_error_rows(tmp_path, bundle, faulty_ray):
    """The actor SIGKILLs itself on each attempt at the batch holding `poison-kill` (as the OOM
    killer would): Ray Data's default would restart it and re-run the batch forever."""
    names = ["a.jpg", "b.jpg", "c.jpg", "poison-kill.jpg", "e.jpg", "f.jpg"]
    (tmp_path / "in").mkdir()
    for index, name in enumerate(names):
        (tmp_path / "in" / name).write_bytes(photo(48, 40, seed=index))
    summary = run(RestoreConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), model=bundle,
                                batch_size=2, rows_per_block=2, run_id="killed"))
    rows = manifest_rows(tmp_path / "out/_ugpnet/manifest/killed")
    assert sorted(rows) == sorted(names)
    # Inputs are listed in name order, two to a batch: the killed batch is (f.jpg, poison-kill.jpg).
    for name in ("f.jpg", "poison-kill.jpg"):
        assert rows[name]["status"] == "error" and "failed on all 3 attempts" in rows[name]["error"], rows[name]
    assert {rows[name]["status"] for name in ("a.jpg", "b.jpg", "c.jpg", "e.jpg")} == {"ok"}
    assert (summary.ok, summary.errors) == (4, 2)


def big_photo(width: int, height: int) -> bytes:
    """A real-sized photo, made quickly: a smooth gradient with noise, as JPEG."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height:8, 0:width:8]
    small = np.stack([x % 256, y % 256, (x + y) % 256], axis=2).astype(np.uint8)
    image = Image.fromarray(small).resize((width, height))
    noise = rng.integers(0, 8, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image) + noise).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


@pytest.mark.timeout(300)
def test_a_24_mpx_photo_through_default_sr_is_one_error_row_naming_the_budget(tmp_path, faulty_ray):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "photo24.jpg").write_bytes(big_photo(6000, 4000))
    summary = run(RestoreConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), model="default:sr",
                                fit="tile", run_id="big"))
    rows = manifest_rows(tmp_path / "out/_ugpnet/manifest/big")
    assert (summary.total, summary.errors) == (1, 1)
    error = rows["photo24.jpg"]["error"]
    assert error.startswith("memory: 6000x4000 -> 48000x32000 (x8") and "over the budget of" in error, error
    assert not list((tmp_path / "out").glob("*.png"))


@pytest.mark.timeout(300)
def test_a_12_mpx_photo_through_an_official_preset_is_planned_within_the_cluster(tmp_path, faulty_ray):
    """Planning only (a full official-size 12 Mpx run takes hours on 2 CPUs): either the photo is
    refused naming the budget, or every reservation fits this Ray cluster's node beside the actors."""
    from pipelines.common.models import resolve_model
    from pipelines.restore import budget as restore_budget

    (tmp_path / "photo12.jpg").write_bytes(big_photo(4000, 3000))
    model = resolve_model("preset:nafnet_denoise")
    geometry = restore_budget.geometry_of(model)
    assert (geometry.input_size, geometry.scale) == (512, 1)
    from pipelines.restore import memory as restore_memory

    fixed = restore_memory.actor_memory(geometry, 4, 0)
    budget, node = restore_budget.cluster_budget(fixed)
    rows = [{"input_uri": str(tmp_path / "photo12.jpg"), "status": "pending", "error": ""}]
    plan = restore_budget.plan_memory(rows, geometry=geometry, fit="tile", tile_overlap=None, outputs=1, batch_size=4,
                                      rows_per_block=8, actors=1, budget=budget, node_memory=node,
                                      s3=storage.s3_spec_from_env())
    image = restore_memory.estimate_image(4000, 3000, geometry=geometry, fit="tile", tile_overlap=None,
                                          file_bytes=(tmp_path / "photo12.jpg").stat().st_size)
    print(f"12 Mpx nafnet_denoise tile: {image.tiles} tiles, decode {image.decode / 2**30:.2f} GiB, model "
          f"{image.model / 2**30:.2f} GiB, encode {image.encode / 2**30:.2f} GiB; actor {plan.actor / 2**30:.2f} GiB,"
          f" budget {budget / 2**30:.2f} GiB of node {node / 2**30:.2f} GiB")
    if plan.refused:
        assert rows[0]["status"] == "error" and "over the budget of" in rows[0]["error"]
    else:
        assert rows[0]["status"] == "pending"
        assert plan.decode_task >= image.decode + image.held and plan.encode_task >= image.encode + image.held
        assert plan.actor >= fixed + 4 * image.model
        assert plan.actor + max(plan.decode_task, plan.encode_task) <= node
