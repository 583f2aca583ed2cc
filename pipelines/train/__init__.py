"""`ugpnet train`: the three stages on Ray Train, tracked in MLflow."""
