"""A run that loses its lease stops early (issue 10 point 5): it used to restore its whole plan and only
then refuse to commit, while the run that took the lease over restored the same objects. Whole archive
runs on local folders with this module's 2-CPU Ray."""

import threading

import pytest
from restore_samples import photo
from services import wait_for

from pipelines.archive.lease import LeaseLost
from pipelines.archive.run import ArchiveConfig, run
from pipelines.archive.state import StateStore
from pipelines.common import storage

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
    """The heartbeat finds the lease taken over while the restore runs and stops it (the run's thread is
    interrupted): most of the plan is left for the run that holds the lease now."""
    count = 40
    config, store = archive(tmp_path, count, lease_ttl_s=6.0)  # renewed every 2 s

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
