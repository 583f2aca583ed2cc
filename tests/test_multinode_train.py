"""`ugpnet train` on a two-node cluster whose nodes share nothing but S3 and the MLflow server
(tests/multinode.py), submitted through the job server: 2 workers × 3 stages with the driver killed in
stage 2 and the run resumed, registering `candidate`; restore with that candidate; a SIGKILLed worker."""

import os
import signal
import uuid

import mlflow
import pytest
from multinode import json_object, keys, succeeded, ugpnet
from restore_samples import photo
from services import cmdline, wait_for
from train_helpers import photo_folder

pytestmark = [pytest.mark.integration, pytest.mark.slow]
pytest_plugins = ["multinode"]

TRAIN_FLAGS = ["--preset", "tiny_denoise", "--data", "s3://mn-train/photos", "--storage", "s3://mn-runs/runs",
               "--batch-size", "2", "--cpus-per-worker", "0.75",
               *[item for stage in ("restoration", "synthesis", "fusion")
                 for key in ("validation_interval", "checkpoint_interval")
                 for item in ("--set", f"hyperparams.{stage}.{key}=2")]]


@pytest.fixture(scope="module")
def s3(multinode_cluster):
    client = multinode_cluster.s3.client()
    for bucket in ("mn-in", "mn-out", "mn-train", "mn-runs"):
        client.create_bucket(Bucket=bucket)
    return client



@pytest.fixture(scope="module")
def training_data(s3, tmp_path_factory):
    for path in photo_folder(tmp_path_factory.mktemp("photos")).iterdir():
        s3.put_object(Bucket="mn-train", Key=f"photos/{path.name}", Body=path.read_bytes())


def job_drivers(run_name: str) -> list[int]:
    """The job's driver process (on the head: this machine's PID namespace), found by its run name."""
    return [pid for pid in os.listdir("/proc") if pid.isdigit() and
            any(part == run_name for part in cmdline(int(pid))) and "train" in cmdline(int(pid))]


def checkpoints(s3, run_name: str, stage: str) -> list[str]:
    parts = [key.split("/") for key in keys(s3, "mn-runs", f"runs/{run_name}-{stage}/")]
    return sorted({p[2] for p in parts if len(p) > 3 and p[2].startswith("checkpoint_")})


def while_job_runs(cluster, submission_id: str, condition):
    """`condition` for wait_for that fails at once, with the job's logs, when the job has ended."""
    def check():
        if cluster.jobs().get_job_status(submission_id).is_terminal():
            raise AssertionError(f"job ended before the awaited state:\n{cluster.jobs().get_job_logs(submission_id)}")
        return condition()
    return check


@pytest.fixture(scope="module")
def trained(multinode_cluster, s3, training_data):
    """`ugpnet train` with 2 workers × 3 stages: the driver is SIGKILLed in stage 2, the same run name
    is submitted again and finishes, registering `candidate`."""
    run_name, model_name = f"mn-{uuid.uuid4().hex[:6]}", "ugpnet-multinode"
    entrypoint = ugpnet("train", *TRAIN_FLAGS, "--run-name", run_name, "--workers", "2", "--steps", "2,8,2",
                        "--register", model_name)
    first = multinode_cluster.submit(entrypoint)
    wait_for(while_job_runs(multinode_cluster, first, lambda: len(checkpoints(s3, run_name, "synthesis")) >= 2),
             timeout_s=900, interval_s=2.0, what="two stage-2 checkpoints on S3")
    drivers = [int(pid) for pid in job_drivers(run_name)]
    assert drivers, "the training job's driver process was not found"
    for pid in drivers:
        os.kill(pid, signal.SIGKILL)
    status, first_logs = multinode_cluster.wait(first, timeout_s=300)
    assert status == "FAILED", first_logs[-3000:]
    assert "synthesis/ugpnet.json" not in " ".join(keys(s3, "mn-runs", f"runs/{run_name}/bundles/"))
    logs = succeeded(multinode_cluster, entrypoint, timeout_s=1200)
    return {"run_name": run_name, "model_name": model_name, "logs": logs, "first_logs": first_logs}


@pytest.mark.timeout(2400)
def test_train_on_two_nodes_resumes_after_a_killed_driver_and_registers(multinode_cluster, s3, trained):
    run_name = trained["run_name"]
    assert "stage restoration already finished, skipping" in trained["logs"], trained["logs"][-3000:]
    bundles = keys(s3, "mn-runs", f"runs/{run_name}/bundles/")
    for stage in ("initial", "restoration", "synthesis", "fusion"):
        assert f"runs/{run_name}/bundles/{stage}/ugpnet.json" in bundles, bundles
    assert f"runs/{run_name}/bundles/synthesis/discriminator.safetensors" in bundles

    client = mlflow.MlflowClient(tracking_uri=multinode_cluster.tracking_uri)
    experiment = client.get_experiment_by_name("ugpnet-train")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`ugpnet.run_name` = '{run_name}'")
    stages = {r.data.tags["ugpnet.stage"]: r for r in runs if "ugpnet.stage" in r.data.tags}
    assert sorted(stages) == ["fusion", "restoration", "synthesis"] and len(runs) == 4  # one parent, continued
    steps = [m.step for m in client.get_metric_history(stages["synthesis"].info.run_id, "train/loss")]
    assert steps[-1] == 8 and len(steps) == len(set(steps)), steps  # resumed from a checkpoint, not step 0
    candidate = client.get_model_version_by_alias(trained["model_name"], "candidate")
    assert candidate.run_id in {r.info.run_id for r in runs}


@pytest.mark.timeout(900)
def test_restore_with_the_registered_candidate(multinode_cluster, s3, trained):
    s3.put_object(Bucket="mn-in", Key="candidate/a.jpg", Body=photo(64, 48, seed=30))
    logs = succeeded(multinode_cluster, ugpnet(
        "restore", "--input", "s3://mn-in/candidate/", "--output", "s3://mn-out/candidate/", "--model",
        f"models:/{trained['model_name']}@candidate", "--run-id", "candidate"))
    assert "restore candidate: 1 ok, 0 error" in logs, logs[-3000:]
    summary = json_object(s3, "mn-out", "candidate/_ugpnet/runs/candidate.json")
    assert summary["model"]["registry_version"].startswith(trained["model_name"] + "/")


@pytest.mark.timeout(1500)
def test_a_killed_training_worker_is_replaced_and_the_stage_completes(multinode_cluster, s3, training_data):
    run_name = f"mn-failover-{uuid.uuid4().hex[:6]}"
    job = multinode_cluster.submit(ugpnet("train", *TRAIN_FLAGS, "--run-name", run_name, "--workers", "2",
                                          "--stage", "restoration", "--steps", "12", "--no-register"))
    wait_for(while_job_runs(multinode_cluster, job, lambda: checkpoints(s3, run_name, "restoration")),
             timeout_s=900, interval_s=2.0, what="a first checkpoint")
    workers = wait_for(lambda: [pid for pid in multinode_cluster.worker_node_processes()
                                if any("RayTrainWorker" in part for part in cmdline(pid))],
                       timeout_s=60, what="a RayTrainWorker on the worker node")
    os.kill(workers[0], signal.SIGKILL)
    status, logs = multinode_cluster.wait(job, timeout_s=1200)
    assert status == "SUCCEEDED", logs[-5000:]
    assert "RETRY" in logs, logs[-5000:]
    assert f"runs/{run_name}/bundles/restoration/ugpnet.json" in keys(s3, "mn-runs", f"runs/{run_name}/bundles/")
