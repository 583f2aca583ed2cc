"""What every verb shares: options, storage, Ray resources, logs, error kinds, model references."""
