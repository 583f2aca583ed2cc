"""An evaluation of a registered model version, recorded in MLflow beside that version.

`ugpnet evaluate --model models:/NAME/VERSION` (or `@ALIAS`) ends with one MLflow run: the summary's
means as metrics linked to the version's logged model (MLflow 3: `log_metrics(model_id=…)`, so
`get_logged_model(model_id).metrics` lists them with this run's id), the test set as the metrics'
dataset, and report.html, per_image.parquet and summary.json as artifacts under `evaluation/`.
`ugpnet models promote --require` reads these metrics (pipelines.registry.store.promote).

Metric names follow the summary table: `<metric>_<output>_s<strength>` per strength (`psnr_fused_s25`)
and `<metric>_<output>` for the mean over the evaluated strengths (`psnr_fused`), for the input and
the model's three outputs; the classical baselines stay in the report (they are not the model).
"""

import hashlib
import json
import tempfile
import warnings
from pathlib import Path

from pipelines.common import storage
from pipelines.evaluate.stages import OUTPUTS
from pipelines.registry.store import EVALUATION_KIND, EVALUATION_TAG, logged_model_id

ARTIFACT_DIR = "evaluation"
ARTIFACT_FILES = ("report.html", "per_image.parquet", "summary.json")
DEFAULT_EXPERIMENT = "ugpnet-evaluate"


def summary_metrics(table: list[dict], metrics: list[str]) -> dict[str, float]:
    """The aggregate table (one entry per strength and output) as flat MLflow metric names."""
    flat, per_strength = {}, {}
    for entry in table:
        if entry["output"] not in OUTPUTS:
            continue
        for metric in metrics:
            if entry.get(metric) is None:  # no ok image at this strength
                continue
            name = f"{metric}_{entry['output']}"
            flat[f"{name}_s{entry['strength']:g}"] = float(entry[metric])
            per_strength.setdefault(name, []).append(float(entry[metric]))
    flat.update({name: sum(values) / len(values) for name, values in per_strength.items()})
    return flat


def evaluated_dataset(data_uri: str, task: str, images: list[str], degradation: dict):
    """The evaluated inputs as an MLflow dataset: where they came from, and a digest of what was
    evaluated (image keys, seed, strengths, crop), so two runs on the same test set share it."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    identity = json.dumps({"task": task, "images": sorted(images), **degradation}, sort_keys=True)
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    with warnings.catch_warnings():
        # MLflow registers its local-artifact source class twice and warns that a path "can be
        # interpreted in multiple ways" — both are the same class.
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(data_uri)
    return MetaDataset(source=source, name=f"ugpnet-evaluate-{task}", digest=digest)


def log_evaluation(*, registry_version: str, experiment: str, summary, context: dict,
                   report: storage.Location, images: list[str]) -> str:
    """Log the finished evaluation as an MLflow run linked to `registry_version` ("NAME/VERSION");
    returns the MLflow run id. The tracking URI is the one the model was resolved through."""
    import mlflow

    name, _, version = registry_version.rpartition("/")
    client = mlflow.MlflowClient()
    model_id = logged_model_id(client.get_model_version(name, version))  # None: no logged model behind it
    degradation = {key: context[key] for key in ("seed", "strengths", "crop")}
    dataset = evaluated_dataset(context["data"], context["task"], images, degradation)
    mlflow.set_experiment(experiment)
    tags = {EVALUATION_TAG: EVALUATION_KIND, "ugpnet.registered_model": name, "ugpnet.model_version": version,
            "ugpnet.evaluate_run": summary.run_id, "ugpnet.weights_version": context["model"]["version"]}
    with mlflow.start_run(run_name=f"evaluate {name}/{version}", tags=tags) as run:
        mlflow.log_params({"task": context["task"], "data": context["data"], "fit": context["fit"],
                           "strengths": ",".join(f"{s:g}" for s in context["strengths"]),
                           "seed": context["seed"], "crop": context["crop"]})
        mlflow.log_metrics({**summary_metrics(summary.table, context["metrics"]), "evaluated_ok": summary.ok,
                            "evaluated_errors": summary.errors}, model_id=model_id, dataset=dataset)
        _log_report_files(report)
    return run.info.run_id


def _log_report_files(report: storage.Location) -> None:
    """The report may be on S3: copy each file through a local folder into the run's artifacts."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="ugpnet-evaluation-") as folder:
        for file_name in ARTIFACT_FILES:
            (Path(folder) / file_name).write_bytes(storage.read_bytes(report.child(file_name)))
        mlflow.log_artifacts(folder, artifact_path=ARTIFACT_DIR)
