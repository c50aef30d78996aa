"""One line per message on the console: Lightning's own log handler and its advertisements, silenced under Hydra.

The `lightning` package attaches a console handler to its logger and still propagates to the root logger, which
Hydra has configured (console and the job's `.log` file): every Lightning message would print twice. Its trainer also
logs a tip about a cloud logger on each start.
"""

from __future__ import annotations

import logging

ADVERTISEMENT = "💡 Tip:"


class DropAdvertisements(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(ADVERTISEMENT)


def quiet_lightning() -> None:
    """Route Lightning's messages through the root logger only (when one is configured), without its tips; call after
    importing lightning. Idempotent."""
    import lightning  # noqa: F401  (its import attaches the handler removed here)

    lightning_logger = logging.getLogger("lightning")
    if logging.getLogger().hasHandlers():
        for handler in list(lightning_logger.handlers):
            lightning_logger.removeHandler(handler)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropAdvertisements) for f in logger.filters):
            logger.addFilter(DropAdvertisements())
