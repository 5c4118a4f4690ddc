"""scripts/demo.py end to end at tiny settings: validation cadence, the final weights' wording, the PNG, refusals."""

from __future__ import annotations

import csv
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "demo.py"
BUNDLE = REPO_ROOT / "bundles" / "acdc17_rrw"


def bundle_files() -> dict[str, float]:
    return {str(path.relative_to(BUNDLE)): path.stat().st_mtime for path in BUNDLE.rglob("*")}


@pytest.mark.slow
def test_demo_validates_every_few_epochs_scores_the_final_weights_and_writes_its_figure(tmp_path):
    before = bundle_files()
    output = tmp_path / "out"
    # 3 epochs validated every 2: one validation run, after epoch 2 (not after 1 or 3); 1 training, 1 held-out subject
    argv = ["--output-dir", str(output), "--epochs", "3", "--val-interval", "2", "--subjects", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout

    with open(output / "train" / "validation_metrics.csv") as stream:
        assert [row["epoch"] for row in csv.DictReader(stream)] == ["2"]
    assert out.count("common.training.metrics - INFO - validation of epoch") == 2  # epoch 2, then the final weights
    assert "=== train 3 epochs, validating every 2" in out
    assert "validated during training after epochs 2\n" in out
    assert "=== score the final weights (models/model.pt) on every slice of the held-out patients" in out
    assert "final weights on the 2 held-out volumes, every slice (mean +- std over cases):" in out
    assert "best" not in out.split("=== where everything went")[1]
    assert "training " in out and "of which validation" in out

    figure = output / "demo_result.png"
    assert f"{figure}\n" in out
    with Image.open(figure) as image:
        image.verify()
    with Image.open(figure) as image:
        assert image.format == "PNG" and image.width > 600 and image.height > 200

    # everything below the output folder; the bundle folder the steps run in is left as it was
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]
    assert bundle_files() == before


def test_demo_refuses_an_existing_output_folder_and_bad_options(tmp_path, capsys):
    main = runpy.run_path(str(SCRIPT))["main"]
    output = tmp_path / "out"
    output.mkdir()
    (output / "demo_result.png").write_bytes(b"mine")
    assert main(["--output-dir", str(output)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {output}: already exists; remove it or pass another --output-dir"
    )
    assert (output / "demo_result.png").read_bytes() == b"mine"
    for option, value in (("--epochs", "0"), ("--val-interval", "0"), ("--subjects", "1")):
        assert main(["--output-dir", str(tmp_path / "new"), option, value]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: {option} {value}: must be at least")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]
