"""`ugpnet evaluate --model models:/NAME/VERSION` logs an MLflow run linked to that version's logged
model, and `ugpnet models promote --require` gates on those evaluation metrics (issue 14), against a
real tracking server (sqlite store, artifacts on local disk behind the server) and the module's Ray."""

import json
import re

import mlflow
import pyarrow.parquet as pq
import pytest
from evaluate_samples import CROP, write_photos
from mlflow_service import mlflow_server

import ugpnet
from pipelines.cli import main as cli_main

pytest_plugins = ["services"]

NAME = "ugpnet-evaluated-denoise"
# Recorded at "training" under the evaluation's own name, far above anything the tiny random model
# reaches: a gate that passed on it once an evaluation exists would show that promote read the wrong run.
# (Training itself records validation means as val_<output>_psnr.)
TRAINING_PSNR_FUSED = 99.0


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as patch, mlflow_server(workdir, str(workdir / "artifacts"), {}) as uri:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("UGPNET_CACHE", str(tmp_path_factory.mktemp("cache")))
        mlflow.set_tracking_uri(uri)
        yield uri


@pytest.fixture(scope="module")
def registered_version(tracking, tmp_path_factory):
    """A tiny bundle registered the cheap way (register-bundle), its config carrying training metrics."""
    bundle = tmp_path_factory.mktemp("bundle") / "tiny"
    ugpnet.save(ugpnet.build("tiny_denoise", seed=4), bundle)
    config = json.loads((bundle / "ugpnet.json").read_text())
    config["metrics"] = {"psnr_fused": TRAINING_PSNR_FUSED, "val_fused_psnr": 27.5}
    (bundle / "ugpnet.json").write_text(json.dumps(config))
    assert cli_main(["models", "register-bundle", str(bundle), "--name", NAME]) == 0
    return mlflow.MlflowClient().get_model_version(NAME, "1")


def promote(capsys, requirement: str) -> tuple[int, str]:
    code = cli_main(["models", "promote", NAME, "--version", "1", "--alias", "champion", "--require", requirement])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_summary_metric_names_per_strength_and_mean_over_strengths():
    from pipelines.evaluate.tracking import summary_metrics

    table = [{"strength": 15.0, "output": "fused", "psnr": 30.0, "ssim": 0.9},
             {"strength": 25.0, "output": "fused", "psnr": 26.0, "ssim": None},  # no ok image: no value
             {"strength": 15.0, "output": "opencv nlm", "psnr": 29.0, "ssim": 0.8},  # a baseline: report only
             {"strength": 2.5, "output": "input", "psnr": 20.0, "ssim": 0.5}]
    assert summary_metrics(table, ["psnr", "ssim"]) == {
        "psnr_fused_s15": 30.0, "psnr_fused_s25": 26.0, "psnr_fused": 28.0, "ssim_fused_s15": 0.9,
        "ssim_fused": 0.9, "psnr_input_s2.5": 20.0, "psnr_input": 20.0, "ssim_input_s2.5": 0.5, "ssim_input": 0.5}


@pytest.mark.integration
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("ray_session")
def test_evaluation_is_linked_to_the_version_and_gates_its_promotion(registered_version, tmp_path, capsys):
    from pipelines.registry.store import logged_model_id

    client = mlflow.MlflowClient()
    training_run = registered_version.run_id
    model_id = logged_model_id(registered_version)
    assert model_id and model_id.startswith("m-")

    # No evaluation yet: the gate reads the training run's metric and says so.
    code, said = promote(capsys, "psnr_fused>=50")
    assert code == 0, said
    assert f"psnr_fused = 99 (training run {training_run})" in said

    photos = write_photos(tmp_path / "photos")
    report = tmp_path / "report"
    assert cli_main(["evaluate", "--model", f"models:/{NAME}/1", "--data", str(photos), "--task", "denoise",
                     "--report", str(report), "--strengths", "25", "--crop", str(CROP), "--grid-images", "0",
                     "--no-baselines"]) == 0
    capsys.readouterr()
    summary = json.loads((report / "summary.json").read_text())
    fused = next(e for e in summary["table"] if e["output"] == "fused")
    assert fused["n"] == 3

    # The logged model of version 1 now lists the evaluation's metrics, with the evaluation run's id.
    linked = client.get_logged_model(model_id).metrics
    evaluation_runs = {m.run_id for m in linked} - {training_run}
    assert len(evaluation_runs) == 1, linked
    evaluation_run = evaluation_runs.pop()
    by_key = {m.key: m.value for m in linked if m.run_id == evaluation_run}
    assert by_key["psnr_fused"] == pytest.approx(fused["psnr"])
    assert by_key["psnr_fused_s25"] == pytest.approx(fused["psnr"])
    assert by_key["ssim_restored"] == pytest.approx(next(e["ssim"] for e in summary["table"]
                                                         if e["output"] == "restored"))
    run = client.get_run(evaluation_run)
    assert run.data.tags["ugpnet.registered_model"] == NAME and run.data.tags["ugpnet.model_version"] == "1"
    assert run.data.tags["ugpnet.evaluate_run"] == summary["run_id"]
    assert {m.model_id for m in run.inputs.model_inputs} == {model_id}
    assert run.data.metrics["psnr_fused"] == pytest.approx(fused["psnr"])
    found = client.search_runs([run.info.experiment_id],
                               f"tags.`ugpnet.registered_model` = '{NAME}' and tags.`ugpnet.model_version` = '1'")
    assert [r.info.run_id for r in found] == [evaluation_run]

    # The report, the parquet and the summary are artifacts of that run, byte for byte.
    artifacts = tmp_path / "artifacts"
    mlflow.artifacts.download_artifacts(run_id=evaluation_run, artifact_path="evaluation", dst_path=str(artifacts))
    for name in ("report.html", "per_image.parquet", "summary.json"):
        assert (artifacts / "evaluation" / name).read_bytes() == (report / name).read_bytes(), name
    assert pq.read_table(artifacts / "evaluation" / "per_image.parquet").num_rows == 3 * 4

    # The gate now reads the evaluation: below its value passes and names the run, above it refuses
    # (though the training run's 99 would have passed).
    value = by_key["psnr_fused"]
    code, said = promote(capsys, f"psnr_fused>={value - 1:.3f}")
    assert code == 0, said
    assert re.search(rf"psnr_fused = [\d.]+ \(evaluation run {evaluation_run}\) satisfies >=", said), said
    assert client.get_model_version_by_alias(NAME, "champion").version == "1"

    client.delete_registered_model_alias(NAME, "champion")
    code, said = promote(capsys, f"psnr_fused>={value + 1:.3f}")
    assert code == 2
    assert f"refusing to promote {NAME} version 1" in said and f"evaluation run {evaluation_run}" in said, said
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias(NAME, "champion")

    # A metric only training recorded still comes from the training run.
    code, said = promote(capsys, "val_fused_psnr>=20")
    assert code == 0 and f"val_fused_psnr = 27.5 (training run {training_run})" in said, said

    # A deleted evaluation run no longer counts: the gate is back on the training run's value.
    client.delete_run(evaluation_run)
    code, said = promote(capsys, "psnr_fused>=50")
    assert code == 0 and f"psnr_fused = 99 (training run {training_run})" in said, said
