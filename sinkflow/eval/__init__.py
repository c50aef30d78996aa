"""Evaluation: predictions files, scoring and the Lightning callback."""
