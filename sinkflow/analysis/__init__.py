"""The `analyze.py` tasks, one module each (registered in `sinkflow.analysis.task.ANALYSES`), and their helpers."""
