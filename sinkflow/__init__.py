"""sinkflow: ViT attention sinks in vision-language models."""
