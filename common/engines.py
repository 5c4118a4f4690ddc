"""Small pieces that MONAI engines need for the bundles: batch preparation, metrics, gradient clipping, output.

They are meant to be referenced from bundle configs, e.g.::

    prepare_batch: {_target_: common.engines.PrepareBatchKeys, image_key: image, target_key: target}
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.metrics.metric import Metric, reinit__is_reduced
from monai.engines.utils import PrepareBatch

from common.data import atomic_output
from common.errors import OptionError, ensure_absent
from common.evaluation import (
    STATUS_ABSENT,
    STATUS_PRESENT,
    StructureResult,
    class_structures,
    evaluate_case,
    label_map,
    spacing_from_affine,
)

logger = logging.getLogger(__name__)


class PrepareBatchKeys(PrepareBatch):
    """Take the network input and the loss target from named keys of a dictionary batch.

    MONAI's default reads ``image`` and ``label``; the RW-loss bundles train against an RW map stored under
    another key (``rw_map``) while keeping the label for cropping and metrics.

    Args:
        image_key: key of the network input.
        target_key: key of the target handed to the loss (and to the metrics).
    """

    def __init__(self, image_key: str = "image", target_key: str = "label") -> None:
        self.image_key = image_key
        self.target_key = target_key

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(input, target)`` moved to ``device``."""
        return tuple(
            batchdata[key].to(device=device, non_blocking=non_blocking, **kwargs)
            for key in (self.image_key, self.target_key)
        )


class SegmentationMetric(Metric):
    """Per-class Dice or Hausdorff distance (mm) of whole validation volumes, from :mod:`common.evaluation`.

    For training-time validation in place of MONAI's ``MeanDice`` / ``HausdorffDistance`` handlers: the same
    values (HD in mm from each label's affine, like MONAI's with ``spacing``), computed on integer label maps with
    the cropped KD-tree search of :func:`common.evaluation.evaluate_case`: with the label-map postprocessing of the
    bundles a validation case costs 1/1.7 (4 classes) to 1/4 (20 classes) of MONAI's one-hot path
    (``scripts/bench_validation.py``), memory does not grow with the class count, and no warning is given for every
    class that a case lacks. Undefined entries are NaN and left out of every mean: Dice of a
    class in neither the label nor the prediction; HD of a class missing from either (MONAI: ``inf`` and a warning).
    Dice of a class in only one of them is 0, as in :func:`common.evaluation.summarize`.

    The value is the mean over classes per case, then over cases (MONAI's ``"mean"`` reduction). The per-case,
    per-class values go to ``engine.state.metric_details[name]`` as MONAI's ``save_details`` does, which is what
    :class:`EpochMetricsCSV` writes. In a distributed run the cases of all processes are gathered first. With
    ``log_time`` the metric logs how long each validation run took (from the start of the evaluator's epoch).

    Args:
        num_classes: classes including background.
        metric: ``"dice"``, ``"hd"`` (Hausdorff distance) or ``"hd95"`` (its 95th percentile variant).
        include_background: also score class 0.
        output_transform: maps the evaluator output to ``(y_pred, y)``: lists of channel-first items (decollated)
            or batch-first tensors, each one-hot ``(C, *spatial)`` or a label map ``(1, *spatial)``.
        log_time: log the duration of each validation run (set it on one metric of the evaluator).
    """

    def __init__(
        self,
        num_classes: int,
        metric: str = "dice",
        include_background: bool = False,
        output_transform: Callable[[Any], Any] = lambda output: output,
        log_time: bool = False,
    ) -> None:
        if metric not in ("dice", "hd", "hd95"):
            raise OptionError(f"metric must be 'dice', 'hd' or 'hd95', got {metric!r}")
        self.metric = metric
        self.structures = class_structures(num_classes, include_background=include_background)
        self.log_time = log_time
        self._rows: list[list[float]] = []
        super().__init__(output_transform=output_transform, skip_unrolling=True)  # calls reset()

    @reinit__is_reduced
    def reset(self) -> None:
        """Forget the cases of the previous validation run and start its clock."""
        self._rows = []
        self._started = time.perf_counter()
        self._scoring_seconds = 0.0

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        """Score the cases of one batch.

        Args:
            output: ``(y_pred, y)`` (see the class docstring).
        """
        started = time.perf_counter()
        y_pred, y = output
        pairs = zip(*(torch.unbind(v) if isinstance(v, torch.Tensor) else v for v in (y_pred, y)), strict=True)
        for pred, label in pairs:
            affine = getattr(label, "affine", None)
            spacing = spacing_from_affine(affine)[: label.ndim - 1] if affine is not None else None
            results = evaluate_case(
                label_map(pred), label_map(label), self.structures, spacing, distances=self.metric != "dice"
            )
            self._rows.append([self._value(result) for result in results])
        self._scoring_seconds += time.perf_counter() - started

    def _value(self, result: StructureResult) -> float:
        defined = result.status != STATUS_ABSENT if self.metric == "dice" else result.status == STATUS_PRESENT
        return float(getattr(result, self.metric)) if defined else math.nan

    def details(self) -> torch.Tensor:
        """``(cases, classes)`` values of all processes (NaN where undefined)."""
        rows = self._rows
        if idist.get_world_size() > 1:
            rows = [row for part in idist.all_gather(json.dumps(rows)) for row in json.loads(part)]
        return torch.tensor(rows, dtype=torch.float64).reshape(len(rows), len(self.structures))

    @staticmethod
    def _mean(details: torch.Tensor) -> float:
        per_case = torch.nanmean(details, dim=1)
        return float(torch.nanmean(per_case)) if per_case.numel() else math.nan

    def compute(self) -> float:
        """Mean over classes per case, then over cases, leaving out undefined values (NaN when none is defined)."""
        return self._mean(self.details())

    def completed(self, engine: Engine, name: str) -> None:
        """Put the value and the per-case details into ``engine.state`` and log the run's duration."""
        details = self.details()
        engine.state.metrics[name] = self._mean(details)
        if not hasattr(engine.state, "metric_details"):
            engine.state.metric_details = {}
        engine.state.metric_details[name] = details
        if self.log_time:
            logger.info(
                "validation of epoch %d: %d case(s) in %.2f s (%s scoring %.2f s)",
                engine.state.epoch,
                len(details),
                time.perf_counter() - self._started,
                self.metric,
                self._scoring_seconds,
            )


class EpochMetricsCSV:
    """Write one CSV row per validation run: the epoch, the scalar metrics and their per-class means.

    Attach it to the evaluator that ``ValidationHandler`` runs, whose ``state.epoch`` is the trainer's epoch.
    Per-class columns come from the metrics' ``save_details`` (``state.metric_details``, one row per case, one
    column per class) and are the NaN-ignoring mean over cases. The file is rewritten atomically after every
    row, so it is always complete even if training stops.

    Args:
        filename: CSV file to write.
        class_names: names of the classes in the metric details, in channel order (background excluded when
            the metrics exclude it).
        overwrite: replace an existing file; otherwise an existing file stops the run at ``attach``.
    """

    def __init__(self, filename: str | os.PathLike, class_names: Sequence[str] = (), overwrite: bool = False) -> None:
        self.filename = Path(filename)
        self.class_names = list(class_names)
        self.overwrite = overwrite
        self.rows: list[dict[str, float | int]] = []

    def attach(self, engine: Engine) -> None:
        """Check the destination and register the writer on ``EPOCH_COMPLETED``."""
        ensure_absent(self.filename, overwrite=self.overwrite)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Append the row of the finished validation run and rewrite the file."""
        row: dict[str, float | int] = {"epoch": int(engine.state.epoch)}
        for name, value in engine.state.metrics.items():
            if isinstance(value, int | float) or (torch.is_tensor(value) and value.numel() == 1):
                row[name] = float(value)
        for name, details in getattr(engine.state, "metric_details", {}).items():
            per_class = torch.nanmean(torch.as_tensor(details, dtype=torch.float64), dim=0).flatten()
            names = self.class_names if len(self.class_names) == per_class.numel() else range(per_class.numel())
            for class_name, value in zip(names, per_class.tolist(), strict=True):
                row[f"{name}_{class_name}"] = value if math.isfinite(value) else float("nan")
        self.rows.append(row)
        self._write()

    def state_dict(self) -> dict[str, list[dict[str, float | int]]]:
        """The rows written so far (for a resumed training, see :class:`common.checkpoint.ResumableTraining`)."""
        return {"rows": [dict(row) for row in self.rows]}

    def load_state_dict(self, state_dict: dict[str, list[dict[str, float | int]]]) -> None:
        """Restore the rows of :meth:`state_dict`; the next validation appends to them and rewrites the file."""
        self.rows = [dict(row) for row in state_dict["rows"]]

    def _write(self) -> None:
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        with atomic_output(self.filename) as tmp_path:
            tmp_path.write_text(buffer.getvalue())


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
