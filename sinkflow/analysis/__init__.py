"""Analyses that produce figures: calibration plots, and later propagation, massive dims, relevance maps."""
