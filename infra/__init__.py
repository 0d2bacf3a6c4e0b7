"""steelqc infra: start and stop the real services (Prefect and MLflow servers) used locally and by tests."""
