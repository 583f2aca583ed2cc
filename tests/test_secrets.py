"""Credentials in URIs never reach MLflow params, tags or run names, a printed config or an error line
(issue 10 point 10). Against a real MLflow server; containment, not equality."""

import mlflow
import pytest
from mlflow_service import mlflow_server

from pipelines.cli import main as cli_main
from pipelines.common.redaction import redact
from pipelines.train import run as train
from pipelines.train.config import TrainConfig, plan_run

pytest_plugins = ["services"]

TOKEN = "tok-4c1d-never-in-mlflow"
AWS_SECRET = "aws+secret/9e2b-never-in-mlflow"


def everything_mlflow_holds(client: mlflow.MlflowClient, experiment_id: str) -> list[str]:
    """Every param and tag (names and values) and every run name of the experiment's runs."""
    texts = []
    for run in client.search_runs([experiment_id]):
        texts.append(run.info.run_name or "")
        for mapping in (run.data.params, run.data.tags):
            texts.extend(f"{key}={value}" for key, value in mapping.items())
    return texts


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_params_tags_and_run_names_hold_no_credentials(moto_s3, tmp_path, monkeypatch):
    moto_s3.client().create_bucket(Bucket="secrets-artifacts")
    env = {**moto_s3.env, "MLFLOW_S3_ENDPOINT_URL": moto_s3.endpoint}
    with mlflow_server(tmp_path / "mlflow", "s3://secrets-artifacts/a", env) as url:
        # A tracking server behind basic auth is named like this; this server ignores the credentials.
        secret_uri = url.replace("http://", f"http://ugpnet-user:{TOKEN}@")
        mlflow.set_tracking_uri(secret_uri)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", secret_uri)
        config = TrainConfig(preset="tiny_denoise", data=str(tmp_path), run_name="secrets",
                             tracking_uri=secret_uri, init_bundle=f"s3://AKIAEXAMPLE:{AWS_SECRET}@bundles/init")
        experiment_id = mlflow.set_experiment("secrets").experiment_id
        with train.start_parent_run(plan_run(config), experiment_id, skipped_images=0) as parent:
            train.start_stage_run(plan_run(config), "restoration", experiment_id, parent.info.run_id)
        mlflow.set_tracking_uri(url)

        client = mlflow.MlflowClient(tracking_uri=url)
        held = everything_mlflow_holds(client, experiment_id)
        assert len(client.search_runs([experiment_id])) == 2
        assert [text for text in held if TOKEN in text or "4c1d" in text or "9e2b" in text] == []
        parent_params = client.get_run(parent.info.run_id).data.params
        # Logged, with the credentials replaced (not dropped: the URI's host still says where it went).
        assert parent_params["tracking_uri"] == url.replace("http://", "http://***@")
        assert parent_params["init_bundle"] == "s3://***@bundles/init"


def test_a_bundle_uri_with_credentials_fails_before_any_work_naming_the_field(tmp_path, capsys):
    status = cli_main(["train", "--preset", "tiny_denoise", "--data", str(tmp_path), "--run-name", "r",
                       "--init-bundle", f"s3://AKIAEXAMPLE:{AWS_SECRET}@bundles/init",
                       "--tracking-uri", f"https://user:{TOKEN}@mlflow.invalid"])
    captured = capsys.readouterr()
    assert status == 2
    assert "init_bundle:" in captured.err and "credentials" in captured.err
    assert TOKEN not in captured.out + captured.err and AWS_SECRET not in captured.out + captured.err


def test_the_printed_config_holds_no_credentials(tmp_path, capsys):
    status = cli_main(["train", "--preset", "tiny_denoise", "--data", str(tmp_path), "--run-name", "r",
                       "--tracking-uri", f"https://user:{TOKEN}@mlflow.invalid/x", "--dry-run"])
    out = capsys.readouterr().out
    assert status == 0
    assert TOKEN not in out and '"tracking_uri": "https://***@mlflow.invalid/x"' in out


@pytest.mark.parametrize(("text", "expected"), [
    (f"https://user:{TOKEN}@host/x", "https://***@host/x"),
    (f"s3://AKIA:{AWS_SECRET}@bucket/key", "s3://***@bucket/key"),  # an AWS secret may hold a '/'
    (f"https://{TOKEN}@github.com/o/r", "https://***@github.com/o/r"),
    (f"opened s3://b/k?X-Amz-Signature={TOKEN}&part=1 then", "opened s3://b/k?X-Amz-Signature=***&part=1 then"),
    (f"https://h/p?token={TOKEN}#frag", "https://h/p?token=***#frag"),
    # No credentials: unchanged.
    ("s3://bucket/photos@2x/a.png", "s3://bucket/photos@2x/a.png"),
    ("models:/ugpnet-denoise@champion", "models:/ugpnet-denoise@champion"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
    ("/data/a:b@c.png", "/data/a:b@c.png"),
])
def test_redact_removes_credentials_and_keeps_everything_else(text, expected):
    assert redact(text) == expected


def test_an_unexpected_failure_prints_its_traceback_without_credentials(tmp_path):
    import os
    import subprocess
    import sys

    from services import free_port

    nobody = f"http://ugpnet-user:{TOKEN}@127.0.0.1:{free_port()}"  # nothing listens there
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "models", "--tracking-uri", nobody, "list"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "API request to http://***@127.0.0.1:" in result.stderr, result.stderr
    assert TOKEN not in result.stdout + result.stderr
