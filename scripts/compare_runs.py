"""Compare evaluation CSVs of several runs (losses) in a table like the papers', with permutation tests.

Each ``--run NAME=CSV`` is a per-case CSV written by ``scripts/evaluate_folder.py`` or a bundle's evaluate.yaml
(``CaseMetricsWriter``). Rows of the table are runs, columns are structures x metrics, cells are
``mean +- std`` over cases (Dice over cases where the structure is in the label or the prediction, HD/HD95 over
cases where it is in both, as in ``common.evaluation.summarize``). Every non-reference cell carries the p-value
of a paired permutation test (10,000 permutations, absolute mean difference) against the reference run on the
cases both runs share with finite values; ``*`` marks p < alpha.

    python scripts/compare_runs.py --run RRW=eval/rrw.csv --run Dice=eval/dice.csv --run Boundary=eval/bd.csv \
        --reference RRW --output-md comparison.md --output-csv comparison.csv
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from common.data import atomic_output
from common.engines import ensure_absent
from common.evaluation import (
    STATUS_ABSENT,
    STATUS_PRESENT,
    StructureResult,
    read_results_csv,
    summarize,
    write_rows_csv,
)
from common.statistics import paired_permutation_test

METRIC_TITLES = {"dice": "Dice", "hd": "HD (mm)", "hd95": "HD95 (mm)"}


@dataclass(frozen=True)
class Cell:
    run: str
    structure: str
    metric: str
    mean: float
    std: float
    n: int
    p_value: float  # NaN for the reference run
    n_paired: int


def metric_values(results: list[StructureResult], structure: str, metric: str) -> dict[str, float]:
    """Value per case; NaN where the metric is undefined for this structure in that case."""
    values = {}
    for result in results:
        if result.structure != structure:
            continue
        defined = result.status != STATUS_ABSENT if metric == "dice" else result.status == STATUS_PRESENT
        values[result.case] = getattr(result, metric) if defined else math.nan
    return values


def summary_statistics(results: list[StructureResult], structure: str, metric: str) -> tuple[float, float, int]:
    """Mean, std and number of cases of a metric, with the inclusion rules of `summarize`."""
    (entry,) = summarize([r for r in results if r.structure == structure])
    n = entry["n_present"] if metric != "dice" else entry["n_cases"] - entry["n_absent"]
    return entry[f"{metric}_mean"], entry[f"{metric}_std"], n


def compare(
    runs: dict[str, list[StructureResult]],
    reference: str,
    structures: list[str],
    metrics: list[str],
    n_permutations: int = 10_000,
    seed: int = 0,
) -> tuple[list[Cell], list[str]]:
    """All table cells, and warnings about cases that are not shared by a run and the reference."""
    cells, warnings = [], []
    for structure in structures:
        for metric in metrics:
            reference_values = metric_values(runs[reference], structure, metric)
            for name, results in runs.items():
                values = metric_values(results, structure, metric)
                mean, std, n = summary_statistics(results, structure, metric)
                p_value, n_paired = math.nan, 0
                if name != reference:
                    shared = sorted(set(values) & set(reference_values))
                    unshared = set(values) ^ set(reference_values)
                    if unshared and metric == metrics[0]:
                        warnings.append(f"{name} vs {reference}, {structure}: {len(unshared)} cases not in both runs")
                    test = paired_permutation_test(
                        [values[c] for c in shared], [reference_values[c] for c in shared], n_permutations, seed
                    )
                    p_value, n_paired = test.p_value, test.n_pairs
                cells.append(Cell(name, structure, metric, mean, std, n, p_value, n_paired))
    return cells, warnings


def format_cell(cell: Cell, alpha: float) -> str:
    if cell.n == 0:
        return "n/a"
    digits = 3 if cell.metric == "dice" else 2
    std = f"{cell.std:.{digits}f}" if math.isfinite(cell.std) else "n/a"
    star = "*" if math.isfinite(cell.p_value) and cell.p_value < alpha else ""
    return f"{cell.mean:.{digits}f} ± {std}{star}"


def markdown_table(
    cells: list[Cell],
    runs: list[str],
    structures: list[str],
    metrics: list[str],
    alpha: float,
    reference: str,
    n_permutations: int,
) -> str:
    lookup = {(c.run, c.structure, c.metric): c for c in cells}
    header = ["loss"] + [f"{s} {METRIC_TITLES[m]}" for s in structures for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        row = [f"{run} (reference)" if run == reference else run]
        row += [format_cell(lookup[(run, s, m)], alpha) for s in structures for m in metrics]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append(
        f"Mean ± std over cases. * p < {alpha} in a paired permutation test against {reference} "
        f"({n_permutations} permutations, absolute mean difference, cases with finite values in both runs)."
    )
    return "\n".join(lines) + "\n"


def parse_run(text: str) -> tuple[str, Path]:
    name, separator, path = text.partition("=")
    if not separator or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=CSV, got {text!r}")
    return name, Path(path)


def write_markdown(text: str, path: Path, overwrite: bool) -> None:
    ensure_absent(path, overwrite=overwrite)
    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=parse_run, action="append", required=True, help="NAME=per-case CSV (repeat)")
    parser.add_argument("--reference", required=True, help="run name the others are tested against")
    parser.add_argument("--metrics", nargs="+", choices=list(METRIC_TITLES), default=["dice", "hd"])
    parser.add_argument("--structures", nargs="+", help="structures and their order (default: reference's)")
    parser.add_argument("--permutations", type=int, default=10_000)
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of the star")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-md", type=Path, help="Markdown table (also printed)")
    parser.add_argument("--output-csv", type=Path, help="long-format CSV of every cell")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    names = [name for name, _ in args.run]
    if len(set(names)) != len(names):
        parser.error(f"run names must be unique, got {names}")
    if args.reference not in names:
        parser.error(f"--reference {args.reference!r} is not one of the runs {names}")
    try:
        ensure_absent(*[p for p in (args.output_md, args.output_csv) if p], overwrite=args.overwrite)
        runs = {name: read_results_csv(path) for name, path in args.run}
    except (FileExistsError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    structures = args.structures or list(dict.fromkeys(r.structure for r in runs[args.reference]))
    for name, results in runs.items():
        missing = set(structures) - {r.structure for r in results}
        if missing:
            print(f"error: run {name} has no rows for {sorted(missing)}", file=sys.stderr)
            return 2

    cells, warnings = compare(runs, args.reference, structures, args.metrics, args.permutations, args.seed)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    table = markdown_table(cells, names, structures, args.metrics, args.alpha, args.reference, args.permutations)
    print(table)
    if args.output_md:
        write_markdown(table, args.output_md, args.overwrite)
    if args.output_csv:
        rows = [
            {**cell.__dict__, "significant": math.isfinite(cell.p_value) and cell.p_value < args.alpha}
            for cell in cells
        ]
        write_rows_csv(rows, args.output_csv, list(rows[0]), overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
