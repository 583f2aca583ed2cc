"""Two `ugpnet archive` processes released from one barrier at the same instant, 20 rounds, on the real
moto S3 server (issue 10, acceptance): exactly one commits each round, never both, nothing is processed
twice.

Cheap rounds: both processes connect to one shared Ray head (RAY_ADDRESS) instead of each starting Ray;
every fourth round brings three new objects to restore, the others delete one object (a commit that
needs no restore), so all 20 rounds race for the lease and the commit but only 5 run the model.
The barrier is a FIFO both processes open right before taking the lease (UGPNET_ARCHIVE_BARRIER): the
test waits until both hold it open, then closes its writing end, which wakes both at once."""

import os
import subprocess

import pytest
from restore_samples import photo
from services import CREDENTIALS, VENV_BIN, RayHead, wait_for
from test_archive import DEST, MODEL, SOURCE, STATE, check_history_agrees, objects, outputs, restore_rows, state_store

from pipelines.archive.run import BARRIER_ENV, EXIT_LEASE_HELD

pytest_plugins = ["services"]

ROUNDS = 20
PROCESS_EVERY = 4   # rounds 0, 4, 8, …: three new objects; the others: one deletion
NEW_PER_ROUND = 3


@pytest.fixture(scope="module")
def ray_head(moto_s3):
    """One Ray head for every archive process; its workers get the S3 endpoint and test keys."""
    with RayHead(env={"AWS_ENDPOINT_URL": moto_s3.endpoint, **CREDENTIALS}) as head:
        yield head


def holds_open(pid: int, path: str) -> bool:
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == path for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:  # exited, or an fd closed while listing
        return False


def start_pair(command: list[str], env: dict, fifo: str) -> list[subprocess.Popen]:
    """Two archive runs that start up (imports, config, model) and then wait at the barrier."""
    os.mkfifo(fifo)
    return [subprocess.Popen(command, env={**env, BARRIER_ENV: fifo}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True) for _ in range(2)]


def release_pair(runs: list[subprocess.Popen], fifo: str) -> list[subprocess.CompletedProcess]:
    """Wait until both runs hold the barrier open, then release both at once; their results."""
    try:
        def writer_opened():
            for run in runs:
                if run.poll() is not None:
                    raise AssertionError(f"an archive run ended before the barrier: {run.communicate()}")
            try:
                return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO until a reader has it open
            except OSError:
                return None

        writer = wait_for(writer_opened, timeout_s=240, interval_s=0.05, what="a run to reach the barrier")
        try:
            wait_for(lambda: all(holds_open(run.pid, fifo) for run in runs), timeout_s=240, interval_s=0.05,
                     what="both runs to wait at the barrier")
        finally:
            os.close(writer)  # both readers see end-of-file now: the release
        return [subprocess.CompletedProcess(run.args, run.wait(timeout=400), *run.communicate())
                for run in runs]
    finally:
        stop(runs)
        os.remove(fifo)


def stop(runs: list[subprocess.Popen]) -> None:
    for run in runs:
        if run.poll() is None:
            os.killpg(run.pid, 9)
            run.wait()


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_runs_released_together_commit_once_per_round(s3_buckets, ray_head, tmp_path):
    client = s3_buckets.client()
    store = state_store()
    settings = tmp_path / "archive.yaml"
    settings.write_text(f"source: {SOURCE}\ndest: {DEST}\nstate: {STATE}\nmodel: {MODEL}\nlease_ttl_s: 30\n"
                        f"keep_versions: 3\nrestore:\n  batch_size: 2\n  rows_per_block: 2\n")
    command = [str(VENV_BIN / "ugpnet"), "archive", "--config", str(settings)]
    env = {**os.environ, **s3_buckets.env, "RAY_ADDRESS": f"127.0.0.1:{ray_head.gcs_port}",
           "RAY_AUTH_MODE": "disabled", "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    live, added, winners, contended = [], 0, [], 0
    # Round k+1's pair starts up while round k runs and waits at its own barrier; it reads nothing of
    # the archive before its release, which comes after round k has finished and the source changed.
    pairs = {0: start_pair(command, env, str(tmp_path / "barrier-0"))}
    try:
        for round_index in range(ROUNDS):
            if round_index % PROCESS_EVERY == 0:
                for _ in range(NEW_PER_ROUND):
                    key = f"r/{added:03d}.jpg"
                    client.put_object(Bucket="inputs", Key=f"archive/{key}", Body=photo(32, 24, seed=added))
                    live.append(key)
                    added += 1
            else:
                client.delete_object(Bucket="inputs", Key=f"archive/{live.pop(0)}")
            if round_index + 1 < ROUNDS:
                pairs[round_index + 1] = start_pair(command, env, str(tmp_path / f"barrier-{round_index + 1}"))
            results = release_pair(pairs.pop(round_index), str(tmp_path / f"barrier-{round_index}"))
            detail = "\n".join(f"exit {r.returncode}: {r.stdout[-800:]}{r.stderr[-1500:]}" for r in results)
            committed = [r for r in results if r.returncode == 0 and "committed version" in r.stdout]
            assert len(committed) == 1, f"round {round_index}: {len(committed)} runs committed\n{detail}"
            other = next(r for r in results if r is not committed[0])
            # The other run was refused the lease, or (when the machine started it late) came after the
            # winner had finished and found nothing left to do; either way it committed nothing.
            refused = other.returncode == EXIT_LEASE_HELD and "another archive run is active" in other.stderr
            assert refused or (other.returncode == 0 and "nothing new or changed" in other.stdout), detail
            contended += refused
            head = store.head()
            assert head["version"] == round_index + 1, f"round {round_index}: {head['version']} commits"
            winners.append(head["run_id"])
    finally:
        for runs in pairs.values():
            stop(runs)

    print(f"{contended} of {ROUNDS} rounds: the second run was refused the lease")
    chain = check_history_agrees(store)  # one commit per round, each backed by its run's restore rows
    assert [record["run_id"] for record in chain] == winners and len(set(winners)) == ROUNDS
    ok = [row["input_uri"] for run_id in winners for row in restore_rows(run_id) if row["status"] == "ok"]
    assert sorted(ok) == sorted(f"{SOURCE}/r/{index:03d}.jpg" for index in range(added))  # each once
    manifests = {key.split("/")[3] for key in objects(client, "outputs", "restored/_ugpnet/manifest/")}
    assert manifests <= set(winners)  # no losing run restored anything
    assert len(outputs(client)) == added
    assert store.read_json("lease.json") is None
