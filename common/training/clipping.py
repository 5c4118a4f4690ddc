"""Gradient clipping after every backward pass of a trainer (the global L2 norm of the gradients)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from ignite.engine import Engine


class GradientClipping:
    """Clip the gradient norm after every backward pass of a MONAI trainer, before the optimiser step.

    MONAI's ``SupervisedTrainer`` has no clipping option; it fires ``IterationEvents.BACKWARD_COMPLETED`` between
    ``loss.backward()`` and ``optimizer.step()``, which is where this handler calls
    ``torch.nn.utils.clip_grad_norm_`` (the SA Dice paper clips the L2 norm at 5, nnU-Net at 12).

    Args:
        parameters: the parameters whose gradients are clipped (network and, if any, trainable loss weights).
        max_norm: largest allowed norm of all gradients together.
        norm_type: type of the norm (2 for L2).
    """

    def __init__(self, parameters: Iterable[torch.nn.Parameter], max_norm: float = 5.0, norm_type: float = 2.0) -> None:
        if max_norm <= 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        self.parameters = list(parameters)
        self.max_norm = float(max_norm)
        self.norm_type = float(norm_type)

    def attach(self, engine: Engine) -> None:
        """Run after every backward pass of ``engine`` (a MONAI trainer)."""
        from monai.engines.utils import IterationEvents

        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Clip the gradients in place (not recorded as a metric: the epoch's metrics line would show the last one)."""
        if getattr(engine, "amp", False) and getattr(engine, "scaler", None) is not None:
            engine.scaler.unscale_(engine.optimizer)  # clip the true gradients, not the loss-scaled ones
        torch.nn.utils.clip_grad_norm_(self.parameters, self.max_norm, norm_type=self.norm_type)
