"""The alpha schedule of the combined RW losses: an ignite handler that sets a loss's epoch-dependent weight."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from ignite.engine import Engine, Events

__all__ = ["AlphaScheduleHandler"]


class _EpochScheduledLoss(Protocol):
    def set_epoch(self, epoch_index: int) -> float: ...


def _scheduled_loss(loss: Any) -> _EpochScheduledLoss:
    """The loss with ``set_epoch``: ``loss`` itself or the one a wrapper holds as ``.loss`` (deep supervision)."""
    candidate = loss
    while not callable(getattr(candidate, "set_epoch", None)):
        candidate = getattr(candidate, "loss", None)
        if candidate is None:
            raise TypeError(
                f"{type(loss).__name__} has no set_epoch(epoch_index) and wraps no loss that has one; pass the "
                "scheduled loss (e.g. RWCombinedLoss) or a wrapper holding it as .loss."
            )
    return candidate


class AlphaScheduleHandler:
    """Set the epoch-dependent weight of a loss (e.g. :class:`common.losses.RWCombinedLoss`) once per epoch.

    The schedule's epoch is, by default, the trainer's epoch: with ``SupervisedTrainer(epoch_length=250)`` an
    epoch is 250 iterations (nnU-Net's), whatever the size of the training set. With ``iterations_per_epoch``
    the schedule keeps its own clock of that many iterations, for trainers whose epochs are passes over the data.
    Either way the weight is a function of the engine's restored state alone (``epoch`` or ``iteration``), so a
    resumed training gets the same alpha as an uninterrupted one.

    Args:
        loss: the scheduled loss (with ``set_epoch(epoch_index) -> float``) or a wrapper holding it as ``.loss``
            (MONAI's ``DeepSupervisionLoss`` and its subclasses).
        name: logger name; each new value is logged at INFO level.
        iterations_per_epoch: length of a schedule epoch in iterations; None to follow the trainer's epochs.

    Raises:
        TypeError: when no loss with ``set_epoch`` is found.
        ValueError: when ``iterations_per_epoch`` is not positive.
    """

    def __init__(self, loss: Any, name: str | None = None, iterations_per_epoch: int | None = None) -> None:
        if iterations_per_epoch is not None and iterations_per_epoch < 1:
            raise ValueError(f"iterations_per_epoch must be a positive integer, got {iterations_per_epoch}.")
        self.loss = _scheduled_loss(loss)
        self.iterations_per_epoch = iterations_per_epoch
        self.logger = logging.getLogger(name or __name__)
        self._epoch_index: int | None = None

    def attach(self, engine: Engine) -> None:
        """Run at every epoch start of ``engine`` (every iteration start with ``iterations_per_epoch``)."""
        event = Events.EPOCH_STARTED if self.iterations_per_epoch is None else Events.ITERATION_STARTED
        engine.add_event_handler(event, self)

    def __call__(self, engine: Engine) -> None:
        """Set the loss's alpha for the current schedule epoch (ignite counts from 1, the schedule from 0)."""
        if self.iterations_per_epoch is None:
            epoch_index = engine.state.epoch - 1
        else:
            epoch_index = (engine.state.iteration - 1) // self.iterations_per_epoch
        alpha = self.loss.set_epoch(epoch_index)
        engine.state.metrics["loss_alpha"] = alpha  # logged by MONAI's stats handlers with the other metrics
        if epoch_index != self._epoch_index:
            self._epoch_index = epoch_index
            self.logger.info(f"schedule epoch {epoch_index + 1}: loss alpha = {alpha:.4f}")
