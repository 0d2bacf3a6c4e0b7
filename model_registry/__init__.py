"""steelqc model registry: MLflow store set-up, gates, versions, aliases, approval, audit and rollback."""
