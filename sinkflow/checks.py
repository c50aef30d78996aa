"""Checks of numeric and choice options, run where an object is constructed; each error names the config key.

    tau = number("sink_strategy.detector.tau", tau, above=0)
    k = number("sink_strategy.detector.k", k, integer=True, at_least=1)
    order = choice("sink_strategy.strategy.order", order, SinkOrder)  # SinkOrder = Literal["raster", "norm"]

A bad value (wrong type, NaN, infinity, out of range) raises `ValueError`; `None` passes only with `optional`.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Literal, get_args, get_origin


def number(
    key: str,
    value,
    *,
    integer: bool = False,
    above: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
    at_most: float | None = None,
    optional: bool = False,
):
    """`value` if it is a finite number (an integer with `integer`) within the given bounds, else a ValueError
    that reads "`key` must be <what>, got <value>"."""
    if value is None and optional:
        return value
    kind = "an integer" if integer else "a number"
    bounds = [
        f"> {above:g}" if above is not None else None,
        f">= {at_least:g}" if at_least is not None else None,
        f"< {below:g}" if below is not None else None,
        f"<= {at_most:g}" if at_most is not None else None,
    ]
    wanted = " ".join([kind, " and ".join(b for b in bounds if b)]).strip() + (" or null" if optional else "")
    ok = isinstance(value, Integral if integer else Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (
            (above is None or value > above)
            and (at_least is None or value >= at_least)
            and (below is None or value < below)
            and (at_most is None or value <= at_most)
        )
    if not ok:
        raise ValueError(f"`{key}` must be {wanted}, got {value!r}")
    return value


def choice(key: str, value, options):
    """`value` if it is one of `options` (a `typing.Literal` type or a collection of values), else a ValueError
    that reads "`key` must be one of (...), got <value>"."""
    allowed = tuple(get_args(options)) if get_origin(options) is Literal else tuple(options)
    if value not in allowed:
        raise ValueError(f"`{key}` must be one of {allowed}, got {value!r}")
    return value
