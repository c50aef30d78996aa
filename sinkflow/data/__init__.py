"""Datasets: synthetic shapes, LLaVA instruct data and benchmark loaders."""
