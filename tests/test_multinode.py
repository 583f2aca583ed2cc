"""The multi-node fixture catches the "driver-local path handed to remote code" bug class, and the
guard (pipelines.common.cluster_paths) turns it into a clear error before any work. All through the job server."""

import shlex
import tempfile
from pathlib import Path

import pytest
from restore_samples import photo

pytestmark = [pytest.mark.integration, pytest.mark.slow]
pytest_plugins = ["multinode"]

# Run as a job: the job's driver runs on the head (which shares this machine's /tmp); its tasks run on
# the worker node (the head has no CPUs), whose /tmp is a private tmpfs.
LOCAL_BUNDLE_JOB = """
import tempfile, ray, ugpnet
from ugpnet.checkpoint import load_bundle
from pipelines.common.cluster_paths import LocalPath, LocalPathError, check_local_paths
ray.init()
bundle = tempfile.mkdtemp(prefix="ugpnet-bundle-")
ugpnet.save(ugpnet.build("tiny_denoise"), bundle)
load_bundle(bundle)
print("DRIVER loaded", flush=True)
try:
    ray.get(ray.remote(load_bundle).remote(bundle))
    print("REMOTE loaded", flush=True)
except Exception as err:
    print("REMOTE failed:", err, flush=True)
try:
    check_local_paths([LocalPath("start_bundle", bundle, writes=False)])
    print("GUARD passed", flush=True)
except LocalPathError as err:
    print("GUARD refused:", err, flush=True)
"""


@pytest.mark.timeout(900)
def test_a_driver_local_path_fails_remotely_and_the_guard_refuses_it(multinode_cluster):
    status, logs = multinode_cluster.run_job(f"python -c {shlex.quote(LOCAL_BUNDLE_JOB)}", timeout_s=300)
    assert status == "SUCCEEDED", logs[-4000:]
    assert "DRIVER loaded" in logs
    assert "REMOTE failed:" in logs and "ugpnet.json is missing" in logs, logs[-4000:]
    assert "GUARD refused: start_bundle:" in logs and "s3://" in logs, logs[-4000:]


@pytest.mark.timeout(900)
def test_restore_refuses_local_folders_on_the_cluster_naming_the_field(multinode_cluster):
    client = multinode_cluster.s3.client()
    client.create_bucket(Bucket="guard-out")
    inputs = Path(tempfile.mkdtemp(prefix="ugpnet-local-in-"))  # on the head's (this machine's) /tmp
    (inputs / "a.jpg").write_bytes(photo(64, 48))
    status, logs = multinode_cluster.run_job(
        f"ugpnet restore --input {inputs} --output s3://guard-out/x --model preset:tiny_denoise", timeout_s=300)
    assert status == "FAILED", logs[-4000:]
    assert "config field 'input'" in logs and "is a local path" in logs and "s3://" in logs, logs[-4000:]
    assert client.list_objects_v2(Bucket="guard-out")["KeyCount"] == 0  # refused before any work


@pytest.mark.timeout(900)
def test_train_and_archive_refuse_local_folders_on_the_cluster(multinode_cluster):
    client = multinode_cluster.s3.client()
    for bucket in ("guard-runs", "guard-src"):
        client.create_bucket(Bucket=bucket)
    client.put_object(Bucket="guard-src", Key="scans/a.jpg", Body=photo(64, 48))
    data = Path(tempfile.mkdtemp(prefix="ugpnet-local-data-"))
    for index in range(3):
        (data / f"{index}.jpg").write_bytes(photo(96, 96, seed=index))
    status, logs = multinode_cluster.run_job(
        f"ugpnet train --preset tiny_denoise --data {data} --storage s3://guard-runs/runs --run-name guard "
        "--workers 1 --steps 1,1,1 --no-register", timeout_s=300)
    assert status == "FAILED" and "data: " in logs and "is a local path" in logs, logs[-4000:]
    assert client.list_objects_v2(Bucket="guard-runs")["KeyCount"] == 0  # refused before any work

    dest = tempfile.mkdtemp(prefix="ugpnet-local-dest-")
    status, logs = multinode_cluster.run_job(
        f"ugpnet archive --source s3://guard-src/scans --dest {dest} --state s3://guard-runs/state "
        "--model preset:tiny_denoise", timeout_s=300)
    assert status == "FAILED" and "config field 'dest'" in logs and "wrong disk" in logs, logs[-4000:]
    assert client.list_objects_v2(Bucket="guard-runs")["KeyCount"] == 0  # no lease, no plan
