"""steelqc tasks layer."""
