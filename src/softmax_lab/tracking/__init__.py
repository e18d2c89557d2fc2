"""MLflow: the store, the run (status, params, tags), the buffered logger, the run's MLflow model, a sweep's
parent run and summary, the UI's links."""
