"""A run that loses its lease stops early (issue 10 point 5): it used to restore its whole plan and only
then refuse to commit, while the run that took the lease over restored the same objects. Whole archive
runs on local folders with this module's 2-CPU Ray."""

import functools
import threading

import pyarrow.dataset as pads
import pytest
from restore_samples import photo
from services import wait_for

from pipelines.archive.lease import LeaseLost, lease_refusal
from pipelines.archive.run import ArchiveConfig, run
from pipelines.archive.state import StateStore
from pipelines.common import storage
from pipelines.restore import run as restore

pytest_plugins = ["services"]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]


def archive(tmp_path, count: int, **overrides):
    source = tmp_path / "src" / "p"
    source.mkdir(parents=True)
    for index in range(count):
        (source / f"{index:02d}.png").write_bytes(photo(40, 32, seed=index, fmt="PNG"))
    config = ArchiveConfig(source=str(tmp_path / "src"), dest=str(tmp_path / "dest"), state=str(tmp_path / "state"),
                           model="preset:tiny_denoise", restore={"batch_size": 1, "rows_per_block": 1}, **overrides)
    return config, StateStore(storage.resolve(config.state))


def restored(tmp_path) -> list:
    return sorted((tmp_path / "dest" / "p").glob("*.png")) if (tmp_path / "dest" / "p").exists() else []


def take_over(store: StateStore) -> None:
    store.write_json("lease.json", {"owner": "host-b:9:taker", "token": "t", "ttl_s": 60})


def test_a_lease_lost_before_restoring_stops_the_run_there(tmp_path, ray_session):
    config, store = archive(tmp_path, 3)

    def hook(checkpoint):
        if checkpoint == "invalidated":
            take_over(store)

    with pytest.raises(LeaseLost, match="host-b:9:taker"):
        run(config, hook=hook)
    assert restored(tmp_path) == [] and store.head() is None  # nothing restored, nothing committed
    assert store.read_json("lease.json")["owner"] == "host-b:9:taker"  # the taker's lease left alone


def test_a_lease_lost_while_restoring_stops_the_restore(tmp_path, ray_session):
    """A lease taken over while the restore runs stops it: most of the plan is left for the run that holds
    the lease now. The restore's tasks find the takeover in the lease file (its fence) at their next block,
    long before the heartbeat (every 200 s here) would notice and interrupt the run: this used to depend on
    the heartbeat coming before the restore's end, and failed when the restore was the faster."""
    count = 40
    config, store = archive(tmp_path, count, lease_ttl_s=600.0)

    def taker():
        wait_for(lambda: restored(tmp_path), timeout_s=300, interval_s=0.05, what="the first output")
        take_over(store)

    thread = threading.Thread(target=taker, daemon=True)

    def hook(checkpoint):
        if checkpoint == "invalidated":
            thread.start()

    with pytest.raises(LeaseLost, match="stopped early"):
        run(config, hook=hook)
    thread.join(timeout=10)
    assert 1 <= len(restored(tmp_path)) < count and store.head() is None


@pytest.mark.parametrize("lease_file, reason", [
    ('{"owner": "host-b:9:taker", "token": "t", "ttl_s": 60}', "no longer this run's (held by host-b:9:taker"),
    ("{not json", "the fence check failed"),  # a check that cannot tell refuses
])
def test_a_restore_whose_fence_refuses_does_no_work_and_says_why(tmp_path, ray_session, lease_file, reason):
    source = tmp_path / "in"
    source.mkdir()
    for index in range(3):
        (source / f"{index}.png").write_bytes(photo(40, 32, seed=index, fmt="PNG"))
    (tmp_path / "lease.json").write_text(lease_file)
    fence = functools.partial(lease_refusal, storage.resolve(str(tmp_path / "lease.json")), "this-runs-token")
    summary = restore.run(restore.RestoreConfig(input=str(source), output=str(tmp_path / "out"),
                                                model="preset:tiny_denoise", run_id="fenced"), fence=fence)
    assert (summary.ok, summary.errors, summary.exit_status != 0) == (0, 3, True)
    rows = pads.dataset(summary.manifest, format="parquet").to_table().to_pylist()
    assert {row["error_kind"] for row in rows} == {"fenced"}
    assert all(row["error"].startswith("fence: ") and reason in row["error"] for row in rows)
    assert sorted(path.name for path in (tmp_path / "out").rglob("*.png")) == []  # nothing written
