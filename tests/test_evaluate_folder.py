"""scripts/evaluate_folder.py never pairs files wrongly, never drops a file silently, never writes into its inputs."""

from __future__ import annotations

import runpy
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.errors import EXIT_FAILURE, EXIT_USER_ERROR
from common.evaluation.tables import read_results_csv

evaluate_folder_main = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "evaluate_folder.py"))[
    "main"
]
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def save_label(path: Path, size: int) -> None:
    """A cube of ``size`` voxels a side of label 1 in a 12^3 volume (Dice between sizes a and b: 2 min^3/(a^3+b^3))."""
    label = np.zeros((12, 12, 12), np.uint8)
    label[2 : 2 + size, 2 : 2 + size, 2 : 2 + size] = 1
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(label, AFFINE), path)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def arguments(labels: Path, preds: Path, output: Path, *extra: str) -> list[str]:
    return ["--label-dir", str(labels), "--pred-dir", str(preds), "--num-classes", "2", "--output", str(output), *extra]


def test_same_names_at_two_sites_are_two_cases_and_unpaired_files_are_listed(tmp_path, capsys):
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    save_label(labels / "siteA" / "patient001.nii.gz", 4)
    save_label(labels / "siteB" / "patient001.nii.gz", 6)
    save_label(labels / "siteB" / "no_prediction.nii.gz", 4)
    save_label(preds / "siteA" / "patient001.nii.gz", 4)
    save_label(preds / "siteB" / "patient001.nii.gz", 4)
    save_label(preds / "siteC" / "patient001.nii.gz", 4)  # no label: reported, not matched by name elsewhere
    before = snapshot(tmp_path)
    output = tmp_path / "eval" / "cases.csv"

    assert evaluate_folder_main(arguments(labels, preds, output)) == EXIT_FAILURE
    errors = capsys.readouterr().err
    dice = {result.case: result.dice for result in read_results_csv(output)}
    assert dice == {"siteA/patient001": 1.0, "siteB/patient001": pytest.approx(2 * 64 / (64 + 216))}
    assert "1 of 3 cases failed" in errors
    assert f"{preds / 'siteB' / 'no_prediction.nii.gz'}: prediction missing" in errors
    assert "1 prediction(s) without a label file" in errors
    assert f"{preds / 'siteC' / 'patient001.nii.gz'}: no label file pairs with it" in errors
    assert {name: data for name, data in snapshot(tmp_path).items() if not name.startswith("eval")} == before


@pytest.mark.parametrize("layout", ["preds_in_labels", "labels_in_preds", "same_folder"])
def test_nested_label_and_prediction_folders_are_refused_by_name(tmp_path, capsys, layout):
    labels = tmp_path / "labels"
    preds = {"preds_in_labels": labels / "preds", "labels_in_preds": tmp_path, "same_folder": labels}[layout]
    save_label(labels / "case.nii.gz", 4)
    save_label(preds / "case_seg.nii.gz", 4)
    output = tmp_path.parent / f"{tmp_path.name}_out" / "cases.csv"
    assert evaluate_folder_main(arguments(labels, preds, output, "--pred-postfix", "_seg")) == EXIT_USER_ERROR
    error = capsys.readouterr().err
    assert error.startswith(f"error: --pred-dir {preds} and --label-dir {labels} are the same folder or one holds")
    assert not output.parent.exists()


def test_duplicate_case_names_and_outputs_inside_inputs_are_refused(tmp_path, capsys):
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    save_label(labels / "case_gt.nii.gz", 4)
    save_label(labels / "case.NII", 4)  # upper-case suffix: found, and the same case once postfixes are removed
    save_label(preds / "case.nii.gz", 4)
    output = tmp_path / "eval.csv"
    assert evaluate_folder_main(arguments(labels, preds, output, "--label-postfix", "_gt")) == EXIT_USER_ERROR
    error = capsys.readouterr().err
    assert "label files that give the same case name" in error
    assert f"case: {labels / 'case.NII'}, {labels / 'case_gt.nii.gz'}" in error
    (labels / "case.NII").unlink()

    inside = preds / "eval.csv"
    assert evaluate_folder_main(arguments(labels, preds, inside, "--label-postfix", "_gt")) == EXIT_USER_ERROR
    assert f"error: {inside}: output inside --pred-dir {preds}" in capsys.readouterr().err
    overlays = labels / "overlays"
    argv = arguments(labels, preds, output, "--label-postfix", "_gt", "--overlays", str(overlays))
    assert evaluate_folder_main(argv) == EXIT_USER_ERROR
    assert f"error: {overlays}: output inside --label-dir {labels}" in capsys.readouterr().err
    assert not inside.exists() and not overlays.exists() and not output.exists()

    escaping = arguments(labels, preds, output, "--label-postfix", "_gt", "--pred-postfix", "/../../labels/case_gt")
    with pytest.raises(SystemExit):
        evaluate_folder_main(escaping)
    assert "may not hold a path separator" in capsys.readouterr().err

    assert evaluate_folder_main(arguments(labels, preds, output, "--label-postfix", "_gt")) == 0
    assert [result.case for result in read_results_csv(output)] == ["case"]


def test_structures_are_named_and_valued_as_in_dataset_json(tmp_path, capsys):
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    label = np.zeros((12, 12, 12), np.uint8)
    label[2:6, 2:6, 2:6] = 1
    label[7:11, 7:11, 7:11] = 5  # release label values need not be consecutive
    prediction = label.copy()
    prediction[7:11, 7:11, 7:9] = 0  # half the kidney missed
    labels.mkdir()
    preds.mkdir()
    nib.save(nib.Nifti1Image(label, AFFINE), labels / "case.nii.gz")
    nib.save(nib.Nifti1Image(prediction, AFFINE), preds / "case.nii.gz")
    description = tmp_path / "dataset.json"
    description.write_text('{"labels": {"0": "background", "1": "aorta", "5": "kidney"}}')
    output = tmp_path / "eval.csv"
    argv = ["--label-dir", str(labels), "--pred-dir", str(preds), "--dataset-json", str(description)]
    assert evaluate_folder_main([*argv, "--output", str(output)]) == 0
    dice = {result.structure: (result.labels, result.dice) for result in read_results_csv(output)}
    assert dice == {"aorta": ("1", 1.0), "kidney": ("5", pytest.approx(2 * 32 / (64 + 32)))}
    description.write_text('{"labels": ["background", "aorta"]}')
    assert evaluate_folder_main([*argv, "--output", str(tmp_path / "other.csv")]) == EXIT_USER_ERROR
    assert f'error: {description}: needs a "labels" entry such as' in capsys.readouterr().err


def test_datalist_classes_are_named_and_evaluated_in_the_data_sets_values(tmp_path, capsys):
    """A datalist that kept the aorta (27), merged 3 and 4 into 'ventricles' and dropped 5 (as prepare_msd.py's
    --labels/--merge write it): predictions in the data set's values, a merged class as the first of its group."""
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    label = np.zeros((12, 12, 12), np.uint8)
    label[2:6, 2:6, 2:6] = 27
    label[7:11, 7:11, 7:9] = 3
    label[7:11, 7:11, 9:11] = 4
    label[0, 0, :] = 5  # dropped by the datalist: background
    prediction = np.zeros_like(label)
    prediction[2:6, 2:6, 2:4] = 27  # half the aorta found
    prediction[7:11, 7:11, 7:11] = 3  # the merged class is written as its first value
    labels.mkdir()
    preds.mkdir()
    nib.save(nib.Nifti1Image(label, AFFINE), labels / "case.nii.gz")
    nib.save(nib.Nifti1Image(prediction, AFFINE), preds / "case.nii.gz")
    datalist = tmp_path / "datalist.json"
    datalist.write_text(
        '{"training": [], "num_classes": 3, "class_names": ["aorta", "ventricles"], '
        '"label_mapping": {"orig_labels": [0, 3, 4, 5, 27], "target_labels": [0, 2, 2, 0, 1]}}'
    )
    argv = ["--label-dir", str(labels), "--pred-dir", str(preds), "--datalist", str(datalist)]
    assert evaluate_folder_main([*argv, "--output", str(tmp_path / "eval.csv")]) == 0
    dice = {result.structure: (result.labels, result.dice) for result in read_results_csv(tmp_path / "eval.csv")}
    assert dice == {"aorta": ("27", pytest.approx(2 * 32 / (64 + 32))), "ventricles": ("3+4", 1.0)}
    assert "class_" not in capsys.readouterr().out

    argv_background = [*argv, "--include-background", "--output", str(tmp_path / "with_background.csv")]
    assert evaluate_folder_main(argv_background) == 0
    rows = {result.structure: result.labels for result in read_results_csv(tmp_path / "with_background.csv")}
    assert rows == {"background": "0+5", "aorta": "27", "ventricles": "3+4"}

    plain = tmp_path / "dataset.json"  # a plain MSD dataset.json: its labels, in their values
    plain.write_text('{"training": [], "labels": {"0": "background", "3": "ventricle", "27": "aorta"}}')
    argv_plain = ["--label-dir", str(labels), "--pred-dir", str(preds), "--datalist", str(plain)]
    assert evaluate_folder_main([*argv_plain, "--output", str(tmp_path / "plain.csv")]) == 0
    rows = {result.structure: result.labels for result in read_results_csv(tmp_path / "plain.csv")}
    assert rows == {"ventricle": "3", "aorta": "27"}

    datalist.write_text('{"training": [], "class_names": ["aorta"]}')
    assert evaluate_folder_main([*argv, "--output", str(tmp_path / "bad.csv")]) == EXIT_USER_ERROR
    assert f"error: {datalist}: needs the classes of a datalist" in capsys.readouterr().err
    assert not (tmp_path / "bad.csv").exists()
