"""Where MLflow tracking points: `--tracking-uri`, else MLFLOW_TRACKING_URI, else a local sqlite file."""

import os

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def tracking_uri(explicit: str | None = None) -> str:
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def use_tracking(explicit: str | None = None) -> str:
    import mlflow

    uri = tracking_uri(explicit)
    mlflow.set_tracking_uri(uri)
    return uri
