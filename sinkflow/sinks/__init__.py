"""ViT sinks: detection and routing strategies."""
