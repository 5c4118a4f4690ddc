"""Metric tables of a training run: one CSV row per validation with the mean and per-class metrics."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from common.errors import ensure_absent
from common.files import atomic_output


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
        """The rows written so far (for a resumed training, see :class:`common.training.resume.ResumableTraining`)."""
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
