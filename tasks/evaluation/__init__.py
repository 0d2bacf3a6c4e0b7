"""Evaluation: metrics, assessment of a model on a split, plots, robustness, explanations."""
