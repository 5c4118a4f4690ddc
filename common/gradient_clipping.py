"""Gradient-norm clipping for MONAI's ``SupervisedTrainer``, between the backward pass and the optimiser step."""

from __future__ import annotations

import torch
from ignite.engine import Engine
from monai.engines import IterationEvents

__all__ = ["GradientNormClipping"]


class GradientNormClipping:
    """Clip the global L2 norm of the network's gradients at every iteration (nnU-Net: ``max_norm=12``).

    ``SupervisedTrainer`` fires ``IterationEvents.BACKWARD_COMPLETED`` after ``loss.backward()`` and before
    ``optimizer.step()``; the gradients are clipped there (unscaled first when the trainer uses AMP).

    Args:
        max_norm: largest allowed norm of all gradients together.

    Raises:
        ValueError: ``max_norm`` is not positive.
    """

    def __init__(self, max_norm: float) -> None:
        if max_norm <= 0:
            raise ValueError(f"max_norm must be positive, got {max_norm}.")
        self.max_norm = max_norm

    def attach(self, engine: Engine) -> None:
        """Clip after every backward pass of ``engine`` (a ``SupervisedTrainer``)."""
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Clip ``engine.network``'s gradients in place."""
        if getattr(engine, "amp", False) and getattr(engine, "scaler", None) is not None:
            engine.scaler.unscale_(engine.optimizer)
        torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.max_norm)
