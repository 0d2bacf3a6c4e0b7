"""Models: architectures, training, tuning, inference."""
