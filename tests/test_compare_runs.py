from __future__ import annotations

import csv
import math
import re
import runpy
from pathlib import Path

import numpy as np
import pytest

from common.evaluation.metrics import STATUS_ABSENT, STATUS_MISSED, STATUS_PRESENT, StructureResult
from common.evaluation.statistics import paired_permutation_test
from common.evaluation.tables import write_results_csv

compare_runs_main = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "compare_runs.py"))["main"]


def rows(dice: list[float], hd: list[float], structure: str = "class_1") -> list[StructureResult]:
    results = []
    for index, (d, h) in enumerate(zip(dice, hd, strict=True)):
        status = STATUS_ABSENT if math.isnan(d) else STATUS_MISSED if math.isinf(h) else STATUS_PRESENT
        h = math.nan if status == STATUS_ABSENT else h  # as evaluate_case writes an absent structure
        results.append(StructureResult(f"case{index}", structure, "1", status, d, h, h, 10, 10))
    return results


@pytest.fixture
def runs(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.uniform(0.7, 0.9, 12)
    reference = rows(list(base), list(rng.uniform(2, 6, 12)))
    same = rows(list(base), [r.hd for r in reference])
    worse_dice = list(base - 0.1)
    worse_dice[3] = 0.0  # a missed case
    worse_hd = [r.hd + 3 for r in reference]
    worse_hd[3] = math.inf
    worse = rows(worse_dice, worse_hd)
    paths = {}
    for name, results in {"RRW": reference, "Same": same, "Worse": worse}.items():
        paths[name] = tmp_path / f"{name}.csv"
        write_results_csv(results, paths[name])
    return paths, reference, worse


def test_table_stars_only_significant_differences(tmp_path, runs, capsys):
    paths, reference, worse = runs
    md, table_csv = tmp_path / "cmp.md", tmp_path / "cmp.csv"
    argv = [f"--run={name}={path}" for name, path in paths.items()]
    argv += ["--reference", "RRW", "--output-md", str(md), "--output-csv", str(table_csv)]
    assert compare_runs_main(argv) == 0
    lines = md.read_text().splitlines()
    assert lines[0] == "| loss | class_1 Dice | class_1 HD (mm) |"
    assert lines[2].startswith("| RRW (reference) |") and "*" not in lines[2]
    assert "*" not in lines[3]  # identical values: p = 1
    assert lines[4].count("*") == 2
    cells = {(row["run"], row["metric"]): row for row in csv.DictReader(open(table_csv))}
    assert float(cells[("Same", "dice")]["p_value"]) == 1.0
    # Dice: the missed case counts as 0 in the mean; HD: it is excluded from mean and test
    worse_dice = [r.dice for r in worse]
    assert float(cells[("Worse", "dice")]["mean"]) == pytest.approx(np.mean(worse_dice))
    assert float(cells[("Worse", "dice")]["std"]) == pytest.approx(np.std(worse_dice, ddof=1))
    assert int(cells[("Worse", "hd")]["n"]) == 11 and int(cells[("Worse", "hd")]["n_paired"]) == 11
    expected = paired_permutation_test(worse_dice, [r.dice for r in reference], seed=0)
    assert float(cells[("Worse", "dice")]["p_value"]) == pytest.approx(expected.p_value)
    assert cells[("Worse", "hd")]["significant"] == "True"
    assert "Worse" in capsys.readouterr().out


def test_unknown_reference_and_existing_outputs_are_refused(tmp_path, runs, capsys):
    paths, _, _ = runs
    argv = [f"--run={name}={path}" for name, path in paths.items()]
    with pytest.raises(SystemExit):
        compare_runs_main([*argv, "--reference", "Nope"])
    existing = tmp_path / "exists.md"
    existing.write_text("keep me")
    assert compare_runs_main([*argv, "--reference", "RRW", "--output-md", str(existing)]) == 2
    assert existing.read_text() == "keep me"
    assert "exists.md" in capsys.readouterr().err


def test_foreign_csv_is_reported_by_name(tmp_path, runs, capsys):
    paths, _, _ = runs
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n1,2\n")
    assert compare_runs_main([f"--run=RRW={paths['RRW']}", f"--run=Bad={bad}", "--reference", "RRW"]) == 2
    assert "bad.csv" in capsys.readouterr().err


def argv_of(runs: list[tuple[str, Path]], *extra: str) -> list[str]:
    return [f"--run={name}={path}" for name, path in runs] + list(extra)


def test_several_runs_per_loss_are_averaged_per_case_before_the_test(tmp_path):
    rng = np.random.default_rng(3)
    dice = {name: rng.uniform(0.6, 0.9, (3, 8)) for name in ("RRW", "Dice")}  # 3 runs x 8 cases per loss
    dice["Dice"][:, 0] = np.nan  # case0 absent (undefined) in every Dice run
    dice["RRW"][1, 5] = np.nan  # case5 undefined in one RRW run: undefined in the mean
    runs = []
    for name, values in dice.items():
        for index, run_values in enumerate(values):
            path = tmp_path / f"{name}{index}.csv"
            write_results_csv(rows(list(run_values), [2.0] * 8), path)
            runs.append((name, path))
    table_csv = tmp_path / "cmp.csv"
    argv = argv_of(runs, "--reference", "RRW", "--metrics", "dice", "--output-csv", str(table_csv), "--seed", "4")
    assert compare_runs_main(argv) == 0
    cells = {row["run"]: row for row in csv.DictReader(open(table_csv))}
    means = {name: values.mean(axis=0) for name, values in dice.items()}  # NaN where any run is undefined
    for name in ("RRW", "Dice"):
        finite = means[name][np.isfinite(means[name])]
        assert int(cells[name]["n_runs"]) == 3 and int(cells[name]["n"]) == 7
        assert float(cells[name]["mean"]) == pytest.approx(finite.mean())
        assert float(cells[name]["std"]) == pytest.approx(finite.std(ddof=1))
    expected = paired_permutation_test(means["Dice"], means["RRW"], n_permutations=10_000, seed=4)
    assert expected.n_pairs == 6 and int(cells["Dice"]["n_paired"]) == 6
    assert float(cells["Dice"]["p_value"]) == pytest.approx(expected.p_value)


def test_duplicate_ids_and_unpaired_cases_are_refused_or_listed_never_dropped(tmp_path, capsys):
    values = [0.8, 0.7, 0.9, 0.6]
    reference, shorter, duplicated = tmp_path / "ref.csv", tmp_path / "short.csv", tmp_path / "dup.csv"
    write_results_csv(rows(values, [3.0] * 4), reference)
    write_results_csv(rows(values[:3], [3.0] * 3), shorter)  # case3 missing
    write_results_csv(rows(values, [3.0] * 4) + rows([0.5], [1.0]), duplicated)  # case0 twice

    assert compare_runs_main(argv_of([("A", reference), ("B", duplicated)], "--reference", "A")) == 2
    assert f"error: {duplicated}: 1 case(s) appear more than once, e.g. case0 (class_1)" in capsys.readouterr().err

    assert compare_runs_main(argv_of([("A", reference), ("B", shorter)], "--reference", "A")) == 2
    error = capsys.readouterr().err
    assert "class_1: 1 case(s) only in A, not in B: case3" in error and "--allow-unpaired" in error

    output = tmp_path / "table.md"
    argv = argv_of(
        [("A", reference), ("B", shorter)], "--reference", "A", "--allow-unpaired", "--output-md", str(output)
    )
    assert compare_runs_main(argv) == 0
    assert "warning: left out of the tests: class_1: 1 case(s) only in A, not in B: case3" in capsys.readouterr().err
    assert "- class_1: 1 case(s) only in A, not in B: case3" in output.read_text()

    # the runs of one loss must hold the same cases, whatever --allow-unpaired says
    argv = argv_of([("A", reference), ("A", shorter)], "--reference", "A", "--allow-unpaired")
    assert compare_runs_main(argv) == 2
    assert f"{shorter}: the runs of A must be evaluated on the same cases" in capsys.readouterr().err


def test_inputs_are_never_outputs_and_never_given_twice(tmp_path, runs, capsys):
    paths, _, _ = runs
    before = paths["Same"].read_bytes()
    argv = [f"--run={name}={path}" for name, path in paths.items()]
    argv += ["--reference", "RRW", "--output-csv", str(paths["Same"]), "--overwrite"]
    assert compare_runs_main(argv) == 2
    assert f"{paths['Same']}: is one of the --run inputs" in capsys.readouterr().err
    assert paths["Same"].read_bytes() == before
    with pytest.raises(SystemExit):
        compare_runs_main([f"--run=A={paths['RRW']}", f"--run=B={paths['RRW']}", "--reference", "A"])
    assert "given once" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare_runs_main([f"--run=A={paths['RRW']}", "--reference", "A", "--permutations", "0"])
    assert "--permutations must be >= 1" in capsys.readouterr().err


def write_csv_text(path: Path, lines: list[str]) -> Path:
    path.write_text("case,structure,labels,status,dice,hd,hd95,gt_voxels,pred_voxels\n" + "".join(lines))
    return path


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (None, "no rows"),
        ("case0,class_1,1,present,1.5,2.0,2.0,10,10\n", r"line 2: Dice 1.5 of a present structure is outside \[0, 1\]"),
        ("case0,class_1,1,present,nan,2.0,2.0,10,10\n", "outside"),
        ("case0,class_1,1,present,0.8,-1,2.0,10,10\n", "must be >= 0"),
        ("case0,class_1,1,absent,0.5,nan,nan,0,0\n", "an absent structure has no Dice"),
        ("case0,class_1,1,missed,0.2,inf,inf,10,0\n", "a missed structure has Dice 0"),
        ("case0,class_1,1,lost,0.2,inf,inf,10,0\n", "is not one of"),
    ],
)
def test_values_no_evaluation_writes_are_refused_with_the_file_and_line(tmp_path, capsys, line, message):
    good = tmp_path / "good.csv"
    write_results_csv(rows([0.8, 0.7], [2.0, 3.0]), good)
    bad = write_csv_text(tmp_path / "bad.csv", [] if line is None else [line])
    assert compare_runs_main(["--run", f"A={good}", "--run", f"B={bad}", "--reference", "A"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: {bad}") and re.search(message, error)


def test_present_structures_without_distances_are_refused_not_dropped_from_the_mean(tmp_path, capsys):
    good = tmp_path / "good.csv"
    write_results_csv(rows([0.8, 0.7], [2.0, 3.0]), good)
    lines = ["case0,class_1,1,present,0.8,2.0,2.0,10,10\n", "case1,class_1,1,present,0.7,nan,nan,10,10\n"]
    without = write_csv_text(tmp_path / "without.csv", lines)
    arguments = ["--run", f"A={good}", "--run", f"B={without}", "--reference", "A"]
    assert compare_runs_main(arguments) == 2
    assert "1 present structure(s) have no hd" in capsys.readouterr().err
    assert compare_runs_main([*arguments, "--metrics", "dice"]) == 0  # Dice alone is defined for every case
