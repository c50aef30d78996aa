"""Matplotlib for figures that are only ever saved to files, on machines that often have no display."""

from __future__ import annotations

from types import ModuleType


def pyplot() -> ModuleType:
    """`matplotlib.pyplot` on the Agg backend: no display is needed, whatever the machine's default backend.

    Imported on call, so that code which draws only sometimes (the loss-curves callback) loads matplotlib only then.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
