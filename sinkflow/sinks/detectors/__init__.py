"""Sink detectors, one module per rule; `DETECTORS` (in `base`) finds them by importing this package's modules."""
