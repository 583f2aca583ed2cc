"""`ugpnet restore` as users run it: a CLI process (killed midway, then re-run) and a job submitted
with `ray job submit` to a Ray head started here. S3 is a moto server; every process these tests
start is stopped by its PID or by the unique temp dir in its command line."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from restore_samples import bad_samples, photo
from services import (
    SECRET_KEY,
    SLOW_MACHINE_RAY_ENV,
    VENV_BIN,
    RayHead,
    kill_processes,
    processes_mentioning,
    processes_with_env,
    short_temp_dir,
    wait_for,
)

import ugpnet
from pipelines.common import storage

pytestmark = [pytest.mark.integration, pytest.mark.slow]
pytest_plugins = ["services"]

UGPNET = str(VENV_BIN / "ugpnet")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return str(ugpnet.save(ugpnet.build("tiny_denoise", seed=0), tmp_path_factory.mktemp("bundle") / "tiny"))


def s3_keys(client, bucket: str, prefix: str = "") -> dict[str, dict]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {item["Key"]: item for page in pages for item in page.get("Contents", [])}


def outputs_in(client, prefix: str) -> dict[str, dict]:
    return {key: item for key, item in s3_keys(client, "outputs", prefix).items() if "/_ugpnet/" not in key}


def manifest(uri: str) -> list[dict]:
    location = storage.resolve(uri)
    return pads.dataset(location.path, filesystem=location.filesystem, format="parquet").to_table().to_pylist()


def stop_every_process_of(ray_tmp: str) -> None:
    """SIGKILL every process of a CLI run that used this RAY_TMPDIR, and wait until all are gone."""
    def remaining():
        return sorted(set(processes_mentioning(ray_tmp)) | set(processes_with_env("RAY_TMPDIR", ray_tmp)))

    kill_processes(remaining(), grace_s=0)
    wait_for(lambda: not remaining(), timeout_s=30, what="the killed run's processes to exit")


def secret_free(paths: list[Path]) -> list[str]:
    """Files (logs, records) that contain the test secret; must come back empty."""
    leaks = []
    for root in paths:
        for path in [root] if root.is_file() else root.rglob("*"):
            try:
                if path.is_file() and SECRET_KEY.encode() in path.read_bytes():
                    leaks.append(str(path))
            except OSError:
                continue
    return leaks


@pytest.mark.timeout(600)
def test_a_killed_run_run_again_does_only_the_rest(s3_buckets, bundle, tmp_path, request):
    client = s3_buckets.client()
    count = 16
    for index in range(count):
        client.put_object(Bucket="inputs", Key=f"many/d{index % 4}/img{index:02d}.jpg",
                          Body=photo(160, 160, seed=index))
    ray_tmp = short_temp_dir("ugk-")  # the CLI's own local Ray lives here: found (and cleaned) by this path
    request.addfinalizer(lambda: shutil.rmtree(ray_tmp, ignore_errors=True))
    env = {**os.environ, **s3_buckets.env, **SLOW_MACHINE_RAY_ENV, "RAY_TMPDIR": ray_tmp,
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    command = [UGPNET, "restore", "--input", "s3://inputs/many/", "--output", "s3://outputs/res/", "--model", bundle,
               "--fit", "tile", "--batch-size", "2", "--rows-per-block", "2"]
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        with open(logs / "first.out", "wb") as out:
            first = subprocess.Popen([*command, "--run-id", "first"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)

        def progressed():
            if first.poll() is not None:
                raise AssertionError(f"the first run ended before it was killed: {(logs / 'first.out').read_text()}")
            return len(outputs_in(client, "res/")) >= 3

        wait_for(progressed, timeout_s=400, interval_s=0.1, what="the first outputs")
        os.killpg(first.pid, signal.SIGKILL)  # the CLI and everything in its session, mid-run
        first.wait(timeout=30)
        stop_every_process_of(ray_tmp)  # Ray processes and workers that did not share its fate
        done_before = outputs_in(client, "res/")
        markers = {key for key in s3_keys(client, "outputs", "res/_ugpnet/done/")}
        assert 3 <= len(done_before) < count

        with open(logs / "second.out", "wb") as out:
            second = subprocess.run([*command, "--run-id", "second"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                    timeout=480)
        assert second.returncode == 0, (logs / "second.out").read_text()[-3000:]
    finally:
        stop_every_process_of(ray_tmp)

    inputs = [f"s3://inputs/many/d{index % 4}/img{index:02d}.jpg" for index in range(count)]
    rows = manifest("s3://outputs/res/_ugpnet/manifest/second")
    assert sorted(row["input_uri"] for row in rows) == sorted(inputs)  # one row per input
    skipped = {row["output_uri"].removeprefix("s3://outputs/") for row in rows if row["status"] == "skipped"}
    redone = [row for row in rows if row["status"] == "ok"]
    assert len(skipped) + len(redone) == count and skipped
    # Skipped = exactly the outputs the first run finished (output and done-marker both written).
    finished = {key for key in done_before if any(m.startswith(f"res/_ugpnet/done/{key[len('res/'):]}@")
                                                  for m in markers)}
    assert skipped == finished
    after = outputs_in(client, "res/")
    assert len(after) == count  # the union is complete, one output per input, no duplicates
    assert not [key for key in s3_keys(client, "outputs") if key.endswith("/")]  # no folder-marker objects
    for key in skipped:
        assert after[key]["ETag"] == done_before[key]["ETag"]
        assert after[key]["LastModified"] == done_before[key]["LastModified"]  # not rewritten
    expected = f"restore second: {len(redone)} ok, 0 error, {len(skipped)} skipped of {count} inputs"
    assert expected in (logs / "second.out").read_text()

    # Across both runs' manifests (the killed run may have written part of its own) each input has
    # exactly one ok row: an ok row is written only after its output and done-marker.
    first_rows = []
    if s3_keys(client, "outputs", "res/_ugpnet/manifest/first/"):
        first_rows = manifest("s3://outputs/res/_ugpnet/manifest/first")
    ok_inputs = [row["input_uri"] for row in first_rows + rows if row["status"] == "ok"]
    assert len(ok_inputs) == len(set(ok_inputs))

    # Credentials never reach records or logs: manifests, summaries, markers, CLI output, Ray's logs.
    records = tmp_path / "records"
    for key in s3_keys(client, "outputs", "res/_ugpnet/"):
        target = records / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(client.get_object(Bucket="outputs", Key=key)["Body"].read())
    assert secret_free([records, logs, Path(ray_tmp)]) == []


@pytest.mark.timeout(600)
def test_ray_job_submit_on_a_loopback_cluster(s3_buckets, bundle, tmp_path):
    client = s3_buckets.client()
    for index in range(6):
        client.put_object(Bucket="inputs", Key=f"job/a/{index}.jpg", Body=photo(80, 64, seed=index))
    client.put_object(Bucket="inputs", Key="job/broken.png", Body=bad_samples()[0].data)
    # Credentials live in the cluster's environment (as on a real cluster); the job adds only the
    # endpoint, which is not a secret.
    credentials = {k: v for k, v in s3_buckets.env.items() if k != "AWS_ENDPOINT_URL"}
    # The job's working dir carries its config file; flags override the file.
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "restore.yaml").write_text(f"input: s3://inputs/job/\noutput: s3://outputs/job/\nmodel: {bundle}\n"
                                          f"batch_size: 2\nfit: tile\n")
    with RayHead(env=credentials) as head:
        submission = f"restore-{int(time.time())}"
        submit = subprocess.run(
            [str(VENV_BIN / "ray"), "job", "submit", "--address", head.dashboard_url, "--submission-id", submission,
             "--no-wait", "--working-dir", str(job_dir),
             "--runtime-env-json", f'{{"env_vars": {{"AWS_ENDPOINT_URL": "{s3_buckets.endpoint}"}}}}', "--",
             "ugpnet", "restore", "--config", "restore.yaml", "--batch-size", "4", "--run-id", "job"],
            env=head.env, capture_output=True, text=True, timeout=180)
        assert submit.returncode == 0, submit.stdout + submit.stderr

        from ray.job_submission import JobStatus, JobSubmissionClient

        jobs = JobSubmissionClient(head.dashboard_url)
        terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
        status = wait_for(lambda: (s := jobs.get_job_status(submission)) in terminal and s, timeout_s=480,
                          interval_s=1.0, what="the job to finish")
        job_logs = jobs.get_job_logs(submission)
        assert status == JobStatus.SUCCEEDED, job_logs[-4000:]
        assert "restore job: 6 ok, 1 error, 0 skipped of 7 inputs" in job_logs
        assert SECRET_KEY not in job_logs
        session_logs = Path(head.temp_dir)
        assert secret_free([session_logs]) == []
    assert processes_mentioning(head.temp_dir) == []  # only our cluster was stopped, and all of it

    rows = {row["input_uri"]: row for row in manifest("s3://outputs/job/_ugpnet/manifest/job")}
    assert len(rows) == 7
    for index in range(6):
        row = rows[f"s3://inputs/job/a/{index}.jpg"]
        assert row["status"] == "ok" and row["output_uri"] == f"s3://outputs/job/a/{index}.png"
    assert rows["s3://inputs/job/broken.png"]["status"] == "error"
    assert set(outputs_in(client, "job/")) == {f"job/a/{index}.png" for index in range(6)}
    summary = json.loads(client.get_object(Bucket="outputs", Key="job/_ugpnet/runs/job.json")["Body"].read())
    assert (summary["config"]["fit"], summary["config"]["batch_size"]) == ("tile", 4)  # file, then flag
