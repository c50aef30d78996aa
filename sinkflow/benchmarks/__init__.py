"""Evaluation benchmarks, one module each: its loaders (original and Hugging Face layouts), its answer parsing per
parser, and its `Benchmark` subclass, registered by name in `base.BENCHMARKS`."""
