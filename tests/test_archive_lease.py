"""The archive's lease and commit under contention (issue 10 points 5 and 6): compare-and-swap on
lease.json and HEAD.json, expiry by the store's clock, the heartbeat, damaged state files, and which
state files `keep_versions` keeps. Local folders and the real moto S3 server; no Ray here."""

import contextlib
import json
import os
import pickle
import socket
import threading
import time

import pytest
from services import REGION, wait_for

from pipelines import cli
from pipelines.archive.lease import STORE_CLOCK_SLACK_S, Lease, LeaseHeld, LeaseLost
from pipelines.archive.state import CommitConflict, StateStore
from pipelines.common import storage

pytest_plugins = ["services"]

MODEL = "preset:tiny_denoise"


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> StateStore:
    """A state store in a local folder, or under s3://outputs/state on the moto server."""
    if request.param == "local":
        return StateStore(storage.resolve(str(tmp_path / "state")))
    request.getfixturevalue("s3_buckets")
    return StateStore(storage.resolve("s3://outputs/state"))


def age_lease_file(store: StateStore, seconds: float) -> None:
    """Make a local lease.json look `seconds` older to its store (its mtime is the store's clock)."""
    path = store.location("lease.json").path
    stat = os.stat(path)
    os.utime(path, (stat.st_atime - seconds, stat.st_mtime - seconds))


# ---------------------------------------------------------------- the lease

def test_lease_refuses_a_live_holder_and_allows_takeover_after_expiry(tmp_path):
    store = StateStore(storage.resolve(str(tmp_path / "state")))
    first = Lease(store, "host-a:1:first", ttl_s=60)
    assert first.acquire() is None
    second = Lease(store, "host-b:2:second", ttl_s=60)
    with pytest.raises(LeaseHeld, match="held by host-a:1:first"):
        second.acquire()
    age_lease_file(store, 59)
    first.renew()  # a renewal makes it young again
    with pytest.raises(LeaseHeld):
        second.acquire()
    age_lease_file(store, 60 + STORE_CLOCK_SLACK_S + 1)  # expired by the store's clock: taken over
    assert second.acquire()["owner"] == "host-a:1:first"
    with pytest.raises(LeaseLost, match="no longer this run's"):
        first.renew()
    first.release()  # not ours any more: left alone
    assert store.read_json("lease.json")["owner"] == "host-b:2:second"
    second.release()
    assert store.read_json("lease.json") is None


def test_the_fence_passes_only_while_the_lease_holds_this_runs_token(store):
    """What the restore's tasks ask (pipelines/restore/fence.py): the lease file itself, read at once,
    not the heartbeat's view; a renewal by the holder leaves its fence passing."""
    lease = Lease(store, "host-a:1:a", ttl_s=60)
    fence = lease.fence()
    assert "was removed" in fence()  # no lease yet
    lease.acquire()
    assert fence() is None
    lease.renew()
    assert fence() is None and pickle.loads(pickle.dumps(fence))() is None  # it travels to Ray tasks
    store.write_json("lease.json", {"owner": "host-b:2:b", "token": "other", "ttl_s": 60})
    assert "no longer this run's (held by host-b:2:b" in fence()
    assert lease.lost is None  # reading changes nothing: the heartbeat and renewals decide that


def test_two_runs_that_both_saw_no_lease_never_both_hold_it(store):
    """Point 5: B reads "no lease", then A takes it; B must not take it too (the old read → write →
    read-back let both believe they held it)."""
    a, b = Lease(store, "host-a:1:a", ttl_s=60), Lease(store, "host-b:2:b", ttl_s=60)
    b_has_read, a_done = threading.Event(), threading.Event()
    original, calls = b.read, []

    def read_then_wait():
        result = original()
        calls.append(result)
        if len(calls) == 1:  # B's first look: nothing there; now let A go first
            b_has_read.set()
            assert a_done.wait(timeout=60)
        return result

    b.read = read_then_wait
    outcome = {}

    def take_b():
        try:
            outcome["b"] = b.acquire()
        except LeaseHeld as err:
            outcome["b"] = err

    thread = threading.Thread(target=take_b)
    thread.start()
    assert b_has_read.wait(timeout=60)
    a.acquire()
    a_done.set()
    thread.join(timeout=60)
    assert isinstance(outcome["b"], LeaseHeld), "both runs believe they hold the lease"
    assert store.read_json("lease.json")["owner"] == "host-a:1:a"
    a.renew()  # A still holds it
    with pytest.raises(LeaseLost):
        b.renew()


def test_expiry_is_judged_by_the_store_clock_not_the_readers(s3_buckets, monkeypatch):
    """Point 5: a reader whose clock runs an hour ahead must not take a live lease over."""
    store = StateStore(storage.resolve("s3://outputs/state"))
    Lease(store, "host-a:1:a", ttl_s=60).acquire()
    skewed = time.time() + 3600
    monkeypatch.setattr(time, "time", lambda: skewed)
    with pytest.raises(LeaseHeld, match="held by host-a:1:a"):
        Lease(store, "host-b:2:b", ttl_s=60).acquire()


def test_a_lease_expires_by_the_store_clock(s3_buckets):
    store = StateStore(storage.resolve("s3://outputs/state"))
    Lease(store, "host-a:1:a", ttl_s=1).acquire()  # its holder died: never renewed
    taker = Lease(store, "host-b:2:b", ttl_s=60)

    def taken():
        try:
            return taker.acquire()
        except LeaseHeld:
            return None

    started = time.monotonic()
    assert wait_for(taken, timeout_s=30, interval_s=0.5, what="the lease to expire")["owner"] == "host-a:1:a"
    assert time.monotonic() - started >= 1 + STORE_CLOCK_SLACK_S - 1.5  # not before TTL + slack (±1 s stamps)


def test_a_failing_heartbeat_marks_the_lease_lost_and_stops_the_run(tmp_path):
    """Point 5: an unexpected error in the heartbeat (here a damaged lease.json) used to kill the thread
    silently while the run went on."""
    store = StateStore(storage.resolve(str(tmp_path / "state")))
    lease = Lease(store, "host-a:1:a", ttl_s=0.6)
    lease.acquire()
    stopped = threading.Event()
    lease.start_heartbeat(on_lost=stopped.set)
    try:
        storage.write_bytes(store.location("lease.json"), b"{not json")
        assert stopped.wait(timeout=30), "the heartbeat failed silently"
        with pytest.raises(LeaseLost, match="not valid JSON"):
            lease.check()
    finally:
        lease.stop_heartbeat()


@contextlib.contextmanager
def silent_endpoint():
    """A TCP port on 127.0.0.1 that accepts connections and never answers (a stalled network path)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held = []

    def accept():
        with contextlib.suppress(OSError):
            while True:
                held.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        for connection in held:
            connection.close()


def test_a_renewal_hanging_past_the_ttl_stops_the_run(s3_buckets):
    """Point 5: one renewal request retried for longer than the TTL used to leave the run working while
    another run could take the lease over. Now the run is stopped a TTL after its last confirmed renewal,
    while that request still hangs."""
    store = StateStore(storage.resolve("s3://outputs/state"))
    lease = Lease(store, "host-a:1:a", ttl_s=2)
    lease.acquire()
    with silent_endpoint() as endpoint:
        # the same bucket and key, reached through a path to the store that has stalled
        stalled = storage.StorageSpec("s3", endpoint_override=endpoint, region=REGION)
        lease.store = StateStore(storage.Location(stalled, store.root.path))
        stopped = threading.Event()
        started = time.monotonic()
        lease.start_heartbeat(on_lost=stopped.set)
        assert stopped.wait(timeout=30), "the run was never told"
        assert time.monotonic() - started < 10  # the renewal's own retries take 3 x 10 s
        assert lease._threads[0].is_alive()  # the renewal request is still hanging
        with pytest.raises(LeaseLost, match="within its 2 s TTL"):
            lease.check()
        lease.stop_heartbeat()


# ---------------------------------------------------------------- the commit

def test_of_two_commits_on_the_same_head_only_one_lands(store):
    """Point 5: HEAD.json moves by compare-and-swap. A reads HEAD, B commits, then A commits: A is refused
    even though its lease is valid (each run's lease is in a store of its own here, as if the lease had
    failed: the HEAD guard alone must hold)."""
    first = {"version": 1, "run_id": "r1", "state": "versions/0000000001-r1.parquet"}
    leases = {}
    for name in ("setup", "a", "b"):
        leases[name] = Lease(StateStore(store.root.child(f"leases-{name}")), f"host:{name}", ttl_s=60)
        leases[name].acquire()
    store.commit(first, base=store.head_snapshot(), lease=leases["setup"])
    base_a = store.head_snapshot()
    store.commit({**first, "version": 2, "run_id": "b"}, base=store.head_snapshot(), lease=leases["b"])
    with pytest.raises(CommitConflict, match="another run committed"):
        store.commit({**first, "version": 2, "run_id": "a"}, base=base_a, lease=leases["a"])
    assert store.head()["run_id"] == "b"
    with pytest.raises(CommitConflict):  # the very first commit, too, lands once
        fresh = StateStore(store.root.child("other"))
        empty = fresh.head_snapshot()
        fresh.commit(first, base=empty, lease=leases["a"])
        fresh.commit({**first, "run_id": "b"}, base=empty, lease=leases["b"])
    assert fresh.head()["run_id"] == "r1"


@pytest.mark.parametrize("damaged", ["lease.json", "HEAD.json"])
@pytest.mark.parametrize("content", [b"", b"{\"version\": 3", b"[1, 2]"])
def test_a_damaged_lease_or_head_gives_a_clear_error_and_no_commit(tmp_path, capsys, damaged, content):
    source, state = tmp_path / "src", tmp_path / "state"
    source.mkdir()
    (source / "a.png").write_bytes(b"not even an image: never read")
    state.mkdir()
    (state / damaged).write_bytes(content)
    code = cli.main(["archive", "--source", str(source), "--dest", str(tmp_path / "dest"), "--state", str(state),
                     "--model", MODEL])
    err = capsys.readouterr().err
    assert code == 1
    assert "damaged" in err and str(state / damaged) in err and "nothing was changed" in err, err
    assert "Traceback" not in err
    assert (state / damaged).read_bytes() == content  # left as found, for the operator
    assert sorted(p.name for p in state.iterdir() if not p.name.startswith(".")) == [damaged]  # no commit
    assert not (tmp_path / "dest").exists()  # nothing processed


# ---------------------------------------------------------------- keep_versions (point 6)

def test_keep_versions_never_deletes_the_state_head_points_at(tmp_path):
    """Dead runs leave state files whose names sort after HEAD's (a later version, or the same version
    with a later run id): keeping the lexically last N names deleted HEAD's own state."""
    store = StateStore(storage.resolve(str(tmp_path / "state")))
    parent = None
    for version, run in ((1, "r1"), (2, "r2")):
        state = f"versions/{version:010d}-{run}.parquet"
        storage.write_bytes(store.location(state), b"state")
        name = f"commits/{version:010d}-{run}.json"
        record = {"version": version, "run_id": run, "state": state, "parent": parent, "record": name}
        store.write_json(name, record)
        store.write_json("HEAD.json", record)
        parent = name
    for dead in ("0000000002-zz-dead", "0000000003-dead"):
        storage.write_bytes(store.location(f"versions/{dead}.parquet"), b"never committed")
    versions = tmp_path / "state" / "versions"
    store.clean_after_commit(base_version=1, keep_versions=2)
    assert sorted(os.listdir(versions)) == ["0000000001-r1.parquet", "0000000002-r2.parquet"]
    store.clean_after_commit(base_version=1, keep_versions=1)
    assert sorted(os.listdir(versions)) == ["0000000002-r2.parquet"]
    assert json.loads((tmp_path / "state" / "HEAD.json").read_text())["state"] == "versions/0000000002-r2.parquet"
