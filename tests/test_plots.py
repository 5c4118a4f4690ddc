from __future__ import annotations

import csv
import runpy
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from common.evaluation.plots import (
    plot_curves,
    plot_diagnostic_overlay,
    plot_ecdf,
    plot_run_summary,
    plot_segmentation_overlay,
)


def is_png(path) -> bool:
    with open(path, "rb") as stream:
        return stream.read(8) == b"\x89PNG\r\n\x1a\n"


def test_curves_and_ecdf_write_pngs_and_refuse_to_overwrite(tmp_path):
    curves = {"rrw": [0.2, 0.5, 0.7], "boundary": (np.array([1, 2, 3]), np.array([0.1, 0.3, 0.2]))}
    path = plot_curves(curves, tmp_path / "curves.png")
    assert is_png(path)
    ecdf = plot_ecdf({"rrw": [0.8, 0.82, float("nan")], "boundary": [0.1, 0.7]}, tmp_path / "ecdf.png")
    assert is_png(ecdf)
    with pytest.raises(FileExistsError, match="ecdf.png"):
        plot_ecdf({"rrw": [0.5]}, tmp_path / "ecdf.png")
    plot_ecdf({"rrw": [0.5]}, tmp_path / "ecdf.png", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "ecdf.png"]


def test_segmentation_overlay_colours_labelled_pixels(tmp_path):
    image = np.zeros((40, 40))
    label = np.zeros((40, 40), dtype=int)
    label[10:30, 10:30] = 1
    path = plot_segmentation_overlay(image, label, np.zeros_like(label), tmp_path / "overlay.png")
    pixels = imread(path)[..., :3]
    # a black image: only the label panel's overlay is coloured
    assert (pixels.max(axis=2) - pixels.min(axis=2)).max() > 0.2


def test_run_summary_writes_one_png_and_refuses_to_overwrite(tmp_path):
    image = np.random.default_rng(0).random((20, 16))
    label = np.zeros((20, 16), dtype=int)
    label[5:15, 4:12] = 2
    curves = ([1, 2, 3, 4], [0.5, 0.3, 0.2, 0.1]), ([2, 4], [0.4, 0.7])
    path = plot_run_summary(*curves, image, label, label, tmp_path / "run.png", num_classes=3)
    assert is_png(path) and imread(path).shape[1] > imread(path).shape[0]
    with pytest.raises(FileExistsError, match="run.png"):
        plot_run_summary(*curves, image, label, label, tmp_path / "run.png")
    with pytest.raises(ValueError, match="shapes differ"):
        plot_run_summary(*curves, image, label[:4], label, tmp_path / "bad.png")
    assert [p.name for p in tmp_path.iterdir()] == ["run.png"]


def test_diagnostic_overlay_and_shape_check(tmp_path):
    image = np.random.default_rng(0).random((16, 12))
    counts = {"RRW": np.ones((16, 12), dtype=int), "Boundary": np.tile([1, 2, 3], (16, 4))}
    assert is_png(plot_diagnostic_overlay(image, counts, tmp_path / "diag.png"))
    with pytest.raises(ValueError, match="shapes differ"):
        plot_diagnostic_overlay(image, {"x": np.ones((3, 3), dtype=int)}, tmp_path / "bad.png")


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
RRW, BOUNDARY = BUNDLES / "acdc17_rrw", BUNDLES / "acdc17_boundary"


def write_validation_table(run_dir: Path, dice: list[float]) -> None:
    (run_dir / "eval").mkdir(parents=True)
    lines = ["epoch,val_mean_dice"] + [f"{epoch},{value}" for epoch, value in enumerate(dice, start=1)]
    (run_dir / "eval" / "validation_metrics.csv").write_text("\n".join(lines) + "\n")


def test_convergence_study_plots_existing_runs_and_reports_failures(tmp_path, capsys):
    if not (RRW / "configs" / "train.yaml").is_file() or not (BOUNDARY / "configs" / "train.yaml").is_file():
        pytest.skip("ACDC bundles not present")
    main = runpy.run_path(str(SCRIPTS / "convergence_study.py"))["main"]
    study = tmp_path / "study"
    write_validation_table(study / "acdc17_rrw" / "seed0", [0.3, 0.6, 0.8])
    write_validation_table(study / "acdc17_rrw" / "seed1", [0.2, 0.5, 0.7])
    write_validation_table(study / "acdc17_boundary" / "seed0", [0.3, 0.2, 0.1])
    common = ["--bundles", str(RRW), str(BOUNDARY), "--dataset-dir", str(tmp_path), "--study-dir", str(study)]
    common += ["--seeds", "2"]
    assert main([*common, "--epochs", "3", "--plot-only"]) == 0
    rows = list(csv.DictReader(open(study / "final_dice.csv")))
    assert [(r["bundle"], r["seed"], float(r["final_val_mean_dice"])) for r in rows] == [
        ("acdc17_rrw", "0", 0.8),
        ("acdc17_rrw", "1", 0.7),
        ("acdc17_boundary", "0", 0.1),
    ]
    assert all(is_png(study / name) for name in ("final_dice_ecdf.png", "validation_dice_curves.png"))
    assert "acdc17_rrw: final val_mean_dice over 2 runs: min 0.7000, median 0.7500" in capsys.readouterr().out
    # boundary seed 1 never ran: training is attempted only without --plot-only; --dry-run shows the command
    assert main([*common, "--epochs", "3", "--dry-run", "--override", "num_workers=0"]) == 0
    commands = capsys.readouterr().out.strip().splitlines()
    assert len(commands) == 4
    assert f"--config_file {(BOUNDARY / 'configs' / 'train.yaml').resolve()}" in commands[-1]
    assert "--epochs 3 --seed 1 --overwrite False --num_workers 0" in commands[-1]
    assert f"--bundle_root {(study / 'acdc17_boundary' / 'seed1').resolve()}" in commands[-1]
    # figures exist: a second study run needs --overwrite
    assert main([*common, "--epochs", "3"]) == 2
    # an unreadable table is reported by name, the other runs are still plotted
    (study / "acdc17_boundary" / "seed1" / "eval").mkdir(parents=True)
    (study / "acdc17_boundary" / "seed1" / "eval" / "validation_metrics.csv").write_text("step,loss\n1,0.5\n")
    assert main([*common, "--epochs", "3", "--plot-only"]) == 1
    assert "seed1/eval/validation_metrics.csv: no 'epoch'" in capsys.readouterr().err
    assert len(list(csv.DictReader(open(study / "final_dice.csv")))) == 3


def test_convergence_study_defaults_to_the_paper_and_refuses_expression_overrides(tmp_path, capsys):
    main = runpy.run_path(str(SCRIPTS / "convergence_study.py"))["main"]
    common = ["--bundles", str(RRW), "--dataset-dir", str(tmp_path), "--study-dir", str(tmp_path / "study")]
    assert main([*common, "--dry-run"]) == 0
    commands = capsys.readouterr().out.strip().splitlines()
    assert len(commands) == 50 and all("--epochs 50 " in command for command in commands)  # 50 models x 50 epochs
    expression = "learning_rate=$__import__('os').getcwd()"
    with pytest.raises(SystemExit):
        main([*common, "--dry-run", "--override", expression])
    assert "(--allow-expressions allows it)" in capsys.readouterr().err
    assert main([*common, "--dry-run", "--seeds", "1", "--override", expression, "--allow-expressions"]) == 0
    assert "--learning_rate $__import__('os').getcwd()" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*common, "--dry-run", "--override", "no_equals_sign"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "needs--allow-expressions" in "".join(capsys.readouterr().out.split())  # as argparse wraps it
    for data_only in ("lr=%train.yaml#lr", "filters=[8, '$16']", "loss={_target_: torch.nn.MSELoss}", "epochs=3"):
        with pytest.raises(SystemExit):  # code anywhere in the value, or a setting the study makes itself
            main([*common, "--dry-run", "--override", data_only])
        assert "--override" in capsys.readouterr().err
