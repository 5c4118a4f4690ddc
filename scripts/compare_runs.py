"""Compare evaluation CSVs of several losses in a table like the papers', with paired permutation tests.

Each ``--run NAME=CSV`` is a per-case CSV written by ``scripts/evaluate_folder.py`` or a bundle's evaluate.yaml
(``CaseMetricsWriter``). Giving a NAME several times makes those CSVs independently trained runs of one loss (the
RW paper averages three): their values are averaged per case first, and everything below uses those per-case
means. Rows of the table are losses, columns are structures x metrics, cells are ``mean +- std`` over cases (Dice
over cases where the structure is in the label or the prediction, HD/HD95 over cases where it is in both, as in
``common.evaluation.tables.summarize``; a case undefined in any run of a loss is undefined in its mean). Every
non-reference cell carries the p-value of a paired permutation test (10,000 permutations, absolute mean
difference) against the reference loss on the cases with finite values in both; ``*`` marks p < alpha.

Cases are paired by id, so ids must identify cases: a CSV that holds a case twice for a structure is refused, and so
are runs of one loss evaluated on different cases. Cases that a loss and the reference do not share are listed and
refused unless ``--allow-unpaired`` (then they are left out of the tests only, and listed). Outputs are written
atomically and never replace a file without ``--overwrite``, nor any input CSV.

    python scripts/compare_runs.py --run RRW=eval/rrw.csv --run Dice=eval/dice.csv --run Boundary=eval/bd.csv \
        --reference RRW --output-md comparison.md --output-csv comparison.csv
    python scripts/compare_runs.py --run RRW=rrw_seed0.csv --run RRW=rrw_seed1.csv --run RRW=rrw_seed2.csv \
        --run Dice=dice_seed0.csv --run Dice=dice_seed1.csv --run Dice=dice_seed2.csv --reference RRW
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from common.errors import EXIT_USER_ERROR, UserError, ensure_absent, install_error_hook
from common.evaluation.metrics import STATUS_ABSENT, STATUS_PRESENT, StructureResult
from common.evaluation.statistics import paired_permutation_test
from common.evaluation.tables import read_results_csv, write_rows_csv
from common.files import atomic_output

METRIC_TITLES = {"dice": "Dice", "hd": "HD (mm)", "hd95": "HD95 (mm)"}


@dataclass(frozen=True)
class Cell:
    run: str
    structure: str
    metric: str
    mean: float
    std: float
    n: int
    p_value: float  # NaN for the reference
    n_paired: int
    n_runs: int


Runs = dict[str, list[list[StructureResult]]]  # loss name -> its runs -> per-case rows


def read_run(path: Path) -> list[StructureResult]:
    """Read a per-case CSV and refuse one that holds a case twice for a structure (ids that do not identify cases).

    Raises:
        UserError: naming the file and the repeated ``case`` / ``structure`` pairs.
    """
    results = read_results_csv(path)
    repeated = [key for key, count in Counter((r.case, r.structure) for r in results).items() if count > 1]
    if repeated:
        listing = ", ".join(f"{case} ({structure})" for case, structure in repeated[:10])
        raise UserError(
            f"{path}: {len(repeated)} case(s) appear more than once, e.g. {listing}; case ids must be unique "
            "(evaluate again with scripts/evaluate_folder.py, which names cases by their relative path)"
        )
    return results


def check_distances(path: Path, results: list[StructureResult], structures: list[str], metrics: list[str]) -> None:
    """Refuse a CSV whose present structures have no distance when a distance is compared (no silent dropping).

    Raises:
        UserError: naming the file, the metric and the cases evaluated without distances.
    """
    for metric in [m for m in metrics if m != "dice"]:
        undefined = [
            r.case
            for r in results
            if r.structure in structures and r.status == STATUS_PRESENT and math.isnan(getattr(r, metric))
        ]
        if undefined:
            raise UserError(
                f"{path}: {len(undefined)} present structure(s) have no {metric} (evaluated without distances), "
                f"e.g. {', '.join(undefined[:5])}; evaluate with distances or leave {metric} out of --metrics"
            )


def case_sets(results: list[StructureResult], structures: list[str]) -> dict[str, set[str]]:
    return {structure: {r.case for r in results if r.structure == structure} for structure in structures}


def unpaired_cases(runs: Runs, paths: dict[str, list[Path]], reference: str, structures: list[str]) -> list[str]:
    """Lines naming the cases that the runs of a loss, or a loss and the reference, do not share.

    Raises:
        UserError: runs of one loss hold different cases (their per-case mean would mix case sets).
    """
    by_loss = {}
    for name, replicates in runs.items():
        first = case_sets(replicates[0], structures)
        for path, results in zip(paths[name][1:], replicates[1:], strict=True):
            cases = case_sets(results, structures)
            if cases != first:
                differing = sorted(set().union(*(first[s] ^ cases[s] for s in structures)))
                raise UserError(
                    f"{path}: the runs of {name} must be evaluated on the same cases; {paths[name][0]} and this file "
                    f"differ in {len(differing)} case(s): {', '.join(differing[:10])}"
                )
        by_loss[name] = first
    lines = []
    for name in by_loss:
        if name == reference:
            continue
        for structure in structures:
            for owner, other in ((name, reference), (reference, name)):
                only = sorted(by_loss[owner][structure] - by_loss[other][structure])
                if only:
                    lines.append(f"{structure}: {len(only)} case(s) only in {owner}, not in {other}: {', '.join(only)}")
    return lines


def metric_values(results: list[StructureResult], structure: str, metric: str) -> dict[str, float]:
    """Value per case; NaN where the metric is undefined for this structure in that case."""
    values = {}
    for result in results:
        if result.structure != structure:
            continue
        defined = result.status != STATUS_ABSENT if metric == "dice" else result.status == STATUS_PRESENT
        values[result.case] = getattr(result, metric) if defined else math.nan
    return values


def per_case_means(replicates: list[list[StructureResult]], structure: str, metric: str) -> dict[str, float]:
    """Per-case mean over the runs of a loss (NaN when the value is undefined in any of them)."""
    per_run = [metric_values(results, structure, metric) for results in replicates]
    return {case: float(np.mean([values[case] for values in per_run])) for case in per_run[0]}


def mean_std(values: list[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof=1) and number of the finite values."""
    finite = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    mean = float(finite.mean()) if finite.size else math.nan
    std = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
    return mean, std, int(finite.size)


def compare(
    runs: Runs,
    reference: str,
    structures: list[str],
    metrics: list[str],
    n_permutations: int = 10_000,
    seed: int = 0,
) -> list[Cell]:
    """All table cells: per-case means over each loss's runs, summarised and tested against the reference."""
    cells = []
    for structure in structures:
        for metric in metrics:
            reference_values = per_case_means(runs[reference], structure, metric)
            for name, replicates in runs.items():
                values = per_case_means(replicates, structure, metric)
                mean, std, n = mean_std(list(values.values()))
                p_value, n_paired = math.nan, 0
                if name != reference:
                    shared = sorted(set(values) & set(reference_values))
                    test = paired_permutation_test(
                        [values[c] for c in shared], [reference_values[c] for c in shared], n_permutations, seed
                    )
                    p_value, n_paired = test.p_value, test.n_pairs
                cells.append(Cell(name, structure, metric, mean, std, n, p_value, n_paired, len(replicates)))
    return cells


def format_cell(cell: Cell, alpha: float) -> str:
    if cell.n == 0:
        return "n/a"
    digits = 3 if cell.metric == "dice" else 2
    std = f"{cell.std:.{digits}f}" if math.isfinite(cell.std) else "n/a"
    star = "*" if math.isfinite(cell.p_value) and cell.p_value < alpha else ""
    return f"{cell.mean:.{digits}f} ± {std}{star}"


def markdown_table(
    cells: list[Cell],
    losses: list[str],
    structures: list[str],
    metrics: list[str],
    alpha: float,
    reference: str,
    n_permutations: int,
    unpaired: list[str] = (),
) -> str:
    lookup = {(c.run, c.structure, c.metric): c for c in cells}
    header = ["loss"] + [f"{s} {METRIC_TITLES[m]}" for s in structures for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for loss in losses:
        row = [f"{loss} (reference)" if loss == reference else loss]
        row += [format_cell(lookup[(loss, s, m)], alpha) for s in structures for m in metrics]
        lines.append("| " + " | ".join(row) + " |")
    runs_per_loss = {cell.run: cell.n_runs for cell in cells}
    averaged = ""
    if any(count > 1 for count in runs_per_loss.values()):
        counts = ", ".join(f"{loss} {runs_per_loss[loss]}" for loss in losses)
        averaged = f" of the per-case means over each loss's runs ({counts})"
    lines.append("")
    lines.append(
        f"Mean ± std over cases{averaged}. * p < {alpha} in a paired permutation test against {reference} "
        f"({n_permutations} permutations, absolute mean difference, cases with finite values in both)."
    )
    if unpaired:
        lines.append("Cases left out of the tests because they are not in both losses:")
        lines.extend(f"- {line}" for line in unpaired)
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


def check_outputs(outputs: list[Path], inputs: list[Path], overwrite: bool) -> None:
    """Refuse outputs that exist (without ``overwrite``), coincide, or are one of the input CSVs."""
    resolved = [path.resolve() for path in outputs]
    if len(set(resolved)) != len(resolved):
        raise UserError(f"--output-md and --output-csv must be different files, got {outputs[0]}")
    sources = {path.resolve() for path in inputs}
    for output, target in zip(outputs, resolved, strict=True):
        if target in sources:
            raise UserError(f"{output}: is one of the --run inputs; write the comparison to another file")
    ensure_absent(*outputs, overwrite=overwrite)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--run",
        type=parse_run,
        action="append",
        required=True,
        help="NAME=per-case CSV (repeat; a NAME given "
        "several times: independently trained runs of one loss, averaged per case)",
    )
    parser.add_argument("--reference", required=True, help="loss name the others are tested against")
    parser.add_argument("--metrics", nargs="+", choices=list(METRIC_TITLES), default=["dice", "hd"])
    parser.add_argument("--structures", nargs="+", help="structures and their order (default: reference's)")
    parser.add_argument("--permutations", type=int, default=10_000)
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of the star")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--allow-unpaired", action="store_true", help="test on the shared cases (listed) only")
    parser.add_argument("--output-md", type=Path, help="Markdown table (also printed)")
    parser.add_argument("--output-csv", type=Path, help="long-format CSV of every cell")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    if args.permutations < 1 or not 0 < args.alpha < 1:
        parser.error(f"--permutations must be >= 1 and --alpha in (0, 1), got {args.permutations} and {args.alpha}")
    paths: dict[str, list[Path]] = {}
    for name, path in args.run:
        paths.setdefault(name, []).append(path)
    if args.reference not in paths:
        parser.error(f"--reference {args.reference!r} is not one of the runs {list(paths)}")
    inputs = [path for _, path in args.run]
    repeated = [str(path) for path, count in Counter(path.resolve() for path in inputs).items() if count > 1]
    if repeated:
        parser.error(f"each CSV may be given once, got {', '.join(repeated)} several times")
    try:
        check_outputs([p for p in (args.output_md, args.output_csv) if p], inputs, args.overwrite)
        runs = {name: [read_run(path) for path in files] for name, files in paths.items()}
        structures = args.structures or list(dict.fromkeys(r.structure for r in runs[args.reference][0]))
        for name, files in paths.items():
            for path, results in zip(files, runs[name], strict=True):
                missing = set(structures) - {r.structure for r in results}
                if missing:
                    raise UserError(f"{path}: no rows for {sorted(missing)} (run {name})")
                check_distances(path, results, structures, args.metrics)
        unpaired = unpaired_cases(runs, paths, args.reference, structures)
        if unpaired and not args.allow_unpaired:
            raise UserError(
                "cases not in both the reference and another loss (evaluate every loss on the same cases, or pass "
                "--allow-unpaired to test on the shared ones only):\n  " + "\n  ".join(unpaired)
            )
    except (UserError, FileExistsError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    for line in unpaired:
        print(f"warning: left out of the tests: {line}", file=sys.stderr)

    cells = compare(runs, args.reference, structures, args.metrics, args.permutations, args.seed)
    table = markdown_table(
        cells, list(paths), structures, args.metrics, args.alpha, args.reference, args.permutations, unpaired
    )
    print(table)
    if args.output_md:
        write_markdown(table, args.output_md, args.overwrite)
    if args.output_csv:
        rows = [
            {**asdict(cell), "significant": math.isfinite(cell.p_value) and cell.p_value < args.alpha} for cell in cells
        ]
        write_rows_csv(rows, args.output_csv, list(rows[0]), overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    install_error_hook()  # anything unexpected still ends with its cause as the last line
    sys.exit(main())
