"""Adapters that run sinkflow inside other tools (lmms-eval); the core package never imports them."""
