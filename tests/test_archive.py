"""`ugpnet archive`: change detection, versioned state and commit, the lease, crash safety.

The pieces first (listing order, diff, lease, commit guard: no Ray), then whole runs on a real moto S3
server with the module's 2-CPU Ray (in this process), and runs as CLI processes that are killed or crash
at a chosen point (their own Ray; every process they start is stopped by its temp dir)."""

import json
import os
import shutil
import signal
import subprocess
import time

import pyarrow.dataset as pads
import pytest
from restore_samples import photo
from services import (
    SLOW_MACHINE_RAY_ENV,
    VENV_BIN,
    kill_processes,
    processes_mentioning,
    processes_with_env,
    short_temp_dir,
    wait_for,
)

from pipelines import cli
from pipelines.archive.lease import STORE_CLOCK_SLACK_S, Lease, LeaseLost
from pipelines.archive.listing import CHANGED, DELETED, NEW, UNCHANGED, Entry, diff, list_source
from pipelines.archive.run import CRASH_ENV, CRASH_EXIT, EXIT_LEASE_HELD, ArchiveConfig, run
from pipelines.archive.state import StateStore
from pipelines.common import storage

pytest_plugins = ["services"]

MODEL = "preset:tiny_denoise"
SOURCE, DEST, STATE = "s3://inputs/archive", "s3://outputs/restored", "s3://outputs/state"
UGPNET = str(VENV_BIN / "ugpnet")


# ---------------------------------------------------------------- helpers

def put(client, key: str, seed: int, size=(48, 40)) -> None:
    client.put_object(Bucket="inputs", Key=f"archive/{key}", Body=photo(*size, seed=seed))


def objects(client, bucket: str, prefix: str) -> dict[str, dict]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {item["Key"]: item for page in pages for item in page.get("Contents", [])}


def outputs(client) -> dict[str, dict]:
    return {k: v for k, v in objects(client, "outputs", "restored/").items() if "/_ugpnet/" not in k}


def parquet_rows(location: storage.Location) -> list[dict]:
    return pads.dataset(location.path, filesystem=location.filesystem, format="parquet").to_table().to_pylist()


def state_store(uri: str = STATE) -> StateStore:
    return StateStore(storage.resolve(uri))


def committed_state(store: StateStore) -> dict[str, dict]:
    return {row["key"]: row for row in store.iter_state(store.head())}


def restore_rows(run_id: str, dest: str = DEST) -> list[dict]:
    location = storage.resolve(dest).child(f"_ugpnet/manifest/{run_id}")
    return parquet_rows(location) if storage.list_files(location) else []


def check_history_agrees(store: StateStore, dest: str = DEST) -> list[dict]:
    """Replaying every committed run's changes gives the committed state, and each processed row is
    backed by its run's restore manifest (same output, ok or reused). Returns the commit chain."""
    chain = store.committed_chain()
    assert [record["version"] for record in chain] == list(range(1, len(chain) + 1))
    replayed = {}
    for record in chain:
        changes = parquet_rows(store.location(record["changes"]))
        restored = {row["input_uri"]: row for row in restore_rows(record["run_id"], dest)}
        for change in changes:
            if change["action"] == DELETED:
                assert replayed.pop(change["key"])["etag"] == change["etag"]
                continue
            assert change["run_id"] == record["run_id"]
            row = restored[storage.resolve(record["source"]).uri + "/" + change["key"]]
            assert row["status"] in ("ok", "skipped") and row["output_uri"] == change["output_uri"]
            replayed[change["key"]] = change
    state = committed_state(store)
    fields = ("size", "etag", "status", "output_uri", "run_id", "model_version")
    assert {k: tuple(v[f] for f in fields) for k, v in replayed.items()} == \
           {k: tuple(v[f] for f in fields) for k, v in state.items()}
    assert chain[-1]["objects"] == len(state)
    return chain


def config(**overrides) -> ArchiveConfig:
    return ArchiveConfig(**{"source": SOURCE, "dest": DEST, "state": STATE, "model": MODEL, **overrides})


# ---------------------------------------------------------------- listing and diff (no Ray, no S3)

def test_local_listing_is_in_key_order_and_filtered(tmp_path):
    names = ["a.b.png", "a/x.png", "a/b/c.jpg", "a-c.png", "b.PNG", "Z.jpg", "notes.txt", "out/skip.png",
             "é.png", "a0.png"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x" * len(name))
    source = storage.resolve(str(tmp_path))
    keys = [e.key for e in list_source(source, extensions=(".png", ".jpg"), exclude=(source.child("out"),))]
    expected = sorted(n for n in names if n.lower().endswith((".png", ".jpg")) and not n.startswith("out/"))
    assert keys == expected  # byte order, as S3 lists: 'a-c' < 'a.b' < 'a/…' < 'a0'
    assert keys.index("a.b.png") < keys.index("a/b/c.jpg") < keys.index("a/x.png") < keys.index("a0.png")


def test_diff_classifies_by_key_size_and_etag_or_mtime():
    listing = [Entry("a", 1, "e1", 5), Entry("b", 2, "e2", 9), Entry("c", 3, None, 7), Entry("d", 4, None, 8),
               Entry("f", 5, "e5", 1)]
    rows = [{"key": "a", "size": 1, "etag": "e1", "mtime_ns": 1},   # same etag, newer mtime: unchanged (S3)
            {"key": "b", "size": 2, "etag": "old", "mtime_ns": 9},  # etag differs: changed
            {"key": "bb", "size": 1, "etag": "x", "mtime_ns": 1},   # gone: deleted
            {"key": "c", "size": 3, "etag": None, "mtime_ns": 7},   # local, same mtime: unchanged
            {"key": "d", "size": 4, "etag": None, "mtime_ns": 6},   # local, mtime differs: changed
            {"key": "z", "size": 1, "etag": "z", "mtime_ns": 1}]    # gone, after the last listed key
    result = [(kind, (entry or row)["key"] if entry is None else entry.key) for kind, entry, row in diff(listing, rows)]
    assert result == [(UNCHANGED, "a"), (CHANGED, "b"), (DELETED, "bb"), (UNCHANGED, "c"), (CHANGED, "d"),
                      (NEW, "f"), (DELETED, "z")]
    with pytest.raises(RuntimeError, match="not in key order"):
        list(diff([Entry("b", 1, None, 1), Entry("a", 1, None, 1)], []))


# ---------------------------------------------------------------- config (the lease and commit: test_archive_lease.py)

def test_config_errors_name_the_field(capsys):
    base = ["archive", "--source", SOURCE, "--dest", DEST, "--state", STATE, "--model", MODEL]
    assert cli.main([*base, "--max-items", "-1"]) == 2
    assert "'max_items'" in capsys.readouterr().err
    assert cli.main([*base, "--batch-size", "0", "--dry-run"]) == 2
    assert "'restore.batch_size'" in capsys.readouterr().err
    assert cli.main(["archive", "--source", SOURCE, "--dest", "s3://inputs", "--state", STATE, "--model",
                     MODEL, "--dry-run"]) == 2
    assert "'dest'" in (err := capsys.readouterr().err) and "contains source" in err
    assert cli.main([*base, "--max-items", "7", "--fit", "tile", "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["max_items"], printed["restore"]) == (7, {"fit": "tile"})
    assert cli.main([*base, "--strip-metadata", "--ext", "auto", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["restore"] == {"strip_metadata": True, "ext": "auto"}


# ---------------------------------------------------------------- scheduled runs on S3

@pytest.mark.integration
@pytest.mark.timeout(600)
def test_three_scheduled_runs_over_a_growing_prefix(s3_buckets, ray_session):
    client = s3_buckets.client()
    store = state_store()
    for index in range(1, 6):
        put(client, f"a/{index:02d}.jpg", seed=index)

    first = run(config(max_items=3))
    assert (first.committed, first.version, first.new, first.selected, first.deferred) == (True, 1, 3, 3, 2)
    assert set(outputs(client)) == {f"restored/a/{i:02d}.png" for i in (1, 2, 3)}  # restore's names
    assert sorted(committed_state(store)) == ["a/01.jpg", "a/02.jpg", "a/03.jpg"]
    before = outputs(client)

    put(client, "b/01.jpg", seed=11)
    put(client, "b/02.jpg", seed=12)
    put(client, "a/01.jpg", seed=101)  # changed
    client.delete_object(Bucket="inputs", Key="archive/a/02.jpg")
    second = run(config())
    processed = {"a/01.jpg", "a/04.jpg", "a/05.jpg", "b/01.jpg", "b/02.jpg"}  # two deferred, two new, one changed
    assert (second.new, second.changed, second.deleted, second.unchanged) == (4, 1, 1, 1)
    assert (second.selected, second.ok, second.reused, second.deferred) == (5, 5, 0, 0)
    rows = restore_rows(second.run_id)
    assert sorted(row["input_uri"] for row in rows) == sorted(f"{SOURCE}/{key}" for key in processed)
    assert {row["status"] for row in rows} == {"ok"}  # the changed one was redone, not skipped
    after = outputs(client)
    assert after["restored/a/01.png"]["ETag"] != before["restored/a/01.png"]["ETag"]
    assert after["restored/a/03.png"]["LastModified"] == before["restored/a/03.png"]["LastModified"]  # untouched
    assert "restored/a/02.png" in after  # a deleted object's output stays; the deletion is recorded
    changes = {row["key"]: row for row in parquet_rows(store.location(f"runs/{second.run_id}/changes.parquet"))}
    assert changes["a/02.jpg"]["action"] == DELETED and changes["a/01.jpg"]["action"] == CHANGED

    put(client, "c/01.jpg", seed=21)
    put(client, "b/01.jpg", seed=111)  # changed again
    client.delete_object(Bucket="inputs", Key="archive/a/03.jpg")
    third = run(config())
    assert (third.version, third.new, third.changed, third.deleted, third.selected) == (3, 1, 1, 1, 2)
    assert sorted(row["input_uri"] for row in restore_rows(third.run_id)) == [f"{SOURCE}/b/01.jpg",
                                                                              f"{SOURCE}/c/01.jpg"]
    state = committed_state(store)
    assert sorted(state) == ["a/01.jpg", "a/04.jpg", "a/05.jpg", "b/01.jpg", "b/02.jpg", "c/01.jpg"]
    listed = {k.removeprefix("archive/"): v for k, v in objects(client, "inputs", "archive/").items()}
    assert {k: (v["size"], v["etag"]) for k, v in state.items()} == \
           {k: (v["Size"], v["ETag"].strip('"')) for k, v in listed.items()}
    assert all(row["status"] == "ok" and row["output_uri"] in {f"s3://outputs/{k}" for k in outputs(client)}
               for row in state.values())
    chain = check_history_agrees(store)
    assert [record["run_id"] for record in chain] == [first.run_id, second.run_id, third.run_id]

    idle = run(config())  # nothing new: no restore run, no commit
    assert (idle.committed, idle.version, idle.unchanged) == (False, 3, 6)
    assert store.head()["run_id"] == third.run_id
    assert store.read_json("lease.json") is None  # every run released its lease


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_a_run_that_loses_its_lease_never_commits(tmp_path, ray_session):
    """Local folders this time. The lease is taken over (as after an expiry) just before the commit:
    the run must not commit; the taker's run then commits, reusing the finished outputs."""
    source, dest, state = tmp_path / "src", str(tmp_path / "dest"), str(tmp_path / "state")
    for index in range(3):
        (source / "p").mkdir(parents=True, exist_ok=True)
        (source / "p" / f"{index}.png").write_bytes(photo(40, 32, seed=index, fmt="PNG"))
    store = state_store(state)
    local = dict(source=str(source), dest=dest, state=state)

    def take_over(checkpoint):
        if checkpoint == "before-commit":
            store.write_json("lease.json", {"owner": "host-b:9:taker", "token": "t", "ttl_s": 60})

    with pytest.raises(LeaseLost, match="host-b:9:taker"):
        run(config(**local), hook=take_over)
    assert store.head() is None
    assert len(list((tmp_path / "dest" / "p").glob("*.png"))) == 3  # outputs written, not committed

    storage.delete_if_exists(store.location("lease.json"))  # the taker finished without committing
    retry = run(config(**local))
    assert (retry.committed, retry.selected, retry.reused, retry.ok) == (True, 3, 3, 3)
    assert {row["status"] for row in restore_rows(retry.run_id, dest)} == {"skipped"}  # nothing redone
    check_history_agrees(store, dest)

    # A new model leaves finished objects alone unless asked to redo them.
    other = "preset:tiny_denoise@1"  # other weights, so another model version
    assert run(config(**local, model=other)).committed is False
    redo = run(config(**local, model=other, reprocess_on_model_change=True))
    assert (redo.committed, redo.reprocess, redo.ok, redo.reused) == (True, 3, 3, 0)
    assert {row["status"] for row in restore_rows(redo.run_id, dest)} == {"ok"}
    versions = {row["model_version"] for row in committed_state(store).values()}
    assert len(versions) == 1 and versions != {row["model_version"] for row in restore_rows(retry.run_id, dest)}
    check_history_agrees(store, dest)


# ---------------------------------------------------------------- CLI processes: crashes and overlap

def cli_env(s3_buckets, ray_tmp: str) -> dict[str, str]:
    env = {**os.environ, **s3_buckets.env, **SLOW_MACHINE_RAY_ENV, "RAY_TMPDIR": ray_tmp,
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    return env


def stop_every_process_of(ray_tmp: str) -> None:
    def remaining():
        return sorted(set(processes_mentioning(ray_tmp)) | set(processes_with_env("RAY_TMPDIR", ray_tmp)))

    kill_processes(remaining(), grace_s=0)
    wait_for(lambda: not remaining(), timeout_s=30, what="the killed run's processes to exit")


def archive_command(tmp_path, ttl_s: float) -> list[str]:
    settings = tmp_path / "archive.yaml"
    settings.write_text(f"source: {SOURCE}\ndest: {DEST}\nstate: {STATE}\nmodel: {MODEL}\n"
                        f"lease_ttl_s: {ttl_s}\nrestore:\n  batch_size: 2\n  rows_per_block: 2\n")
    return [UGPNET, "archive", "--config", str(settings)]


LEASE_TTL_S = 10  # short, so a dead run's lease expires soon; long enough for renewals on 2 busy cores


def wait_for_lease_expiry(store: StateStore) -> None:
    """A dead run's lease blocks others until it expires (the behaviour under test): wait it out."""
    lease, snapshot = Lease(store, "test:0:probe", ttl_s=1).read()
    assert lease is not None  # the dead run could not release it
    expired_at = time.monotonic() + lease["ttl_s"] + STORE_CLOCK_SLACK_S + 1 - snapshot.age_s  # by the store's clock
    wait_for(lambda: time.monotonic() > expired_at, timeout_s=60, what="the dead run's lease to expire")


def one_ok_row_per_input(run_ids: list[str]) -> None:
    ok = [row["input_uri"] for run_id in run_ids for row in restore_rows(run_id) if row["status"] == "ok"]
    assert len(ok) == len(set(ok)), "an object was processed twice"


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_crashes_while_processing_and_before_commit_lose_and_repeat_nothing(s3_buckets, ray_session, tmp_path,
                                                                           request, capsys):
    """Run A is SIGKILLed while processing (a second run started meanwhile is refused by the lease);
    run B takes over A's expired lease, finishes the rest and dies after writing its outputs and state,
    before the commit; run C commits. Each a separate process, as a scheduler starts them."""
    client = s3_buckets.client()
    store = state_store()
    count = 8
    for index in range(count):
        put(client, f"k/{index:02d}.jpg", seed=index, size=(96, 80))
    ray_tmp = short_temp_dir("uga-")
    request.addfinalizer(lambda: (stop_every_process_of(ray_tmp), shutil.rmtree(ray_tmp, ignore_errors=True)))
    command, env = archive_command(tmp_path, ttl_s=LEASE_TTL_S), cli_env(s3_buckets, ray_tmp)
    log = tmp_path / "a.out"
    with open(log, "wb") as out:
        run_a = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def progressed():
        if run_a.poll() is not None:
            raise AssertionError(f"run A ended before it was killed: {log.read_text()[-3000:]}")
        return len(outputs(client)) >= 2

    wait_for(progressed, timeout_s=400, interval_s=0.1, what="run A's first outputs")
    capsys.readouterr()
    overlap = cli.main(["archive", "--source", SOURCE, "--dest", DEST, "--state", STATE, "--model", MODEL])
    assert overlap == EXIT_LEASE_HELD  # refused at once: nothing listed, processed or committed
    assert "another archive run is active" in capsys.readouterr().err
    os.killpg(run_a.pid, signal.SIGKILL)
    run_a.wait(timeout=30)
    stop_every_process_of(ray_tmp)
    finished_by_a = objects(client, "outputs", "restored/_ugpnet/done/")  # output and marker both written
    assert 2 <= len(outputs(client)) < count and store.head() is None

    wait_for_lease_expiry(store)
    run_b = subprocess.run(command, env={**env, CRASH_ENV: "before-commit"}, capture_output=True, text=True,
                           timeout=480)
    assert run_b.returncode == CRASH_EXIT, run_b.stdout[-2000:] + run_b.stderr[-3000:]
    assert "took over an expired lease" in run_b.stderr
    assert store.head() is None  # nothing committed, though every output and a state file were written
    assert len(outputs(client)) == count and len(storage.list_files(store.location("versions"))) == 1
    runs = sorted({key.split("/")[3] for key in objects(client, "outputs", "restored/_ugpnet/manifest/")})
    assert len(runs) <= 2  # A's manifest may be partial or absent; B's is complete
    b_rows = restore_rows(runs[-1])  # run ids start with their UTC start time: B's sorts last
    assert len(b_rows) == count
    assert sum(row["status"] == "skipped" for row in b_rows) == len(finished_by_a)  # A's work reused by B

    wait_for_lease_expiry(store)
    run_c = run(config())
    assert (run_c.committed, run_c.version, run_c.selected, run_c.ok, run_c.errors) == (True, 1, count, count, 0)
    assert run_c.reused == count  # B finished everything; C redoes nothing
    assert not storage.list_files(store.location("pending"))  # the dead runs' attempts, forgotten at commit
    state = committed_state(store)
    assert sorted(state) == [f"k/{i:02d}.jpg" for i in range(count)]
    assert {row["status"] for row in state.values()} == {"ok"} and len(outputs(client)) == count
    runs = sorted({key.split("/")[3] for key in objects(client, "outputs", "restored/_ugpnet/manifest/")})
    one_ok_row_per_input(runs)  # across A, B and C no object was processed twice
    check_history_agrees(store)
