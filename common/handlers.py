"""Ignite handlers shared by the bundles' training configs."""

from __future__ import annotations

import logging
from typing import Protocol

from ignite.engine import Engine, Events

__all__ = ["AlphaScheduleHandler"]


class _EpochScheduledLoss(Protocol):
    def set_epoch(self, epoch_index: int) -> float: ...


class AlphaScheduleHandler:
    """Set the epoch-dependent weight of a loss (e.g. :class:`common.losses.RWCombinedLoss`) at each epoch start.

    The weight is a function of the epoch index alone, so a resumed training (whose ``engine.state.epoch`` is
    restored from the checkpoint) gets the same alpha as an uninterrupted one.

    Args:
        loss: object with ``set_epoch(epoch_index) -> float`` (the loss itself, not a deep-supervision wrapper).
        name: logger name; the new value is logged at INFO level.
    """

    def __init__(self, loss: _EpochScheduledLoss, name: str | None = None) -> None:
        if not callable(getattr(loss, "set_epoch", None)):
            raise TypeError(f"{type(loss).__name__} has no set_epoch(epoch_index); pass the scheduled loss itself.")
        self.loss = loss
        self.logger = logging.getLogger(name or __name__)

    def attach(self, engine: Engine) -> None:
        """Run at every epoch start of ``engine``."""
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        """Update the loss for the epoch that starts (ignite counts epochs from 1, the schedule from 0)."""
        alpha = self.loss.set_epoch(engine.state.epoch - 1)
        engine.state.metrics["loss_alpha"] = alpha  # logged by MONAI's stats handlers with the other metrics
        self.logger.info(f"epoch {engine.state.epoch}: loss alpha = {alpha:.4f}")
