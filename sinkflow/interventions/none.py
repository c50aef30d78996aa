"""`none`: the model runs as loaded (parity with plain transformers)."""

from sinkflow.interventions.base import Intervention


class NoIntervention(Intervention, name="none"):
    """Changes nothing."""
