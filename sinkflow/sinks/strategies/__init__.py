"""Routing strategies, one module each; `STRATEGIES` (in `base`) finds them by importing this package's modules."""
