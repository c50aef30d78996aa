"""`none`: the vanilla pathway, every token in raster order through the family's projector."""

from __future__ import annotations

from sinkflow.sinks.strategies.base import SinkStrategy


class NoneStrategy(SinkStrategy):
    """Identity routing; sinkflow with this strategy reproduces plain transformers exactly."""

    needs_sinks = False

    def forward(self, features, sink_mask, project):
        return list(project(features))
