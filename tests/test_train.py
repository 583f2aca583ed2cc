"""`ugpnet train` end to end: real Ray Train workers, a real MLflow server (sqlite store, artifacts
proxied to an S3-compatible server on 127.0.0.1), S3 data and checkpoints, resumption after a killed
driver, recovery from a killed worker, stage isolation, and a real learning signal."""

import json
import os
import signal
import tempfile
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow_service import mlflow_server
from safetensors.torch import load_file
from services import wait_for
from train_helpers import (
    kill_session,
    photo_folder,
    process_title,
    session_pids,
    start_cli,
    tail,
    while_running,
)

from pipelines.cli import main as cli_main

pytestmark = [pytest.mark.integration, pytest.mark.slow]
pytest_plugins = ["services"]

FAST_STAGES = ["--set", "hyperparams.restoration.validation_interval=2",
               "--set", "hyperparams.restoration.checkpoint_interval=2",
               "--set", "hyperparams.synthesis.validation_interval=2",
               "--set", "hyperparams.synthesis.checkpoint_interval=2",
               "--set", "hyperparams.fusion.validation_interval=2",
               "--set", "hyperparams.fusion.checkpoint_interval=2"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return photo_folder(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def tracking(tmp_path_factory, moto_s3):
    moto_s3.client().create_bucket(Bucket="mlflow-artifacts")
    env = {**moto_s3.env, "MLFLOW_S3_ENDPOINT_URL": moto_s3.endpoint}
    with mlflow_server(tmp_path_factory.mktemp("mlflow"), "s3://mlflow-artifacts/train", env) as uri:
        yield uri


def upload_folder(moto_s3, folder, bucket, prefix):
    client = moto_s3.client()
    client.create_bucket(Bucket=bucket)
    for path in folder.iterdir():
        client.put_object(Bucket=bucket, Key=f"{prefix}/{path.name}", Body=path.read_bytes())


def stage_bundle(moto_s3, bucket, key, local):
    """Download a stage bundle from S3 and load it."""
    client = moto_s3.client()
    local.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "ugpnet.json"):
        client.download_file(bucket, f"{key}/{name}", str(local / name))
    return load_file(str(local / "model.safetensors"))


@pytest.mark.timeout(1500)
def test_two_worker_training_tracks_registers_and_restores(photos, tracking, moto_s3, tmp_path):
    # 2 × 0.75 CPU leaves 0.5 of a 2-CPU machine to the data pipeline: a shuffle asking for a whole
    # CPU (Ray Data's default) would never run there and the stage would wait forever.
    upload_folder(moto_s3, photos, "train-data", "photos")
    moto_s3.client().create_bucket(Bucket="train-runs")
    env = {**moto_s3.env, "MLFLOW_TRACKING_URI": tracking, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    log = tmp_path / "train.log"
    bundle_downloads = set(Path(tempfile.gettempdir()).glob("ugpnet-bundle-*"))  # the driver's, from S3
    process = start_cli(["train", "--preset", "tiny_denoise", "--data", "s3://train-data/photos",
                         "--run-name", "e2e", "--storage", "s3://train-runs/runs", "--workers", "2",
                         "--cpus-per-worker", "0.75", "--steps", "4,4,4", "--batch-size", "2",
                         "--register", "ugpnet-e2e", *FAST_STAGES], env, log)
    assert process.wait(timeout=1400) == 0, tail(log)
    assert set(Path(tempfile.gettempdir()).glob("ugpnet-bundle-*")) == bundle_downloads  # each removed after use
    output = log.read_text()
    assert "skipped 1 that could not be decoded" in output
    assert moto_s3.env["AWS_SECRET_ACCESS_KEY"] not in output

    client = mlflow.MlflowClient(tracking_uri=tracking)
    experiment = client.get_experiment_by_name("ugpnet-train")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`ugpnet.run_name` = 'e2e'")
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.data.tags["ugpnet.stage"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert len(parent) == 1 and set(children) == {"restoration", "synthesis", "fusion"}
    assert parent[0].data.params["preset"] == "tiny_denoise"
    assert parent[0].data.metrics["data/skipped_images"] == 1
    assert all(v != moto_s3.env["AWS_SECRET_ACCESS_KEY"] for v in parent[0].data.params.values())
    for stage, run in children.items():
        assert run.data.tags["mlflow.parentRunId"] == parent[0].info.run_id
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert [m.step for m in history][-1] == 4, stage
        assert "val/fused_psnr" in run.data.metrics and "val/input_psnr" in run.data.metrics
        images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
        assert images, f"no sample grid logged for {stage}"
    assert children["synthesis"].data.metrics.get("train/d_loss") is not None

    candidate = client.get_model_version_by_alias("ugpnet-e2e", "candidate")
    assert candidate.run_id == parent[0].info.run_id

    # Each stage trained only its module.
    states = {stage: stage_bundle(moto_s3, "train-runs", f"runs/e2e/bundles/{stage}", tmp_path / stage)
              for stage in ("initial", "restoration", "synthesis", "fusion")}
    modules = {"restoration": "resmodule.", "synthesis": "synmodule.", "fusion": "fusmodule."}
    previous = "initial"
    for stage, prefix in modules.items():
        before, after = states[previous], states[stage]
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert changed and all(k.startswith(prefix) for k in changed), (stage, sorted(changed)[:5])
        previous = stage

    # The registered candidate restores images through the restore pipeline.
    out = tmp_path / "restored"
    restore_log = tmp_path / "restore.log"
    restore = start_cli(["restore", "--input", str(photos), "--output", str(out), "--model",
                         "models:/ugpnet-e2e@candidate", "--actors", "1"], env, restore_log)
    assert restore.wait(timeout=600) == 0, tail(restore_log)
    restored = sorted(p.name for p in out.glob("*.png"))
    assert "grace_hopper.png" in restored and "flower.png" in restored


@pytest.mark.timeout(1500)
def test_killed_driver_resumes_stage_two_from_its_checkpoint(photos, tmp_path):
    storage, tracking_db = tmp_path / "runs", tmp_path / "mlflow.db"
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tracking_db}", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    args = ["train", "--preset", "tiny_denoise", "--data", str(photos), "--run-name", "resume", "--storage",
            str(storage), "--workers", "1", "--steps", "2,12,2", "--batch-size", "2", "--no-register",
            *FAST_STAGES]
    first_log = tmp_path / "first.log"
    first = start_cli(args, env, first_log)
    checkpoints = storage / "resume-synthesis"
    wait_for(while_running(first, first_log, lambda: len(list(checkpoints.glob("checkpoint_*"))) >= 2),
             timeout_s=900, what="two stage-2 checkpoints")
    kill_session(first)
    assert not (storage / "resume" / "bundles" / "synthesis" / "ugpnet.json").exists()

    second_log = tmp_path / "second.log"
    second = start_cli(args, env, second_log)
    assert second.wait(timeout=1200) == 0, tail(second_log)
    assert "stage restoration already finished, skipping" in second_log.read_text()

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tracking_db}")
    experiment = client.get_experiment_by_name("ugpnet-train")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`ugpnet.stage` = 'synthesis'")
    assert len(runs) == 1, "the re-run continues the same stage run"
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")]
    assert steps[-1] == 12
    assert len(steps) == len(set(steps)), f"steps were repeated (restart from 0?): {steps}"
    restoration = client.search_runs([experiment.experiment_id],
                                     filter_string="tags.`ugpnet.stage` = 'restoration'")
    assert len(restoration) == 1
    assert [m.step for m in client.get_metric_history(restoration[0].info.run_id, "train/loss")] == [2]


@pytest.mark.timeout(1200)
def test_killed_worker_is_replaced_and_the_stage_completes(photos, tmp_path):
    storage = tmp_path / "runs"
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    log = tmp_path / "train.log"
    process = start_cli(["train", "--preset", "tiny_denoise", "--data", str(photos), "--run-name", "failover",
                         "--storage", str(storage), "--workers", "2", "--cpus-per-worker", "0.5",
                         "--stage", "restoration", "--steps", "16", "--batch-size", "2", "--no-register",
                         *FAST_STAGES], env, log)
    wait_for(while_running(process, log, lambda: list((storage / "failover-restoration").glob("checkpoint_*"))),
             timeout_s=900, what="a first checkpoint")
    sid = os.getsid(process.pid)
    workers = wait_for(lambda: [p for p in session_pids(sid) if "RayTrainWorker" in process_title(p)],
                       timeout_s=60, what="a RayTrainWorker process")
    os.kill(workers[0], signal.SIGKILL)
    assert process.wait(timeout=1000) == 0, tail(log)
    output = log.read_text()
    assert "FailurePolicy" in output and "RETRY" in output
    assert (storage / "failover" / "bundles" / "restoration" / "ugpnet.json").exists()


@pytest.mark.timeout(1200)
def test_short_denoise_training_beats_the_noisy_input(photos, tmp_path, capsys):
    """A real learning signal: 300 stage-1 steps at σ = 50 (the restoration module has no input skip,
    so it must learn the image from scratch; 10× the official lr, decayed for the last 100 steps so the
    end point is not one noisy step of a high-lr run). Validation: five crops of the held-out image."""
    code = cli_main(["train", "--preset", "tiny_denoise", "--data", str(photos), "--run-name", "learn",
                     "--storage", str(tmp_path / "runs"), "--workers", "1", "--stage", "restoration",
                     "--steps", "300", "--batch-size", "4", "--no-register", "--degradation", "denoise_sigma50",
                     "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                     "--set", "hyperparams.restoration.lr=0.001",
                     "--set", "hyperparams.restoration.lr_milestones=[200]",
                     "--set", "hyperparams.restoration.validation_interval=300",
                     "--set", "hyperparams.restoration.checkpoint_interval=300"])
    assert code == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("ugpnet train: done")][-1]
    validation = json.loads(line.split("validation ", 1)[1])
    gain = validation["val/restored_psnr"] - validation["val/input_psnr"]
    assert gain >= 3.0, validation


def test_bad_config_fails_before_any_work(photos, tmp_path, capsys):
    base = ["train", "--data", str(photos), "--run-name", "bad", "--storage", str(tmp_path / "runs"), "--dry-run"]
    cases = [
        (["--preset", "nope"], "preset: unknown preset 'nope'"),
        (["--preset", "tiny_denoise", "--data", str(tmp_path / "missing")], "data:"),
        (["--preset", "tiny_denoise", "--steps", "0,1,1"], "restoration.steps must be > 0"),
        (["--preset", "tiny_denoise", "--set", "hyperparams.synthesis.perceptual_weight=10"],
         "synthesis.perceptual_weight = 10 (LPIPS) needs"),
        (["--preset", "tiny_denoise", "--set", "hyperparams.fusion.contextual_weight=0.05"], "vgg19"),
        (["--preset", "tiny_denoise", "--set", "hyperparams.fusion.nonsense=1"], "unknown key 'nonsense'"),
    ]
    for extra, message in cases:
        assert cli_main(base + extra) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert not (tmp_path / "runs").exists(), "nothing may be written before the config is valid"
