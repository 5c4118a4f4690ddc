"""Study files (``bundles/studies/*.yaml``): a paper's table as data, read and checked into :class:`Study`.

A study names the bundles of one table of a paper, its reference (proposed) method, how runs differ (training seeds
on one split, shuffles or folds of the split), the data layout and split protocol, the structures and metrics, how
runs are averaged, and the paper's reported value of every cell (with its significance mark as a separate field).
``demo`` holds the tiny settings and synthetic data of ``--demo``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[3]
STUDIES_DIR = REPO_ROOT / "bundles" / "studies"
BUNDLES_DIR = REPO_ROOT / "bundles"
METRICS = ("dice", "hd", "hd95")
VARY = ("seed", "shuffle", "fold")
AGGREGATES = ("cases", "runs")
# release layout -> preparation script (scripts/) and its split options per run
LAYOUTS = {"acdc": "prepare_acdc.py", "brats": "prepare_brats.py", "kits19": "prepare_kits.py", "msd": "prepare_msd.py"}


class StudyError(ValueError):
    """A user error about a study, its options or its files (one line naming the file or option)."""


@dataclass(frozen=True)
class PaperCell:
    """One reported value: mean, std (None when the paper gives none) and the paper's significance mark."""

    mean: float
    std: float | None = None
    marked: bool = False


@dataclass(frozen=True)
class Structure:
    """A column group of the table: the paper's name, and how to find it in the per-case CSVs.

    Attributes:
        name: the paper's name.
        csv: the structure name in the bundles' per-case CSVs; None: the ``order``-th structure of the CSV
            (data sets whose class names are the user's, e.g. MSD-style folders).
        order: position among the CSV's structures (0-based), used when ``csv`` is None.
        average: the mean over the study's other structures of each case (the exp-log paper's "Average").
    """

    name: str
    csv: str | None = None
    order: int = 0
    average: bool = False


@dataclass(frozen=True)
class Row:
    """A method of the paper's table: a bundle (None for a method that has no bundle here) and its values."""

    bundle: str | None
    label: str
    cells: dict[tuple[str, str], PaperCell] = field(default_factory=dict)


@dataclass(frozen=True)
class Study:
    """A paper's table as a study (see the module docstring and ``bundles/studies/README`` of each file)."""

    name: str
    path: Path
    title: str
    paper: str
    table: str
    layout: str
    prepare_args: tuple[str, ...]
    vary: str
    runs: int
    aggregate: str
    reference: str
    metrics: tuple[str, ...]
    structures: tuple[Structure, ...]
    rows: tuple[Row, ...]
    paper_scale: dict[str, float]
    settings: dict[str, Any]
    demo: dict[str, Any]
    convergence: bool
    notes: str = ""

    @property
    def bundles(self) -> list[str]:
        """The study's bundles in table order."""
        return [row.bundle for row in self.rows if row.bundle is not None]

    def paper_cell(self, bundle: str, structure: str, metric: str) -> PaperCell | None:
        """The paper's value of a cell in our units (``paper_scale`` applied), or None."""
        for row in self.rows:
            if row.bundle == bundle and (structure, metric) in row.cells:
                cell = row.cells[(structure, metric)]
                scale = self.paper_scale.get(metric, 1.0)
                std = None if cell.std is None else cell.std * scale
                return PaperCell(cell.mean * scale, std, cell.marked)
        return None


def list_studies(directory: Path = STUDIES_DIR) -> list[str]:
    """Names of the study files in ``directory``."""
    return sorted(path.stem for path in directory.glob("*.yaml"))


def _require(mapping: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Path) -> Any:
    if key not in mapping:
        raise StudyError(f"{path}: missing '{key}'")
    value = mapping[key]
    if not isinstance(value, kind):
        raise StudyError(f"{path}: '{key}' must be {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _paper_cell(value: Any, where: str, path: Path) -> PaperCell:
    """``[mean, std]`` or a bare ``mean``."""
    items = value if isinstance(value, list) else [value]
    if not 1 <= len(items) <= 2 or not all(isinstance(item, int | float) for item in items):
        raise StudyError(f"{path}: {where}: expected MEAN or [MEAN, STD], got {value!r}")
    return PaperCell(float(items[0]), float(items[1]) if len(items) == 2 else None)


def _parse_row(raw: Any, structures: list[str], metrics: tuple[str, ...], path: Path) -> Row:
    if not isinstance(raw, dict) or "label" not in raw:
        raise StudyError(f"{path}: each row needs a 'label' (and 'bundle', null for a paper-only method)")
    bundle, label = raw.get("bundle"), str(raw["label"])
    if bundle is not None and not (BUNDLES_DIR / str(bundle) / "configs" / "train.yaml").is_file():
        raise StudyError(f"{path}: row {label!r}: no bundle {bundle!r} in {BUNDLES_DIR}")
    cells = {}
    for structure, values in (raw.get("paper") or {}).items():
        if structure not in structures or not isinstance(values, dict):
            raise StudyError(f"{path}: row {label!r}: unknown structure {structure!r} (known: {structures})")
        for metric, value in values.items():
            if metric not in metrics:
                raise StudyError(f"{path}: row {label!r}, {structure}: metric {metric!r} is not among {metrics}")
            cells[(structure, metric)] = _paper_cell(value, f"row {label!r}, {structure} {metric}", path)
    for mark in raw.get("marks") or []:
        structure, _, metric = str(mark).rpartition(" ")
        if (structure, metric) not in cells:
            raise StudyError(f"{path}: row {label!r}: mark {mark!r} names no reported cell ('STRUCTURE METRIC')")
        cell = cells[(structure, metric)]
        cells[(structure, metric)] = PaperCell(cell.mean, cell.std, True)
    return Row(None if bundle is None else str(bundle), label, cells)


def load_study(name_or_path: str | os.PathLike, directory: Path = STUDIES_DIR) -> Study:
    """Read and check a study file, by name (``rw_acdc17``) or path.

    Raises:
        StudyError: unknown study, or a file that does not follow the format (naming the file and the entry).
    """
    text = str(name_or_path)
    path = Path(text) if text.endswith((".yaml", ".yml")) else directory / f"{text}.yaml"
    if not path.is_file():
        raise StudyError(f"{text}: no such study; known: {', '.join(list_studies(directory))} (see --list)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise StudyError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from error
    if not isinstance(raw, dict):
        raise StudyError(f"{path}: expected a mapping")
    metrics = tuple(_require(raw, "metrics", list, path))
    if not metrics or any(metric not in METRICS for metric in metrics):
        raise StudyError(f"{path}: 'metrics' must be a non-empty list of {METRICS}, got {list(metrics)}")
    structures = []
    for order, item in enumerate(_require(raw, "structures", list, path)):
        item = {"name": item} if isinstance(item, str) else item
        if not isinstance(item, dict) or "name" not in item:
            raise StudyError(f"{path}: structure {order}: expected NAME or a mapping with 'name'")
        structures.append(
            Structure(
                str(item["name"]),
                None if item.get("csv") is None else str(item["csv"]),
                int(item.get("order", order)),
                bool(item.get("average", False)),
            )
        )
    names = [structure.name for structure in structures]
    if len(set(names)) != len(names):
        raise StudyError(f"{path}: structure names must be distinct, got {names}")
    rows = tuple(_parse_row(row, names, metrics, path) for row in _require(raw, "rows", list, path))
    bundles = [row.bundle for row in rows if row.bundle]
    if len(set(bundles)) != len(bundles) or not bundles:
        raise StudyError(f"{path}: 'rows' must name at least one bundle, each once")
    reference = str(_require(raw, "reference", str, path))
    if reference not in bundles:
        raise StudyError(f"{path}: reference {reference!r} is not one of the rows' bundles {bundles}")
    layout, vary, aggregate = raw.get("layout"), raw.get("vary"), raw.get("aggregate")
    if layout not in LAYOUTS:
        raise StudyError(f"{path}: 'layout' must be one of {sorted(LAYOUTS)}, got {layout!r}")
    if vary not in VARY:
        raise StudyError(f"{path}: 'vary' must be one of {VARY}, got {vary!r}")
    if aggregate not in AGGREGATES:
        raise StudyError(f"{path}: 'aggregate' must be one of {AGGREGATES}, got {aggregate!r}")
    runs = _require(raw, "runs", int, path)
    if runs < 1:
        raise StudyError(f"{path}: 'runs' must be at least 1")
    scale = {str(key): float(value) for key, value in (raw.get("paper_scale") or {}).items()}
    return Study(
        name=path.stem,
        path=path,
        title=str(_require(raw, "title", str, path)),
        paper=str(_require(raw, "paper", str, path)),
        table=str(_require(raw, "table", str, path)),
        layout=layout,
        prepare_args=tuple(str(item) for item in raw.get("prepare_args") or ()),
        vary=vary,
        runs=runs,
        aggregate=aggregate,
        reference=reference,
        metrics=metrics,
        structures=tuple(structures),
        rows=rows,
        paper_scale=scale,
        settings=dict(raw.get("settings") or {}),
        demo=dict(raw.get("demo") or {}),
        convergence=bool(raw.get("convergence", False)),
        notes=str(raw.get("notes", "")),
    )


def finite(value: float | None) -> bool:
    """Whether ``value`` is a finite number."""
    return value is not None and math.isfinite(value)
