"""The RW paper's instability diagnostic: negative components of the RW loss gradient per voxel.

For the per-voxel RW loss ``l = sum_k p_k z_k`` with ``p = softmax(x)``, the gradient w.r.t. the logit ``x_j`` is
``dl/dx_j = p_j (z_j - sum_k p_k z_k)``. Gradient descent raises the logits with a negative component, so a
well-posed map has exactly one negative component per voxel (the true class). An RRW map guarantees that; an
RW-Boundary map with more than two classes gives several negative components at many voxels, which pushes the
prediction towards several classes at once: the instability the paper reports. The batch-mean RW loss scales each
voxel's gradient by a positive constant, so the signs, and the counts below, are the same for it.

:func:`integer_labels` and :func:`check_finite_scores` refuse the diagnostic's inputs that would give a wrong count
without an error: a label with fractional (or NaN) values, which rounding would turn into other classes, and logits
or probabilities with NaN or infinite values, whose softmax and gradient signs are undefined.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from common.errors import UserError, ensure_absent
from common.files import atomic_output

if TYPE_CHECKING:
    from ignite.engine import Engine

logger = logging.getLogger(__name__)


class DiagnosticInputError(UserError, ValueError):
    """A label or prediction file the diagnostic refuses; the message names the file and the problem."""


def integer_labels(label: np.ndarray, source: str | os.PathLike) -> np.ndarray:
    """``label`` as int64 when every value is a whole number; fractional, NaN or infinite values are refused.

    Args:
        label: label volume as read from ``source`` (any numeric type).
        source: the file it was read from, for the message.

    Returns:
        The label as an int64 array (no rounding: the values are whole numbers already).

    Raises:
        DiagnosticInputError: naming ``source``, how many voxels hold other values and a few of them.
    """
    label = np.asarray(label)
    if label.dtype.kind in "biu":
        return label.astype(np.int64)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(label) | (label != np.round(label))
    if bad.any():
        values = np.unique(label[bad])
        shown = ", ".join(f"{value:g}" for value in values[:5]) + (", ..." if values.size > 5 else "")
        raise DiagnosticInputError(
            f"{os.fspath(source)}: {int(bad.sum())} voxel(s) hold values that are not whole numbers ({shown}); "
            "a label volume holds class indices: give the label file itself, not an interpolated or averaged volume"
        )
    return label.astype(np.int64)


def check_finite_scores(values: np.ndarray, source: str | os.PathLike, probabilities: bool = False) -> None:
    """Refuse logits (or probabilities) with NaN or infinite values, naming the file and the counts.

    Raises:
        DiagnosticInputError: when some value is not finite.
    """
    values = np.asarray(values)
    if values.dtype.kind not in "fc" or np.isfinite(values).all():
        return
    nan, infinite = int(np.isnan(values).sum()), int(np.isinf(values).sum())
    kind = "probabilities" if probabilities else "logits"
    raise DiagnosticInputError(
        f"{os.fspath(source)}: {nan} NaN and {infinite} infinite value(s) among the {kind}; the gradient signs are "
        f"undefined there: give finite {kind}"
    )


def rw_logit_gradient(logits: torch.Tensor, rw_map: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Closed-form gradient of the per-voxel RW loss ``sum_k softmax(logits)_k z_k`` w.r.t. the logits.

    Args:
        logits: logits with the classes along ``dim``, e.g. ``(B, C, *spatial)``.
        rw_map: RW map of the same shape.
        dim: class dimension.

    Returns:
        ``p_j (z_j - sum_k p_k z_k)`` in float32, same shape as ``logits``.

    Raises:
        ValueError: when the shapes differ.
    """
    if logits.shape != rw_map.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and RW map {tuple(rw_map.shape)} must have the same shape.")
    probabilities = torch.softmax(logits.float(), dim=dim)
    rw_map = rw_map.float()
    expected_value = (probabilities * rw_map).sum(dim=dim, keepdim=True)
    return probabilities * (rw_map - expected_value)


def negative_component_count(logits: torch.Tensor, rw_map: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Number of negative components of the RW loss gradient at every voxel.

    Args:
        logits: logits with the classes along ``dim``.
        rw_map: RW map of the same shape.
        dim: class dimension.

    Returns:
        Integer tensor with ``dim`` removed, values in ``0..C``.
    """
    return (rw_logit_gradient(logits, rw_map, dim=dim) < 0).sum(dim=dim)


def multi_negative_counts(logits: torch.Tensor, rw_map: torch.Tensor, dim: int = 1) -> tuple[int, int]:
    """Voxels with more than one negative gradient component, and voxels the map supervises.

    Voxels where the map is zero for every class (padding, or an RW-Boundary map of a one-class patch) get no
    gradient at all and are left out of both counts.

    Args:
        logits: logits with the classes along ``dim``.
        rw_map: RW map of the same shape.
        dim: class dimension.

    Returns:
        ``(multi_negative_voxels, supervised_voxels)``.
    """
    supervised = (rw_map != 0).any(dim=dim)
    multi_negative = (negative_component_count(logits, rw_map, dim=dim) > 1) & supervised
    return int(multi_negative.sum()), int(supervised.sum())


def multi_negative_fraction(logits: torch.Tensor, rw_map: torch.Tensor, dim: int = 1) -> float:
    """Fraction of supervised voxels whose RW loss gradient has more than one negative component (NaN if none)."""
    multi_negative, supervised = multi_negative_counts(logits, rw_map, dim=dim)
    return multi_negative / supervised if supervised else float("nan")


def _full_resolution_head(pred: torch.Tensor, rw_map: torch.Tensor) -> torch.Tensor:
    """The first (full-resolution) head of stacked deep-supervision outputs ``(B, H, C, *spatial)``."""
    return pred[:, 0] if pred.ndim == rw_map.ndim + 1 else pred


def _first_output(pred: Any) -> Any:
    """The full-resolution output of a list of deep-supervision outputs (each at its own resolution), else ``pred``."""
    return pred[0] if isinstance(pred, list | tuple) else pred


def default_diagnostic_transform(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, rw_map)`` batches from a MONAI trainer output (decollated list of dicts, or one dict).

    The trainer's ``label`` is whatever the loss received (the bundles' ``PrepareBatchKeys`` hands it the RW map);
    ``pred`` is the network output, possibly with deep supervision heads (stacked, or a list of outputs at their own
    resolutions), of which the first is used.
    """
    items = output if isinstance(output, list) else [output]
    preds = [_first_output(item["pred"]) for item in items]
    maps = [item["label"] for item in items]
    if isinstance(output, list):  # decollated items lack the batch dimension
        preds, maps = [p[None] for p in preds], [m[None] for m in maps]
    rw_map = torch.cat([torch.as_tensor(m) for m in maps]).detach()
    pred = torch.cat([torch.as_tensor(p) for p in preds]).detach()
    return _full_resolution_head(pred, rw_map), rw_map


class InstabilityDiagnosticHandler:
    """Ignite handler logging the fraction of voxels with more than one negative RW-gradient component.

    Attach to a trainer (MONAI ``SupervisedTrainer``). Every ``interval`` iterations it takes the logits and the RW
    map of the batch (``output_transform``), counts voxels whose closed-form gradient has more than one negative
    component (among the voxels the map supervises, see `multi_negative_counts`), and at the end of each epoch
    stores the epoch fraction in ``engine.state.metrics[metric_name]``, logs it, and (with ``filename``) rewrites a
    CSV of ``epoch,fraction`` rows atomically.

    Args:
        metric_name: key in ``engine.state.metrics`` and the CSV column.
        interval: iterations between two measurements.
        output_transform: maps ``engine.state.output`` to ``(logits, rw_map)`` batches ``(B, C, *spatial)``.
        map_channels_from: first channel of the map in the target; 1 for targets that stack the label in channel 0
            before the map (``RWWeightedCrossEntropyLoss``, ``RWCombinedLoss``), 0 when the target is the map.
        filename: optional CSV file of the per-epoch fractions.
        overwrite: replace an existing ``filename``; otherwise it raises when the handler is attached.
    """

    def __init__(
        self,
        metric_name: str = "multi_negative_fraction",
        interval: int = 1,
        output_transform: Callable[[Any], tuple[torch.Tensor, torch.Tensor]] = default_diagnostic_transform,
        map_channels_from: int = 0,
        filename: str | os.PathLike | None = None,
        overwrite: bool = False,
    ) -> None:
        if interval < 1:
            raise ValueError(f"interval must be at least 1, got {interval}.")
        self.metric_name = metric_name
        self.interval = interval
        self.output_transform = output_transform
        self.map_channels_from = map_channels_from
        self.filename = Path(filename) if filename is not None else None
        self.overwrite = overwrite
        self.history: list[tuple[int, float]] = []
        self._multi_negative_voxels = 0
        self._voxels = 0

    def attach(self, engine: Engine) -> None:
        """Register the callbacks on ``engine``."""
        from ignite.engine import Events

        if self.filename is not None:
            ensure_absent(self.filename, overwrite=self.overwrite)
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def reset(self, engine: Engine) -> None:
        """Start counting a new epoch."""
        self._multi_negative_voxels = 0
        self._voxels = 0

    def iteration_completed(self, engine: Engine) -> None:
        """Count the voxels of the current batch."""
        logits, target = self.output_transform(engine.state.output)
        rw_map = target[:, self.map_channels_from :]
        multi_negative, supervised = multi_negative_counts(logits, rw_map)
        self._multi_negative_voxels += multi_negative
        self._voxels += supervised

    def epoch_completed(self, engine: Engine) -> None:
        """Publish the epoch fraction as a metric, in the log and in the CSV file."""
        if not self._voxels:
            return
        fraction = self._multi_negative_voxels / self._voxels
        engine.state.metrics[self.metric_name] = fraction
        self.history.append((int(engine.state.epoch), fraction))
        logger.info("Epoch %d: %s = %.6f", engine.state.epoch, self.metric_name, fraction)
        if self.filename is not None:
            with atomic_output(self.filename) as temporary, open(temporary, "w", newline="") as stream:
                writer = csv.writer(stream)
                writer.writerow(["epoch", self.metric_name])
                writer.writerows(self.history)
