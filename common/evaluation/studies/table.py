"""Collection of a study's per-run CSVs into the paper's table: ``table.csv``, ``table.md``, box plots, convergence.

Values per case come from each complete run's ``eval/evaluation/case_metrics_per_case.csv`` (the bundle's
``CaseMetricsWriter``): Dice where the structure is in the label or the prediction (status not ``absent``), HD and
HD95 where it is in both (status ``present``), as ``scripts/compare_runs.py``. A structure marked ``average`` is
each case's mean over the study's other structures (defined ones only).

Aggregation (the study's ``aggregate``, as its paper averaged):

- ``cases`` (RW paper: mean ± std over cases, averaged over three runs): each case's mean over the runs (undefined
  when undefined in any run), then mean and std (ddof 1) over cases; the paired permutation test pairs these
  per-case means of a bundle with the reference's.
- ``runs`` (exp-log: mean ± std over five shuffles; SA Dice: mean over folds): each run's mean over its cases, then
  mean and std over runs; the test pairs the cases of the same run (split) of both bundles.

``p_value``: ``common.evaluation.statistics.paired_permutation_test`` (10,000 permutations, absolute mean
difference) of the bundle against the reference over the paired cases with finite values in both; empty for the
reference.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.evaluation.metrics import STATUS_ABSENT, STATUS_PRESENT
from common.evaluation.statistics import paired_permutation_test
from common.evaluation.studies.runs import PER_CASE_CSV, VALIDATION_CSV
from common.evaluation.studies.spec import Study, finite
from common.evaluation.tables import read_epoch_column, read_results_csv
from common.files import write_text_atomic

TABLE_COLUMNS = ("bundle", "structure", "metric", "mean", "std", "runs", "paper", "p_value", "paper_std", "paper_mark")
METRIC_TITLES = {"dice": "Dice", "hd": "HD (mm)", "hd95": "HD95 (mm)"}
CaseValues = dict[str, float]  # case -> value (NaN: undefined)


@dataclass(frozen=True)
class TableRow:
    """One row of ``table.csv``."""

    bundle: str
    structure: str
    metric: str
    mean: float
    std: float
    runs: int
    paper: float | None
    p_value: float
    paper_std: float | None
    paper_mark: bool


def _csv_structure_names(path: Path) -> list[str]:
    names: list[str] = []
    for result in read_results_csv(path):
        if result.structure not in names:
            names.append(result.structure)
    return names


def run_values(path: Path, study: Study) -> dict[tuple[str, str], CaseValues]:
    """Per-case values of one run: (study structure, metric) -> case -> value.

    Raises:
        ValueError: naming the file when a study structure is not in it.
    """
    results = read_results_csv(path)
    names = _csv_structure_names(path)
    values: dict[tuple[str, str], CaseValues] = {}
    plain = [structure for structure in study.structures if not structure.average]
    for structure in plain:
        if structure.csv is not None:
            name = structure.csv
        elif structure.order < len(names):
            name = names[structure.order]
        else:
            name = None
        if name is not None and name not in names:
            raise ValueError(f"{path}: no structure {name!r} (has {names}) for the study's {structure.name!r}")
        for metric in study.metrics:
            column: CaseValues = {}
            for result in results:
                if result.structure != name:
                    continue
                defined = result.status != STATUS_ABSENT if metric == "dice" else result.status == STATUS_PRESENT
                column[result.case] = float(getattr(result, metric)) if defined else math.nan
            values[(structure.name, metric)] = column
    for structure in study.structures:
        if structure.average:
            for metric in study.metrics:
                columns = [values[(other.name, metric)] for other in plain if values[(other.name, metric)]]
                cases = sorted(set().union(*columns)) if columns else []
                values[(structure.name, metric)] = {
                    case: _nanmean([column.get(case, math.nan) for column in columns]) for case in cases
                }
    return values


def _nanmean(values: Sequence[float]) -> float:
    finite_values = [value for value in values if math.isfinite(value)]
    return float(np.mean(finite_values)) if finite_values else math.nan


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    array = np.asarray([value for value in values if math.isfinite(value)], dtype=np.float64)
    mean = float(array.mean()) if array.size else math.nan
    std = float(array.std(ddof=1)) if array.size > 1 else math.nan
    return mean, std


def per_case_means(runs: Sequence[CaseValues]) -> CaseValues:
    """Each case's mean over the runs (NaN when undefined in any run or missing from one)."""
    if not runs:
        return {}
    cases = sorted(set().union(*runs))
    return {case: float(np.mean([run.get(case, math.nan) for run in runs])) for case in cases}


def collect_values(study: Study, run_dirs: dict[str, list[Path]]) -> dict[str, dict[int, dict]]:
    """Per-case values of every complete run: bundle -> run index -> (structure, metric) -> case -> value."""
    collected: dict[str, dict[int, dict]] = {}
    for bundle, directories in run_dirs.items():
        collected[bundle] = {}
        for directory in directories:
            if (directory / "done.json").is_file() and (directory / PER_CASE_CSV).is_file():
                index = int(directory.name.rpartition("_")[2])
                collected[bundle][index] = run_values(directory / PER_CASE_CSV, study)
    return collected


def _paired(study: Study, runs: dict[int, dict], key: tuple[str, str]) -> CaseValues:
    """The values the test pairs: per-case means over runs (``cases``) or ``run:case`` values (``runs``)."""
    if study.aggregate == "cases":
        return per_case_means([runs[index][key] for index in sorted(runs)])
    return {f"{index}:{case}": value for index in sorted(runs) for case, value in runs[index][key].items()}


def make_table(study: Study, values: dict[str, dict[int, dict]], n_permutations: int = 10_000) -> list[TableRow]:
    """One row per bundle x structure x metric (bundles with at least one complete run)."""
    rows = []
    reference = values.get(study.reference, {})
    for bundle in study.bundles:
        runs = values.get(bundle, {})
        if not runs:
            continue
        for structure in study.structures:
            for metric in study.metrics:
                key = (structure.name, metric)
                if study.aggregate == "cases":
                    mean, std = _mean_std(list(per_case_means([runs[i][key] for i in sorted(runs)]).values()))
                else:
                    mean, std = _mean_std([_nanmean(list(runs[i][key].values())) for i in sorted(runs)])
                p_value = math.nan
                if bundle != study.reference and reference:
                    mine, theirs = _paired(study, runs, key), _paired(study, reference, key)
                    shared = sorted(set(mine) & set(theirs))
                    p_value = paired_permutation_test(
                        [mine[case] for case in shared], [theirs[case] for case in shared], n_permutations
                    ).p_value
                paper = study.paper_cell(bundle, structure.name, metric)
                rows.append(
                    TableRow(
                        bundle,
                        structure.name,
                        metric,
                        mean,
                        std,
                        len(runs),
                        None if paper is None else paper.mean,
                        p_value,
                        None if paper is None else paper.std,
                        bool(paper and paper.marked),
                    )
                )
    return rows


def _number(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else repr(round(float(value), 6))


def table_csv(rows: Sequence[TableRow]) -> str:
    """``table.csv``'s text (empty fields for undefined values)."""
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(TABLE_COLUMNS)
    for row in rows:
        writer.writerow(
            [
                row.bundle,
                row.structure,
                row.metric,
                _number(row.mean),
                _number(row.std),
                row.runs,
                _number(row.paper),
                _number(row.p_value),
                _number(row.paper_std),
                "*" if row.paper_mark else "",
            ]
        )
    return stream.getvalue()


def _format(mean: float | None, std: float | None, metric: str, star: bool) -> str:
    if not finite(mean):
        return "n/a"
    digits = 3 if metric == "dice" else 2
    text = f"{mean:.{digits}f}"
    if finite(std):
        text += f" ± {std:.{digits}f}"
    return text + ("*" if star else "")


def table_markdown(study: Study, rows: Sequence[TableRow], alpha: float = 0.05, runs_note: str = "") -> str:
    """``table.md``: the paper's layout (methods x structures x metrics), our value beside the paper's."""
    lookup = {(row.bundle, row.structure, row.metric): row for row in rows}
    header = ["method", "bundle"] + [f"{s.name} {METRIC_TITLES[m]}" for s in study.structures for m in study.metrics]
    lines = [f"# {study.title}", "", f"{study.paper}, {study.table}. Each cell: ours / paper.", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for paper_row in study.rows:
        name = paper_row.label + (" (reference)" if paper_row.bundle == study.reference else "")
        cells = [name, f"`{paper_row.bundle}`" if paper_row.bundle else "(no bundle)"]
        for structure in study.structures:
            for metric in study.metrics:
                ours = lookup.get((paper_row.bundle, structure.name, metric)) if paper_row.bundle else None
                paper = study.paper_cell(paper_row.bundle, structure.name, metric) if paper_row.bundle else None
                if paper is None and (structure.name, metric) in paper_row.cells:
                    raw = paper_row.cells[(structure.name, metric)]
                    scale = study.paper_scale.get(metric, 1.0)
                    paper = type(raw)(raw.mean * scale, None if raw.std is None else raw.std * scale, raw.marked)
                ours_text = "-"
                if ours is not None:
                    ours_text = _format(ours.mean, ours.std, metric, finite(ours.p_value) and ours.p_value < alpha)
                paper_text = "-" if paper is None else _format(paper.mean, paper.std, metric, paper.marked)
                cells.append(f"{ours_text} / {paper_text}")
        lines.append("| " + " | ".join(cells) + " |")
    how = (
        "mean ± std over cases of each case's mean over the runs"
        if study.aggregate == "cases"
        else "mean ± std over runs of each run's mean over its cases"
    )
    lines += [
        "",
        f"Ours: {how}{runs_note}. * p < {alpha} in a paired permutation test (10,000 permutations, absolute mean "
        f"difference) against `{study.reference}`; the paper's * are its own marks.",
    ]
    if study.notes:
        lines += ["", study.notes.strip()]
    return "\n".join(lines) + "\n"


def box_plots(study: Study, values: dict[str, dict[int, dict]], output_dir: Path) -> list[Path]:
    """One PNG per metric: per structure, a box of each bundle's per-case values.

    The values are the per-case means over runs (``cases``) or every run's cases (``runs``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.evaluation.plots import save_figure  # matplotlib only when a figure is drawn

    bundles = [bundle for bundle in study.bundles if values.get(bundle)]
    paths = []
    for metric in study.metrics:
        structures = list(study.structures)
        figure, axes = plt.subplots(1, len(structures), figsize=(max(4.0, 2.2 * len(structures)), 4), squeeze=False)
        for axis, structure in zip(axes[0], structures, strict=True):
            data = []
            for bundle in bundles:
                column = _paired(study, values[bundle], (structure.name, metric))
                data.append([value for value in column.values() if math.isfinite(value)])
            axis.boxplot([d if d else [math.nan] for d in data], tick_labels=bundles if bundles else None)
            axis.set_title(structure.name, fontsize=9)
            axis.tick_params(axis="x", labelrotation=90, labelsize=7)
        axes[0][0].set_ylabel(METRIC_TITLES[metric])
        figure.suptitle(f"{study.title}: {METRIC_TITLES[metric]}", fontsize=10)
        figure.tight_layout()
        path = output_dir / f"boxplot_{metric}.png"
        save_figure(figure, path, overwrite=True, dpi=100)
        plt.close(figure)
        paths.append(path)
    return paths


def convergence_plot(study: Study, run_dirs: dict[str, list[Path]], output_dir: Path) -> Path | None:
    """Validation mean Dice per epoch of every complete run, one colour per bundle.

    The RW paper's Sec. 4.3 convergence study looks at these curves and their final values.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.evaluation.plots import save_figure  # matplotlib only when a figure is drawn

    figure, axis = plt.subplots(figsize=(6, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    plotted = False
    for number, bundle in enumerate(study.bundles):
        for directory in run_dirs.get(bundle, []):
            path = directory / VALIDATION_CSV
            if not (directory / "done.json").is_file() or not path.is_file():
                continue
            epochs, dice = read_epoch_column(path, "val_mean_dice")
            if not epochs:
                continue
            label = bundle if directory.name == "run_0" else None
            axis.plot(epochs, dice, color=colours[number % len(colours)], alpha=0.7, label=label)
            plotted = True
    if not plotted:
        plt.close(figure)
        return None
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation mean Dice")
    axis.legend(fontsize=7)
    figure.tight_layout()
    path = output_dir / "convergence.png"
    save_figure(figure, path, overwrite=True, dpi=100)
    plt.close(figure)
    return path


def write_outputs(study: Study, run_dirs: dict[str, list[Path]], output_dir: Path) -> dict[str, Path]:
    """Collect the complete runs and write the table, box plots and convergence figure under ``output_dir``.

    ``table.csv``, ``table.md``, ``boxplot_<metric>.png`` and (if the study asks) ``convergence.png``, each atomically.
    """
    values = collect_values(study, run_dirs)
    rows = make_table(study, values)
    counts = {bundle: len(values.get(bundle, {})) for bundle in study.bundles if bundle in run_dirs}
    note = " (complete runs: " + ", ".join(f"{bundle} {count}" for bundle, count in counts.items()) + ")"
    written = {
        "table.csv": write_text_atomic(table_csv(rows), output_dir / "table.csv"),
        "table.md": write_text_atomic(table_markdown(study, rows, runs_note=note), output_dir / "table.md"),
    }
    for path in box_plots(study, values, output_dir):
        written[path.name] = path
    if study.convergence:
        path = convergence_plot(study, run_dirs, output_dir)
        if path is not None:
            written[path.name] = path
    return written
