"""`ugpnet models`: the MLflow registry, the pyfunc model and model cards."""
