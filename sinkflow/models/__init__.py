"""Model loading, the offline tiny model and the per-family visual pathways."""
