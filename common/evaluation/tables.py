"""Tables of per-case metrics: summaries per structure, their text form, and the CSV files written and read."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from common.errors import ensure_absent
from common.evaluation.metrics import (
    RESULT_COLUMNS,
    STATUS_ABSENT,
    STATUS_FALSE_POSITIVE,
    STATUS_MISSED,
    STATUS_PRESENT,
    StructureResult,
)
from common.files import atomic_output

STATUSES = (STATUS_PRESENT, STATUS_MISSED, STATUS_FALSE_POSITIVE, STATUS_ABSENT)


def _finite_mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for fewer than two values)."""
    array = np.asarray(values, dtype=np.float64)
    mean = float(array.mean()) if array.size else math.nan
    std = float(array.std(ddof=1)) if array.size > 1 else math.nan
    return mean, std


def summarize(results: Sequence[StructureResult]) -> list[dict[str, Any]]:
    """Mean +- std per structure, with explicit counts of how each case entered it.

    Dice statistics use every case where the structure is in the ground truth or the prediction (``missed`` and
    ``false_positive`` count as 0); ``absent`` cases are excluded and counted. HD/HD95 statistics use only
    ``present`` cases, since the distance is infinite otherwise; the excluded cases are the ``missed`` and
    ``false_positive`` counts.

    Args:
        results: per-case results, any number of cases.

    Returns:
        One dict per structure (first-seen order) with ``structure``, ``n_cases``, the four status counts,
        ``dice_mean``, ``dice_std``, ``hd_mean``, ``hd_std``, ``hd95_mean``, ``hd95_std``.
    """
    by_structure: dict[str, list[StructureResult]] = {}
    for result in results:
        by_structure.setdefault(result.structure, []).append(result)
    summary = []
    for name, rows in by_structure.items():
        entry: dict[str, Any] = {"structure": name, "n_cases": len(rows)}
        for status in (STATUS_PRESENT, STATUS_MISSED, STATUS_FALSE_POSITIVE, STATUS_ABSENT):
            entry[f"n_{status}"] = sum(row.status == status for row in rows)
        entry["dice_mean"], entry["dice_std"] = _finite_mean_std([r.dice for r in rows if r.status != STATUS_ABSENT])
        present = [r for r in rows if r.status == STATUS_PRESENT]
        entry["hd_mean"], entry["hd_std"] = _finite_mean_std([r.hd for r in present])
        entry["hd95_mean"], entry["hd95_std"] = _finite_mean_std([r.hd95 for r in present])
        summary.append(entry)
    return summary


def format_summary(summary: Sequence[Mapping[str, Any]]) -> str:
    """Human-readable ``mean +- std`` lines of a `summarize` output."""
    lines = []
    for entry in summary:
        lines.append(
            f"{entry['structure']}: Dice {entry['dice_mean']:.4f} +- {entry['dice_std']:.4f}, "
            f"HD {entry['hd_mean']:.2f} +- {entry['hd_std']:.2f} mm, "
            f"HD95 {entry['hd95_mean']:.2f} +- {entry['hd95_std']:.2f} mm "
            f"(cases {entry['n_cases']}: present {entry['n_present']}, missed {entry['n_missed']}, "
            f"false positive {entry['n_false_positive']}, absent {entry['n_absent']})"
        )
    return "\n".join(lines)


def write_rows_csv(
    rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, columns: Sequence[str], overwrite: bool = False
) -> None:
    """Write dict rows to a CSV file atomically (floats with full precision; ``inf``/``nan`` as text).

    Raises:
        FileExistsError: when ``path`` exists and ``overwrite`` is False.
    """
    ensure_absent(path, overwrite=overwrite)
    with atomic_output(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def write_results_csv(results: Sequence[StructureResult], path: str | os.PathLike, overwrite: bool = False) -> None:
    """Write per-case results as a long-format CSV (one row per case and structure)."""
    write_rows_csv([asdict(r) for r in results], path, RESULT_COLUMNS, overwrite=overwrite)


def write_summary_csv(summary: Sequence[Mapping[str, Any]], path: str | os.PathLike, overwrite: bool = False) -> None:
    """Write a `summarize` output as CSV."""
    columns = list(summary[0].keys()) if summary else ["structure"]
    write_rows_csv(summary, path, columns, overwrite=overwrite)


def read_results_csv(path: str | os.PathLike) -> list[StructureResult]:
    """Read a CSV written by `write_results_csv`, checking every value against its status.

    A ``present`` structure has a Dice in [0, 1] and a distance >= 0 (or NaN where distances were not computed);
    ``missed`` and ``false_positive`` have Dice 0 and infinite distances; ``absent`` has NaN everywhere.

    Raises:
        ValueError: naming the file (and line) when columns are missing, the file has no rows, or a value does not
            parse or contradicts its status.
    """
    with open(path, newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        missing = set(RESULT_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: not an evaluation CSV, missing columns {sorted(missing)}.")
        results = []
        for line, row in enumerate(reader, start=2):
            try:
                result = StructureResult(
                    case=row["case"],
                    structure=row["structure"],
                    labels=row["labels"],
                    status=row["status"],
                    dice=float(row["dice"]),
                    hd=float(row["hd"]),
                    hd95=float(row["hd95"]),
                    gt_voxels=int(row["gt_voxels"]),
                    pred_voxels=int(row["pred_voxels"]),
                )
                _check_result(result)
            except (TypeError, ValueError) as error:
                raise ValueError(f"{path}, line {line}: {error}") from error
            results.append(result)
    if not results:
        raise ValueError(f"{path}: no rows; an evaluation CSV holds one row per case and structure.")
    return results


def read_epoch_column(path: str | os.PathLike, column: str) -> tuple[list[int], list[float]]:
    """Epochs and values of one column of a per-epoch CSV such as ``eval/validation_metrics.csv``.

    Rows without a value in that column (epochs that were not validated) are left out.

    Raises:
        ValueError: naming the file (and line) when the ``epoch`` or ``column`` column is missing or a value does
            not parse.
    """
    with open(path, newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        if not {"epoch", column} <= set(reader.fieldnames or ()):
            raise ValueError(f"{path}: no 'epoch' and '{column}' columns")
        epochs, values = [], []
        for line, row in enumerate(reader, start=2):
            if not row[column]:
                continue
            try:
                epochs.append(int(row["epoch"]))
                values.append(float(row[column]))
            except ValueError as error:
                raise ValueError(f"{path}, line {line}: {error}") from error
    return epochs, values


def _check_result(result: StructureResult) -> None:
    """Refuse values that no evaluation writes for the row's status (see `read_results_csv`)."""
    if result.status not in STATUSES:
        raise ValueError(f"status {result.status!r} is not one of {', '.join(STATUSES)}")
    distances = (result.hd, result.hd95)
    if result.status == STATUS_PRESENT:
        if not 0.0 <= result.dice <= 1.0:
            raise ValueError(f"Dice {result.dice} of a present structure is outside [0, 1]")
        if any(math.isinf(value) or value < 0 for value in distances):
            raise ValueError(f"distances {distances} of a present structure must be >= 0 and finite (or nan)")
    elif result.status == STATUS_ABSENT:
        if not all(math.isnan(value) for value in (result.dice, *distances)):
            raise ValueError(f"an absent structure has no Dice or distance (nan), got {result.dice}, {distances}")
    elif result.dice != 0.0 or not all(math.isinf(value) for value in distances):
        raise ValueError(f"a {result.status} structure has Dice 0 and inf distances, got {result.dice}, {distances}")
