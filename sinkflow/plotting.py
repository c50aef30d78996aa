"""Matplotlib for figures that are only ever saved to files, on machines that often have no display."""

from __future__ import annotations

import textwrap
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def pyplot() -> ModuleType:
    """`matplotlib.pyplot` on the Agg backend: no display is needed, whatever the machine's default backend.

    Imported on call, so that code which draws only sometimes (the loss-curves callback) loads matplotlib only then.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


TITLE_SIZE = 9  # points


def titled(fig: Figure, what: str, caption: str) -> Figure:
    """Title `fig` with what it shows over its caption (`sinkflow.caption.Caption.text`: model, strategy, data),
    its lines wrapped to the figure's width, in a constrained layout, which keeps room for the title above the
    panels (tight_layout would let it overlap them)."""
    fig.set_layout_engine("constrained")
    width = int(fig.get_figwidth() * 72 / (0.6 * TITLE_SIZE))  # characters of about 0.6 em that fit across
    # Lines break between words only: a caption's names (hub ids, shapes-seed0-n1024-...) stay whole.
    lines = [
        part
        for line in f"{what}\n{caption}".splitlines()
        for part in textwrap.wrap(line, width, break_long_words=False, break_on_hyphens=False)
    ]
    fig.suptitle("\n".join(lines), fontsize=TITLE_SIZE)
    return fig
