"""steelqc model_registry layer."""
