"""MLflow model registry: log a bundle as a pyfunc model, register it, resolve `models:/` refs,
list models, and promote a version to an alias behind a metric gate.

The gate reads a version's evaluation first: the latest `ugpnet evaluate` run whose metrics are linked
to the version's logged model (pipelines.evaluate.tracking); a metric that run lacks, or every metric
when the version was never evaluated, comes from the training run that logged the version.

Registered models are named `ugpnet-<task>` unless the user names them; aliases `candidate`
(set by training) and `champion` (set by an explicit, gated promotion) follow MLflow's conventions.
"""

import hashlib
import operator
import os
import re
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

PYFUNC_FILE = Path(__file__).with_name("pyfunc.py")
BUNDLE_ARTIFACT = "bundle"
# Explicit requirements: inferred ones would pin the local CPU build of torch that no registry serves.
PIP_REQUIREMENTS = ["torch>=2.2", "numpy", "pillow", "safetensors", "pandas", "mlflow>=3.0"]
# The pyfunc model's inference params and their defaults (the params schema's): fit is UGPNet.restore's
# own default policy, so no params means the same as restore(); precision as `ugpnet restore --precision`.
PYFUNC_PARAM_DEFAULTS = {"fit": "resize", "precision": "fp32", "strip_metadata": False}
# Written last into a finished download: a cache folder without it (a download killed half way, or one
# made before this marker existed) is fetched again, never trusted.
COMPLETE_MARKER = ".ugpnet-download-complete"
# Tag of the runs `ugpnet evaluate` logs for a registered version; the gate looks for it.
EVALUATION_TAG = "ugpnet.kind"
EVALUATION_KIND = "evaluation"
LOGGED_MODEL_SOURCE = re.compile(r"^models:/(?P<model_id>m-[0-9a-f]+)$")
REF_PATTERN = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str | None
    aliases: tuple[str, ...]


def registered_name(task: str, name: str | None = None) -> str:
    return name or f"ugpnet-{task}"


def pyfunc_signature():
    """The pyfunc contract: encoded image bytes in; PNG bytes, size and a per-row error out; the fit
    policy, precision and strip_metadata as inference params. Without a params schema MLflow drops
    `params` at predict time."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec("binary", "image")])
    outputs = Schema([ColSpec("binary", "image"), ColSpec("long", "width"), ColSpec("long", "height"),
                      ColSpec("string", "error")])
    params = ParamSchema([ParamSpec("fit", "string", PYFUNC_PARAM_DEFAULTS["fit"]),
                          ParamSpec("precision", "string", PYFUNC_PARAM_DEFAULTS["precision"]),
                          ParamSpec("strip_metadata", "boolean", PYFUNC_PARAM_DEFAULTS["strip_metadata"])])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def pyfunc_input_example():
    """A 16×16 grey PNG: small enough to store beside the model, a valid image for the example check."""
    import numpy as np
    import pandas as pd

    from ugpnet.images import encode_image

    grey = np.full((16, 16, 3), 0.5, dtype=np.float32)
    return pd.DataFrame({"image": [encode_image(grey, fmt="png")]})


def log_bundle(bundle_dir: str | Path, *, register_as: str | None = None, alias: str | None = None,
               name: str = "model") -> RegisteredVersion | None:
    """Log the bundle as a pyfunc model in the active run; optionally register it and set an alias."""
    import mlflow

    info = mlflow.pyfunc.log_model(name=name, python_model=str(PYFUNC_FILE),
                                   artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
                                   code_paths=None, pip_requirements=PIP_REQUIREMENTS,
                                   signature=pyfunc_signature(), input_example=pyfunc_input_example())
    if not register_as:
        return None
    version = mlflow.register_model(info.model_uri, register_as)
    client = mlflow.MlflowClient()
    if alias:
        client.set_registered_model_alias(register_as, alias, version.version)
    return RegisteredVersion(register_as, str(version.version), version.run_id, (alias,) if alias else ())


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    match = REF_PATTERN.match(ref)
    if not match:
        raise ValueError(f"model reference {ref!r} is not models:/NAME@ALIAS or models:/NAME/VERSION")
    return match["name"], match["alias"], match["version"]


def resolve_version(ref: str) -> RegisteredVersion:
    """The concrete registry version a `models:/` reference points at now."""
    import mlflow

    name, alias, version = parse_ref(ref)
    client = mlflow.MlflowClient()
    mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    return RegisteredVersion(name, str(mv.version), mv.run_id, tuple(getattr(mv, "aliases", ()) or ()))


def download_bundle(ref: str) -> tuple[Path, str]:
    """Fetch the bundle of a `models:/` ref into the local cache; returns (bundle dir, 'name/vN')."""
    import mlflow

    from ugpnet.model_refs import cache_dir

    version = resolve_version(ref)
    tracking = mlflow.get_tracking_uri()
    key = hashlib.sha256(f"{tracking}|{version.name}|{version.version}".encode()).hexdigest()[:16]
    target = cache_dir() / "registry" / key
    if not (target / COMPLETE_MARKER).is_file():
        _download_whole(f"models:/{version.name}/{version.version}", target)
    bundle = bundle_path_in_model(target)
    if bundle is None:
        raise FileNotFoundError(f"{ref}: the registered model holds no UGPNet bundle artifact")
    return bundle, f"{version.name}/{version.version}"


def _download_whole(artifact_uri: str, target: Path) -> None:
    """Download into a hidden temp folder beside `target`, mark it complete, then rename it into place:
    `target` is either absent, incomplete from an older version (replaced), or whole."""
    import mlflow

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(partial))
        (partial / COMPLETE_MARKER).write_text(artifact_uri + "\n")
        if target.exists() and not (target / COMPLETE_MARKER).is_file():
            shutil.rmtree(target)  # an incomplete earlier download
        try:
            os.rename(partial, target)
        except OSError:
            if not (target / COMPLETE_MARKER).is_file():  # another process finished first: use its copy
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def bundle_path_in_model(model_dir: Path) -> Path | None:
    """Where the pyfunc model keeps its bundle artifact (MLmodel records the relative path)."""
    from mlflow.models import Model

    from ugpnet.checkpoint import CONFIG_FILE

    flavor = Model.load(str(model_dir / "MLmodel")).flavors.get("python_function", {})
    relative = flavor.get("artifacts", {}).get(BUNDLE_ARTIFACT, {}).get("path")
    bundle = model_dir / relative if relative else None
    return bundle if bundle is not None and (bundle / CONFIG_FILE).is_file() else None


def resolve_models_ref(ref: str) -> Path:
    """Entry point for `ugpnet.load("models:/…")` (see pyproject's ugpnet.model_refs)."""
    return download_bundle(ref)[0]


def list_versions(name: str | None = None) -> list[RegisteredVersion]:
    import mlflow

    client = mlflow.MlflowClient()
    names = [name] if name else [m.name for m in client.search_registered_models()]
    versions = []
    for model_name in names:
        # search_model_versions leaves aliases empty; the registered model maps alias → version.
        aliases = client.get_registered_model(model_name).aliases or {}
        for mv in client.search_model_versions(f"name='{model_name}'"):
            mine = tuple(sorted(a for a, v in aliases.items() if str(v) == str(mv.version)))
            versions.append(RegisteredVersion(model_name, str(mv.version), mv.run_id, mine))
    return sorted(versions, key=lambda v: (v.name, int(v.version)))


REQUIREMENT = re.compile(r"^\s*(?P<metric>[\w./-]+)\s*(?P<op>>=|<=|>|<|==)\s*(?P<value>-?[\d.eE+-]+)\s*$")
OPERATORS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}


@dataclass(frozen=True)
class GateMetric:
    value: float
    source: str  # "evaluation" or "training": the kind of run it was recorded in
    run_id: str

    def describe(self, metric: str) -> str:
        return f"{metric} = {self.value:.4g} ({self.source} run {self.run_id})"


def promote(name: str, version: str, alias: str, requirements: list[str]) -> list[str]:
    """Point `alias` at `version` if every `metric OP value` holds; returns one line per requirement
    saying which value, from which run, met it. Raises ValueError (nothing changed) otherwise."""
    import mlflow

    client = mlflow.MlflowClient()
    metrics = gate_metrics(client, client.get_model_version(name, version))
    checked = []
    for requirement in requirements:
        match = REQUIREMENT.match(requirement)
        if not match:
            raise ValueError(f"--require {requirement!r}: expected METRIC>=VALUE (or <=, >, <, ==)")
        metric, op, bar = match["metric"], match["op"], float(match["value"])
        if metric not in metrics:
            raise ValueError(f"{name} version {version} has no recorded metric {metric!r} in its evaluation "
                             f"or training runs (recorded: {', '.join(sorted(metrics)) or 'none'})")
        if not OPERATORS[op](metrics[metric].value, bar):
            raise ValueError(f"refusing to promote {name} version {version} to {alias!r}: "
                             f"{metrics[metric].describe(metric)} does not satisfy {op} {bar:g}")
        checked.append(f"{metrics[metric].describe(metric)} satisfies {op} {bar:g}")
    client.set_registered_model_alias(name, alias, version)
    return checked


def gate_metrics(client, mv) -> dict[str, GateMetric]:
    """The metrics a gate reads for model version `mv`: its training run's, overridden by those of
    its latest evaluation (test-split measurements beat training's validation crops)."""
    training = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
    metrics = {key: GateMetric(value, "training", mv.run_id) for key, value in training.items()}
    evaluation = latest_evaluation(client, mv)
    if evaluation is not None:
        run_id, evaluated = evaluation
        metrics.update({key: GateMetric(value, "evaluation", run_id) for key, value in evaluated.items()})
    return metrics


def logged_model_id(mv) -> str | None:
    """The id of the logged model behind a model version. MLflow 3.17 leaves `model_id` empty on
    versions that `register_model("models:/<model id>")` created; their source still names it."""
    if getattr(mv, "model_id", None):
        return mv.model_id
    match = LOGGED_MODEL_SOURCE.match(mv.source or "")
    return match["model_id"] if match else None


def latest_evaluation(client, mv) -> tuple[str, dict[str, float]] | None:
    """(run id, metrics) of the newest live evaluation run linked to the version's logged model, or
    None. Only metrics linked to this model count: a run may have measured several models."""
    model_id = logged_model_id(mv)
    if model_id is None:  # registered without a logged model: nothing can be linked
        return None
    linked = defaultdict(dict)  # run id → metric → (timestamp, value)
    for metric in client.get_logged_model(model_id).metrics or []:
        if metric.run_id and metric.run_id != mv.run_id:
            previous = linked[metric.run_id].get(metric.key)
            if previous is None or metric.timestamp >= previous[0]:
                linked[metric.run_id][metric.key] = (metric.timestamp, metric.value)
    runs = [client.get_run(run_id) for run_id in linked]
    evaluations = [run for run in runs if run.data.tags.get(EVALUATION_TAG) == EVALUATION_KIND
                   and run.info.lifecycle_stage == "active"]
    if not evaluations:
        return None
    newest = max(evaluations, key=lambda run: run.info.start_time)
    return newest.info.run_id, {key: value for key, (_, value) in linked[newest.info.run_id].items()}
