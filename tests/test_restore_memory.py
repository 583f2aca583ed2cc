"""Failure isolation and memory safety of `ugpnet restore`, on a real local Ray whose workers carry
the package's test-only fault hooks (pipelines/fault_hooks.py): one chosen image fails inside the
real model actor (an exception, or the actor's process SIGKILLed as the OOM killer would)."""

import os

import pyarrow.dataset as pads
import pytest
from restore_samples import photo

import ugpnet
from pipelines import fault_hooks, storage
from pipelines.restore import RestoreConfig, run

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
