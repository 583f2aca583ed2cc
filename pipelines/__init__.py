"""The layer that knows Ray, MLflow and object storage. One module per verb, plus the CLI."""
