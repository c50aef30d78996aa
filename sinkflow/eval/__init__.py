"""Evaluation: scoring answered records, the scoring CLI and the Lightning callbacks that score test and validation."""
