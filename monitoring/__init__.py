"""steelqc monitoring layer."""
