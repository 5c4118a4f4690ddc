"""scripts/run_study.py and common.evaluation.studies: study files, settings, executors, resume, table, SLURM."""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import pickle
import re
import runpy
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from common.data.settings import SettingError, check_data_value, parse_setting, parse_settings
from common.data.splits import SADICE_PAPER_FOLDS
from common.evaluation.studies.runs import PER_CASE_CSV, evaluation_command, is_study_key, training_command
from common.evaluation.studies.spec import BUNDLES_DIR, Row, Structure, Study, list_studies, load_study
from common.evaluation.studies.table import TABLE_COLUMNS, write_outputs

REPO_ROOT = Path(__file__).resolve().parents[1]
KILL_OVERLAY = REPO_ROOT / "tests" / "configs" / "kill_mid_epoch.yaml"
# on top of the study's demo settings: one iteration per epoch, two epochs, validated once
TINY = ["--set", "iterations_per_epoch=1"]
STUDIES = ["explog_brain", "rw_acdc17", "rw_brats18", "rw_kits19", "sadice_aorta", "sadice_brats17"]


RUN_STUDY_MAIN = runpy.run_path(str(REPO_ROOT / "scripts" / "run_study.py"))["main"]


def run_cli(*argv: str) -> int:
    return RUN_STUDY_MAIN(list(argv))


# ---------------------------------------------------------------- settings: data only


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("epochs=3", ("epochs", 3)),
        ("learning_rate=0.002", ("learning_rate", 0.002)),
        ("patch_size=[64, 64]", ("patch_size", [64, 64])),
        ("select_best_model=true", ("select_best_model", True)),
        ("class_names=[RV, M, LV]", ("class_names", ["RV", "M", "LV"])),
        ("train#rw_map#map_type=rrw", ("train#rw_map#map_type", "rrw")),
    ],
)
def test_settings_are_parsed_as_yaml_data(text, expected):
    assert parse_setting(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "epochs=$1+1",
        "epochs= $__import__('os').system('true')",
        "network=@network_def",
        "network=%configs/train.yaml#network",
        "filters=[8, '$16']",
        "filters=[8, [16, '@x']]",
        "loss={_target_: torch.nn.MSELoss}",
        "loss={a: {_requires_: x}}",
        "epochs",
        "=3",
        "bundle_root=/tmp/elsewhere",
        "ckpt_dir=/tmp/x",
        "validate#metrics_csv=/tmp/x.csv",
        "network_def#_target_=torch.nn.Identity",
        "epochs=[1,",
    ],
)
def test_settings_that_are_code_or_move_outputs_are_refused(text):
    with pytest.raises(SettingError, match=re.escape("--set")):
        parse_setting(text, reserved=is_study_key)


def test_check_data_value_is_reusable_and_names_its_source():
    assert check_data_value({"a": [1, "x", None]}, "here") == {"a": [1, "x", None]}
    with pytest.raises(SettingError, match="^here: "):
        check_data_value({"a": ["ok", {"_target_": "os.system"}]}, "here")
    with pytest.raises(SettingError, match="starts with"):
        check_data_value(["fine", " %macro"], "here")
    assert parse_settings(["epochs=2", "epochs=3"]) == {"epochs": 3}


def test_a_refused_setting_is_a_user_error_with_one_line(tmp_path, capsys):
    assert run_cli("rw_acdc17", "--demo", "--output_dir", str(tmp_path / "out"), "--set", "epochs=$1") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: --set epochs=$1: ")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- study files


def test_every_study_file_loads_and_names_existing_bundles():
    assert list_studies() == STUDIES
    for name in STUDIES:
        study = load_study(name)
        assert study.reference in study.bundles
        for bundle in study.bundles:
            assert (BUNDLES_DIR / bundle / "configs" / "evaluate.yaml").is_file()
        for row in study.rows:  # every cell of the paper's table has a reported value
            assert set(row.cells) == {(s.name, m) for s in study.structures for m in study.metrics}, (name, row.label)


def _markdown_rows(results: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in results.splitlines()
        if line.startswith("|") and "---" not in line and not line.startswith("| loss")
    ]


@pytest.mark.parametrize("name", ["rw_acdc17", "rw_brats18", "rw_kits19"])
def test_rw_values_and_marks_equal_the_reference_bundles_transcription(name):
    """The reference bundle's docs hold the paper's table ('0.87 ± 0.09*'); the study keeps marks apart."""
    study = load_study(name)
    spec = yaml.safe_load((BUNDLES_DIR / study.reference / "bundle.yaml").read_text())
    table = _markdown_rows(spec["docs"]["results"])
    assert len(table) == len(study.rows)
    for row, cells in zip(study.rows, table, strict=True):
        columns = [(s.name, m) for s in study.structures for m in study.metrics]
        for key, text in zip(columns, cells[1:], strict=True):
            mean, std = (float(part) for part in text.rstrip("*").split(" ± "))
            cell = row.cells[key]
            assert (cell.mean, cell.std, cell.marked) == (mean, std, text.endswith("*")), (name, row.label, key)


# The papers' tables, copied once from the papers (not read from them): one line per row in the table's order, one
# `|`-separated cell per structure and metric in the study's order, "mean std" ("mean" where the paper gives no
# std) with the paper's `*`. RW paper Tables 2-4 (rows RRW, RRW-weighted CE, Dice, Focal, Boundary), exp-log paper
# Table 1(b) (linear Dice, L_Dice, L_Cross, L_Exp gamma 1, 2, 0.3, V-Net; structures 1-19 then the average),
# SA Dice paper Tables I and II (U-Net, AnatomyNet, SA Dice, WMLA (1, 1, 1), (1, 0.1, 0.01), trainable).
PAPER_TABLES = {
    "rw_acdc17": """
        0.90 0.09 | 14.58 11.03 | 0.90 0.03 | 9.01 7.62 | 0.94 0.05 | 7.53 5.95
        0.87 0.09* | 16.23 10.44 | 0.87 0.04* | 8.85 5.23 | 0.94 0.05 | 7.43 5.50
        0.87 0.11* | 20.98 15.34* | 0.89 0.03* | 13.87 21.83* | 0.94 0.05 | 11.40 19.29*
        0.89 0.09 | 14.89 11.07 | 0.90 0.03 | 9.90 14.60 | 0.94 0.05 | 8.44 13.44
        0.89 0.09 | 16.55 13.85 | 0.90 0.04 | 8.41 5.39 | 0.94 0.06 | 8.36 7.85
    """,
    "rw_brats18": """
        0.80 0.15 | 20.76 19.32 | 0.78 0.14 | 37.48 18.56 | 0.61 0.26 | 16.47 12.64
        0.80 0.14 | 23.59 18.75 | 0.76 0.13* | 35.76 18.83 | 0.61 0.26 | 16.39 11.99
        0.79 0.16* | 77.49 16.67* | 0.77 0.14 | 74.22 13.83* | 0.61 0.25 | 61.48 22.34*
        0.80 0.14 | 19.27 18.16 | 0.78 0.14 | 37.01 19.25 | 0.61 0.26 | 16.16 14.63
        0.80 0.15 | 19.04 15.58 | 0.78 0.14 | 29.35 18.80* | 0.60 0.27 | 16.87 12.45
    """,
    "rw_kits19": """
        0.95 0.04 | 20.29 16.64 | 0.57 0.31 | 56.38 30.92
        0.92 0.04* | 22.16 17.18* | 0.51 0.34* | 56.70 31.21
        0.94 0.04* | 21.02 18.44 | 0.53 0.31 | 84.29 25.04*
        0.95 0.04 | 19.84 15.73 | 0.51 0.35* | 41.37 29.52*
        0.94 0.05* | 18.62 16.00 | 0.51 0.33* | 55.50 30.48
    """,
    "explog_brain": """
        87 1 | 47 38 | 32 40 | 72 36 | 50 41 | 30 37 | 31 38 | 0 0 | 0 0 | 34 42 | \
        88 1 | 86 1 | 88 1 | 32 39 | 0 0 | 54 44 | 0 0 | 51 42 | 35 43 | 43 11
        84 1 | 61 30 | 83 2 | 90 1 | 81 2 | 73 2 | 78 2 | 68 2 | 74 2 | 85 1 | \
        87 1 | 85 1 | 88 1 | 79 2 | 59 3 | 89 1 | 79 1 | 86 2 | 88 1 | 80 2
        87 1 | 56 5 | 79 3 | 86 2 | 76 3 | 67 2 | 73 6 | 59 4 | 65 4 | 83 2 | \
        87 2 | 85 1 | 89 1 | 75 3 | 54 6 | 89 1 | 76 3 | 84 1 | 86 1 | 77 2
        87 2 | 78 3 | 84 1 | 90 1 | 82 1 | 74 2 | 78 3 | 68 3 | 75 1 | 83 3 | \
        87 1 | 86 0 | 89 1 | 80 1 | 64 1 | 90 1 | 80 2 | 86 2 | 88 1 | 81 1
        79 7 | 61 15 | 74 6 | 75 10 | 67 12 | 62 8 | 66 10 | 52 17 | 56 15 | 64 12 | \
        78 8 | 78 7 | 84 4 | 64 11 | 46 10 | 77 10 | 60 16 | 67 15 | 67 15 | 67 11
        88 1 | 77 2 | 84 1 | 91 1 | 82 1 | 74 1 | 78 2 | 69 2 | 75 2 | 86 1 | \
        89 1 | 86 1 | 89 0 | 81 1 | 62 5 | 91 1 | 80 1 | 87 1 | 89 1 | 82 1
        84 2 | 67 7 | 80 4 | 87 4 | 78 3 | 67 5 | 73 6 | 59 7 | 65 5 | 72 5 | \
        85 2 | 82 4 | 86 2 | 72 7 | 48 8 | 82 6 | 70 7 | 75 6 | 78 6 | 74 4
    """,
    "sadice_aorta": "0.873\n0.874\n0.900\n0.908\n0.915\n0.909",
    "sadice_brats17": """
        0.890 | 0.770 | 0.732
        0.896 | 0.780 | 0.73
        0.894 | 0.774 | 0.739
        0.907 | 0.790 | 0.747
        0.905 | 0.790 | 0.754
        0.902 | 0.793 | 0.750
    """,
}


@pytest.mark.parametrize("name", STUDIES)
def test_paper_values_equal_the_papers_tables_cell_by_cell(name):
    study = load_study(name)
    table = [[cell.split() for cell in line.split("|")] for line in PAPER_TABLES[name].strip().splitlines()]
    assert len(table) == len(study.rows), name
    columns = [(s.name, m) for s in study.structures for m in study.metrics]
    for row, cells in zip(study.rows, table, strict=True):
        for key, parts in zip(columns, cells, strict=True):
            marked = parts[-1].endswith("*")
            numbers = [float(part.rstrip("*")) for part in parts]
            expected = (numbers[0], numbers[1] if len(numbers) > 1 else None, marked)
            cell = row.cells[key]
            assert (cell.mean, cell.std, cell.marked) == expected, (name, row.label, key)


def test_fold_studies_run_every_fold_of_the_preparations_default_split():
    """``vary: fold`` runs ``--split sadice --fold K`` with the default ``--folds``: one run per fold, 90/10 each."""
    for study in (load_study(name) for name in STUDIES):
        if study.vary == "fold":
            assert study.runs == SADICE_PAPER_FOLDS, study.name
            assert study.demo["data"]["subjects"] >= SADICE_PAPER_FOLDS, study.name  # every fold holds a subject


def _numbers(text: str) -> list[float]:
    return [float(number) for number in re.findall(r"\d+\.\d+|\d+", text)]


def test_explog_and_sadice_values_equal_the_bundles_reported_results():
    explog = load_study("explog_brain")
    for bundle in explog.bundles:
        reported = yaml.safe_load((BUNDLES_DIR / bundle / "bundle.yaml").read_text())["table"]["paper_result"]
        average = explog.paper_cell(bundle, "Average", "dice")
        expected = _numbers(reported.split("mean Dice")[-1])[:2] if "V-Net mean" not in reported else [74, 4]
        assert [round(average.mean * 100), round(average.std * 100)] == expected, bundle
    for name, structures in (("sadice_aorta", ["Aorta"]), ("sadice_brats17", ["Whole", "Core", "Enhanced"])):
        study = load_study(name)
        for bundle in study.bundles:
            reported = yaml.safe_load((BUNDLES_DIR / bundle / "bundle.yaml").read_text())["table"]["paper_result"]
            values = [study.paper_cell(bundle, structure, "dice").mean for structure in structures]
            assert values == _numbers(reported.replace("Table I", ""))[: len(values)], bundle


# ---------------------------------------------------------------- table from per-run CSVs (no training)


def _write_case_csv(path: Path, rows: list[tuple[str, str, str, float, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["case", "structure", "labels", "status", "dice", "hd", "hd95", "gt_voxels", "pred_voxels"])
        for case, structure, status, dice, hd in rows:
            writer.writerow([case, structure, "1", status, dice, hd, hd, 10, 10])


def _toy_study(aggregate: str) -> Study:
    from common.evaluation.studies.spec import PaperCell

    cells = {("A", "dice"): PaperCell(0.9, 0.1, False), ("A", "hd"): PaperCell(5.0, 1.0, True)}
    rows = (Row("acdc17_rrw", "ref", cells), Row("acdc17_dice", "other", cells))
    structures = (Structure("A", "first"), Structure("B", None, order=1), Structure("Avg", average=True))
    return Study(
        "toy", Path("toy.yaml"), "toy", "paper", "T", "acdc", (), "seed", 2, aggregate, "acdc17_rrw",
        ("dice", "hd"), structures, rows, {}, {}, {}, False,
    )  # fmt: skip


def _exact_p(first: list[float], second: list[float]) -> float:
    pairs = [(a, b) for a, b in zip(first, second, strict=True) if math.isfinite(a) and math.isfinite(b)]
    differences = np.array([a - b for a, b in pairs])
    observed = abs(differences.mean())
    signs = itertools.product((1, -1), repeat=len(differences))
    flips = [abs((differences * np.array(sign)).mean()) >= observed - 1e-12 for sign in signs]
    return sum(flips) / len(flips)


@pytest.mark.parametrize("aggregate", ["cases", "runs"])
def test_table_equals_an_independent_aggregation_of_the_per_run_csvs(tmp_path, aggregate):
    rng = np.random.default_rng(0)
    cases = [f"patient{k:03d}" for k in range(1, 7)]
    values: dict[tuple[str, int], dict[str, list[float]]] = {}
    for bundle, offset in (("acdc17_rrw", 0.0), ("acdc17_dice", -0.05)):
        for run in range(2):
            rows, store = [], {}
            for case in cases:
                dice = [float(np.clip(0.8 + offset + rng.normal(0, 0.05), 0, 1)) for _ in range(2)]
                hd = [float(rng.uniform(2, 9)) for _ in range(2)]
                status = "missed" if (case == "patient002" and bundle == "acdc17_dice" and run == 1) else "present"
                if status == "missed":  # missed: Dice 0, HD infinite (left out of the HD means and tests)
                    dice[0] = 0.0
                rows += [(case, "first", status, dice[0], math.inf if status == "missed" else hd[0])]
                rows += [(case, "second", "present", dice[1], hd[1])]
                store[case] = [dice[0], hd[0] if status == "present" else math.nan, dice[1], hd[1]]
            directory = tmp_path / "runs" / bundle / f"run_{run}"
            _write_case_csv(directory / PER_CASE_CSV, rows)
            (directory / "done.json").write_text("{}")
            values[(bundle, run)] = store
    study = _toy_study(aggregate)
    run_dirs = {b: [tmp_path / "runs" / b / f"run_{r}" for r in range(2)] for b in ("acdc17_rrw", "acdc17_dice")}
    write_outputs(study, run_dirs, tmp_path)
    with open(tmp_path / "table.csv", newline="") as stream:
        table = list(csv.DictReader(stream))
    assert tuple(table[0]) == TABLE_COLUMNS
    assert len(table) == 2 * 3 * 2
    column = {("A", "dice"): 0, ("A", "hd"): 1, ("B", "dice"): 2, ("B", "hd"): 3}

    def per_run(bundle: str, run: int, structure: str, metric: str) -> dict[str, float]:
        if structure == "Avg":
            parts = [per_run(bundle, run, s, metric) for s in ("A", "B")]
            return {case: float(np.nanmean([part[case] for part in parts])) for case in cases}
        return {case: values[(bundle, run)][case][column[(structure, metric)]] for case in cases}

    for row in table:
        bundle, structure, metric = row["bundle"], row["structure"], row["metric"]
        runs = [per_run(bundle, run, structure, metric) for run in range(2)]
        reference = [per_run("acdc17_rrw", run, structure, metric) for run in range(2)]
        if aggregate == "cases":
            ours = [float(np.mean([run[c] for run in runs])) for c in cases]
            theirs = [float(np.mean([run[c] for run in reference])) for c in cases]
            finite_values = [v for v in ours if math.isfinite(v)]
        else:
            ours = [run[c] for run in runs for c in cases]
            theirs = [run[c] for run in reference for c in cases]
            finite_values = [float(np.nanmean(list(run.values()))) for run in runs]
        assert float(row["mean"]) == pytest.approx(np.mean(finite_values), abs=1e-5)
        assert float(row["std"]) == pytest.approx(np.std(finite_values, ddof=1), abs=1e-5)
        assert row["runs"] == "2"
        if bundle == "acdc17_rrw":
            assert row["p_value"] == ""
        elif aggregate == "cases":  # 6 pairs: exact enumeration of the 64 sign patterns
            assert float(row["p_value"]) == pytest.approx(_exact_p(ours, theirs), abs=1e-6)
        else:
            assert 0 < float(row["p_value"]) <= 1
        paper = {("A", "dice"): ("0.9", "0.1", ""), ("A", "hd"): ("5.0", "1.0", "*")}.get((structure, metric))
        assert (row["paper"], row["paper_std"], row["paper_mark"]) == (paper or ("", "", ""))
    markdown = (tmp_path / "table.md").read_text()
    assert "| ref (reference) | `acdc17_rrw` |" in markdown and "/ 5.00 ± 1.00*" in markdown
    assert (tmp_path / "boxplot_dice.png").stat().st_size > 0 and (tmp_path / "boxplot_hd.png").is_file()


# ---------------------------------------------------------------- end to end (real bundle runs, tiny)


def _read_table(out: Path) -> list[dict[str, str]]:
    with open(out / "table.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def _independent_rw_table(out: Path, bundles: list[str], runs: int) -> dict[tuple[str, str, str], tuple]:
    """Mean and std over cases of each case's mean over runs, straight from the per-case CSVs."""
    names = {"RV": "RV", "M": "myocardium", "LV": "LV"}
    result = {}
    for bundle in bundles:
        per_case: dict[tuple[str, str], list[float]] = {}
        for run in range(runs):
            with open(out / "runs" / bundle / f"run_{run}" / PER_CASE_CSV, newline="") as stream:
                for row in csv.DictReader(stream):
                    for metric in ("dice", "hd"):
                        defined = row["status"] != "absent" if metric == "dice" else row["status"] == "present"
                        value = float(row[metric]) if defined else math.nan
                        per_case.setdefault((row["structure"], metric, row["case"]), []).append(value)
        for structure, name in names.items():
            for metric in ("dice", "hd"):
                means = [np.mean(v) for (s, m, _), v in per_case.items() if s == name and m == metric]
                means = [v for v in means if math.isfinite(v)]
                std = np.std(means, ddof=1) if len(means) > 1 else math.nan
                result[(bundle, structure, metric)] = (np.mean(means) if means else math.nan, std)
    return result


@pytest.fixture(scope="module")
def debug_study(tmp_path_factory):
    """rw_acdc17 --demo through the debug executor: 2 bundles x 1 run."""
    out = tmp_path_factory.mktemp("debug_study") / "out"
    argv = ["rw_acdc17", "--demo", "--executor", "debug", "--runs", "1", "--only", "acdc17_rrw,acdc17_dice"]
    argv += ["--output_dir", str(out), *TINY]
    assert run_cli(*argv) == 0
    return out, argv


@pytest.mark.slow
def test_debug_executor_writes_the_paper_table_from_the_runs(debug_study):
    out, _ = debug_study
    table = _read_table(out)
    assert {(row["bundle"], row["structure"], row["metric"]) for row in table} == {
        (b, s, m) for b in ("acdc17_rrw", "acdc17_dice") for s in ("RV", "M", "LV") for m in ("dice", "hd")
    }
    expected = _independent_rw_table(out, ["acdc17_rrw", "acdc17_dice"], 1)
    for row in table:
        mean, std = expected[(row["bundle"], row["structure"], row["metric"])]
        assert float(row["mean"]) == pytest.approx(mean, abs=1e-5)
        if math.isfinite(std):
            assert float(row["std"]) == pytest.approx(std, abs=1e-5)
    paper = {(r["bundle"], r["structure"], r["metric"]): r for r in table}
    assert paper[("acdc17_dice", "RV", "hd")]["paper"] == "20.98" and paper[("acdc17_dice", "RV", "hd")]["paper_mark"]
    reference = paper[("acdc17_rrw", "LV", "dice")]
    assert reference["paper"] == "0.94" and reference["p_value"] == ""
    assert 0 < float(paper[("acdc17_dice", "LV", "dice")]["p_value"]) <= 1
    assert "| Dice loss | `acdc17_dice` |" in (out / "table.md").read_text()
    for name in ("boxplot_dice.png", "boxplot_hd.png", "convergence.png"):
        assert (out / name).stat().st_size > 0
    # nothing was written into the repository's bundle folders
    assert not (BUNDLES_DIR / "acdc17_rrw" / "eval").exists()


@pytest.mark.slow
def test_a_second_call_trains_nothing_and_status_lists_every_run(debug_study, capsys):
    out, argv = debug_study
    marks = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/run_*/models/model.pt")}
    start = time.perf_counter()
    capsys.readouterr()
    assert run_cli(*argv) == 0
    assert time.perf_counter() - start < 30
    assert "2 reused, 0 failed" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/run_*/models/model.pt")} == marks
    assert run_cli(*argv, "--status") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["acdc17_rrw/run_0", "acdc17_dice/run_0"]
    assert all(re.search(r": complete \d+ s", line) for line in lines[:2])
    # the same folder with other settings is refused (runs of other settings would be mixed)
    assert run_cli(*argv, "--set", "epochs=5") == 2
    assert "study.json" in capsys.readouterr().err


@pytest.mark.slow
def test_local_executor_reports_a_failing_run_finishes_the_others_and_retries_it(tmp_path, capsys):
    out = tmp_path / "out"
    broken = out / "runs" / "acdc17_dice" / "run_0" / "models" / "model.pt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a checkpoint")  # 'training ended': evaluation runs, and fails on these weights
    argv = ["rw_acdc17", "--demo", "--executor", "local", "--max_parallel", "2", "--runs", "1"]
    argv += ["--only", "acdc17_rrw,acdc17_dice", "--output_dir", str(out), *TINY]
    assert run_cli(*argv) == 1
    printed = capsys.readouterr().out
    evaluate_log = out / "runs" / "acdc17_dice" / "run_0" / "evaluate.log"
    assert "failed acdc17_dice/run_0: evaluation failed" in printed and str(evaluate_log) in printed
    assert (out / "runs" / "acdc17_rrw" / "run_0" / "done.json").is_file()
    assert {row["bundle"] for row in _read_table(out)} == {"acdc17_rrw"}  # the table holds the finished run
    assert run_cli(*argv, "--status") == 0
    status = capsys.readouterr().out
    assert "acdc17_dice/run_0: failed" in status and str(evaluate_log) in status
    broken.unlink()  # the cause fixed: the next call retries the run (and reuses the complete one)
    assert run_cli(*argv) == 0
    assert "1 reused, 0 failed" in capsys.readouterr().out
    assert {row["bundle"] for row in _read_table(out)} == {"acdc17_rrw", "acdc17_dice"}


@pytest.mark.slow
def test_a_run_killed_mid_training_resumes_from_its_checkpoint(tmp_path, capsys):
    from common.evaluation.studies.runs import StudyOptions
    from common.evaluation.studies.workflow import run_study

    study = load_study("rw_acdc17")
    settings = {"iterations_per_epoch": 1, "kill_at_iteration": 2}  # killed in epoch 2, after epoch 1's checkpoint
    base = dict(output_dir=tmp_path / "out", demo=True, executor="debug", runs=1, only=("acdc17_rrw",))
    killed = StudyOptions(**base, settings=settings, extra_train_configs=(str(KILL_OVERLAY),))
    assert run_study(study, killed, report=lambda line: None) == 1
    run_dir = tmp_path / "out" / "runs" / "acdc17_rrw" / "run_0"
    assert "training failed (exit status -9)" in json.loads((run_dir / "failed.json").read_text())["message"]
    assert (run_dir / "models" / "checkpoint.pt").is_file() and not (run_dir / "models" / "model.pt").exists()
    assert run_study(study, StudyOptions(**base, settings=settings), report=lambda line: None) == 0
    log = (run_dir / "train.log").read_text()
    assert "resumed after epoch 1 of 2" in log
    import torch

    assert torch.load(run_dir / "models" / "checkpoint.pt", weights_only=True)["trainer"]["iteration"] == 2
    with open(run_dir / "eval" / "validation_metrics.csv", newline="") as stream:
        assert [row["epoch"] for row in csv.DictReader(stream)] == ["2"]  # validated once (val_interval 2)


# ---------------------------------------------------------------- SLURM through submitit, stand-in commands


def _fake_slurm(bin_dir: Path, record: Path) -> None:
    scripts = {
        "sbatch": f'cat "$1" >> {record}\necho "#END" >> {record}\necho "Submitted batch job 4242"\n',
        "sacct": 'echo "JobID|State|NodeList"\necho "4242|PENDING|None"\necho "4242_0|PENDING|None"\n',
        "squeue": "exit 0\n",
        "scancel": "exit 0\n",
        "srun": 'exec "$@"\n',
    }
    bin_dir.mkdir()
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_slurm_submits_one_job_per_run_with_the_resources_and_never_twice(tmp_path, monkeypatch, capsys):
    record = tmp_path / "sbatch_scripts.txt"
    _fake_slurm(tmp_path / "bin", record)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "out"
    argv = ["rw_acdc17", "--demo", "--executor", "slurm", "--runs", "1", "--only", "acdc17_rrw", "--no_wait"]
    argv += ["--output_dir", str(out), "--gpus_per_run", "2", "--time", "2:30:00", "--mem", "48G"]
    argv += ["--partition", "gpu", "--slurm_extra", "account=lab", "--slurm_setup", "module load cuda"]
    assert run_cli(*argv) == 3
    script = record.read_text()
    assert script.count("#END") == 1
    for line in ("#SBATCH --gpus-per-node=2", "#SBATCH --time=150", "#SBATCH --mem=48G", "#SBATCH --partition=gpu"):
        assert line in script
    assert "#SBATCH --account=lab" in script and "module load cuda" in script and f"cd {REPO_ROOT}" in script
    assert "submitit.core._submit" in script
    submitted = json.loads((out / "runs" / "acdc17_rrw" / "run_0" / "submitted.json").read_text())
    assert submitted["job_id"].startswith("4242")
    (pickled,) = out.glob("submitit/*_submitted.pkl")
    with open(pickled, "rb") as stream:
        (spec,) = pickle.load(stream).args
    command = training_command(spec)
    assert command[1:3] == ["-m", "torch.distributed.run"] and "--nproc_per_node=2" in command
    assert "multi_gpu_train.yaml" in command[command.index("--config_file") + 1]
    assert command[command.index("--bundle_root") + 1] == str((out / "runs" / "acdc17_rrw" / "run_0").resolve())
    assert command[-4:] == ["--seed", "0", "--resume", "True"]
    assert "--iterations_per_epoch" in evaluation_command(spec, False)
    capsys.readouterr()
    assert run_cli(*argv) == 0  # queued runs are not submitted again (the table has no complete run yet)
    assert record.read_text().count("#END") == 1
    assert "queued (slurm job 4242" in capsys.readouterr().out
    assert run_cli(*argv, "--status") == 0
    assert "acdc17_rrw/run_0: queued" in capsys.readouterr().out
