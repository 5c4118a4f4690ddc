"""Small pieces that MONAI engines need for the bundles: batch preparation, deep supervision, metrics output.

They are meant to be referenced from bundle configs, e.g.::

    prepare_batch: {_target_: common.engines.PrepareBatchKeys, image_key: image, target_key: rw_map}
    loss: {_target_: common.engines.StackedDeepSupervisionLoss, loss: "@region_loss"}
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.metrics.metric import reinit__is_reduced
from monai.engines.utils import PrepareBatch
from monai.handlers import HausdorffDistance
from monai.losses import DeepSupervisionLoss

from common.data import atomic_output
from common.errors import OptionError, OutputExistsError


def ensure_absent(*paths: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse to start a run that would replace earlier results.

    Args:
        paths: files the run is going to write (checkpoints, metric tables).
        overwrite: allow replacing them.

    Raises:
        OutputExistsError: one of ``paths`` exists and ``overwrite`` is False; the message names the file and the
            fix. It is a ``FileExistsError``.
        OptionError: ``overwrite`` is not a bool (``--overwrite true`` on the command line gives the string
            "true"). It is a ``TypeError``.
    """
    if not isinstance(overwrite, bool):
        raise OptionError(f"overwrite must be True or False, got {overwrite!r}; pass --overwrite True (capitalised)")
    if overwrite:
        return
    for path in paths:
        if Path(path).exists():
            raise OutputExistsError(
                f"{path}: already exists from an earlier run; pass --overwrite to replace it or choose another "
                "output location"
            )


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


class StackedDeepSupervisionLoss(DeepSupervisionLoss):
    """:class:`monai.losses.DeepSupervisionLoss` for networks that stack their outputs along dimension 1.

    MONAI's ``DynUNet`` returns its deep supervision heads, upsampled to the full size, as one tensor of shape
    ``(B, 1 + deep_supr_num, C, *spatial)`` in training mode and a plain ``(B, C, *spatial)`` tensor in
    evaluation mode. This loss unbinds the stacked form into the list ``DeepSupervisionLoss`` weights (the full
    resolution output first) and passes the plain form through.
    """

    def forward(self, input: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Weighted sum of the wrapped loss over the supervision heads.

        Args:
            input: stacked ``(B, H, C, *spatial)`` heads, a list of heads, or one ``(B, C, *spatial)`` output.
            target: ``(B, C', *spatial)`` target of the wrapped loss.

        Returns:
            The loss.
        """
        if isinstance(input, torch.Tensor) and input.ndim == target.ndim + 1:
            input = list(torch.unbind(input, dim=1))
        return super().forward(input, target)


class SpacingHausdorffDistance(HausdorffDistance):
    """:class:`monai.handlers.HausdorffDistance` in millimetres: the spacing comes from each prediction's affine.

    MONAI's handler measures in voxels; on anisotropic volumes (ACDC: ~1.5 x 1.5 x 10 mm) that is not the
    figure the papers report. Predictions must be channel-first ``MetaTensor`` items (decollated batches).
    """

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        """Add a batch.

        Args:
            output: ``(y_pred, y)``, each a list of channel-first one-hot ``MetaTensor`` items.

        Raises:
            ValueError: ``output`` is not a pair or a prediction carries no affine.
        """
        if len(output) != 2:
            raise ValueError(f"output must have length 2, got {len(output)}.")
        y_pred, y = output
        spacing = []
        for item in y_pred:
            if not hasattr(item, "pixdim"):
                raise ValueError("SpacingHausdorffDistance needs MetaTensor predictions that carry an affine")
            spacing.append([float(value) for value in item.pixdim])
        self.metric_fn(y_pred, y, spacing=spacing)


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
    ``torch.nn.utils.clip_grad_norm_`` (the SA Dice paper clips the L2 norm at 5).

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
        """Clip the gradients in place and record the norm before clipping as ``grad_norm``."""
        norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.max_norm, norm_type=self.norm_type)
        engine.state.metrics["grad_norm"] = float(norm)
