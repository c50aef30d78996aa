"""Routing strategies, one file each; `conf/sink_strategy/<name>.yaml` instantiates `<name>.py`.

Importing this package registers every built-in strategy in `SinkStrategy.registry` (name -> class).
"""

from sinkflow.sinks.strategies import (  # noqa: F401  (registration)
    cot_route,
    drop_sinks,
    dual_mlp,
    reweight,
    none,
    random_control,
    sink_end,
    sink_front,
    sinks_only,
)
from sinkflow.sinks.strategies.base import SinkStrategy

STRATEGIES = SinkStrategy.registry
