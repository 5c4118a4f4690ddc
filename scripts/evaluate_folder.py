"""Evaluate a folder of predicted label maps against ground-truth labels (NIfTI).

Every label file under LABEL_DIR (recursively) is paired with the prediction at the same relative path under
PRED_DIR; ``--label-postfix`` is removed from the label's name and ``--pred-postfix`` added to find the
prediction (ACDC: ``patient001_frame01_gt.nii.gz`` -> ``patient001_frame01_seg.nii.gz`` with
``--label-postfix _gt --pred-postfix _seg``). A case is named by its relative path without the NIfTI suffix and
the label postfix (``siteA/patient001`` and ``siteB/patient001`` are two cases). Spacing comes from the label
file's affine. Writes a per-case, per-structure CSV (Dice, HD, HD95 in mm, status) and a mean +- std summary CSV
next to it, atomically. ``--overlays DIR`` also draws, per case, the image (from ``--image-dir``), label and
prediction on the slice (last axis) with the most labelled voxels. ``--dataset-json`` evaluates the label values of
an MSD ``dataset.json`` under its names (predictions that carry the dataset's label values). ``--datalist`` evaluates
the classes of a training datalist (``scripts/prepare_*.py``; a plain ``dataset.json`` also works) under their
names, each in the data set's label values it was trained from (a merged class: all values of its group; labels
that training left out are background), as the MSD bundles' predictions carry them.

Nothing is paired wrongly or dropped silently: a prediction folder inside the label folder (or the reverse), two
label files that give the same case name, and outputs inside an input folder are refused before anything is read
(exit status 2, as for existing outputs without ``--overwrite``). Cases that fail (missing prediction, unreadable
file, shape or geometry mismatch) and predictions that no label file pairs with are listed at the end with their
reason and make the exit status 1; the other cases are still evaluated and written.

    python scripts/evaluate_folder.py --label-dir labelsTs --pred-dir preds --num-classes 4 --output eval/rrw.csv
    python scripts/evaluate_folder.py --label-dir brats/labels --pred-dir preds --labels 1 2 4 --regions brats \
        --output eval/brats.csv
    python scripts/evaluate_folder.py --label-dir Task/labelsTs --pred-dir preds --datalist Task/datalist.json \
        --output eval/task.csv
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.data.datalists import read_datalist_field
from common.data.nifti import NIFTI_SUFFIXES, load_volume
from common.errors import EXIT_FAILURE, EXIT_USER_ERROR, UserError, ensure_absent, install_error_hook
from common.evaluation.metrics import (
    StructureResult,
    brats_regions,
    class_structures,
    evaluate_case,
    spacing_from_affine,
)
from common.evaluation.plots import plot_segmentation_overlay
from common.evaluation.tables import format_summary, summarize, write_results_csv, write_summary_csv
from common.inference.folders import discover_images


def nifti_stem(path: Path) -> tuple[str, str]:
    """``(stem, suffix)`` of a NIfTI file name; the suffix keeps its case (``.NII.GZ`` stays)."""
    suffix = next(s for s in (".nii.gz", ".nii") if path.name.lower().endswith(s))
    return path.name[: -len(suffix)], path.name[-len(suffix) :]


def sibling_path(folder: Path, stem: str, suffix: str) -> Path:
    """``folder/stem+suffix``, or the other NIfTI suffix when only that one exists."""
    candidates = [folder / f"{stem}{suffix}"] + [
        folder / f"{stem}{other}" for other in NIFTI_SUFFIXES if other != suffix.lower()
    ]
    return next((c for c in candidates if c.exists()), candidates[0])


@dataclass(frozen=True)
class Job:
    case: str
    label_path: Path
    pred_path: Path
    structures: dict[str, tuple[int, ...]]
    num_classes: int | None
    image_path: Path | None = None
    overlay_path: Path | None = None
    overwrite: bool = False


def make_job(label_path: Path, args: argparse.Namespace, structures, num_classes) -> Job:
    """The case of one label file: its id (relative path, postfix removed) and the files that go with it."""
    stem, suffix = nifti_stem(label_path)
    if args.label_postfix and stem.endswith(args.label_postfix):
        stem = stem[: -len(args.label_postfix)]
    relative_folder = label_path.relative_to(args.label_dir).parent
    pred_path = sibling_path(args.pred_dir / relative_folder, f"{stem}{args.pred_postfix}", suffix)
    image_path = overlay_path = None
    if args.overlays:
        image_path = sibling_path(args.image_dir / relative_folder, stem, suffix) if args.image_dir else None
        overlay_path = args.overlays / relative_folder / f"{stem}_overlay.png"
    case = (relative_folder / stem).as_posix()
    return Job(case, label_path, pred_path, structures, num_classes, image_path, overlay_path, args.overwrite)


def check_folders(args: argparse.Namespace, outputs: list[Path]) -> None:
    """Refuse folder layouts that would pair files wrongly or write into an input folder.

    Raises:
        UserError: the prediction and label folders are nested (or the same), or an output lies in an input folder.
    """
    label_dir, pred_dir = args.label_dir.resolve(), args.pred_dir.resolve()
    if pred_dir.is_relative_to(label_dir) or label_dir.is_relative_to(pred_dir):
        raise UserError(
            f"--pred-dir {args.pred_dir} and --label-dir {args.label_dir} are the same folder or one holds the other, "
            "so predictions would be read as labels (or the reverse); keep them in separate folders"
        )
    inputs = {"--label-dir": args.label_dir, "--pred-dir": args.pred_dir, "--image-dir": args.image_dir}
    for output in outputs:
        for option, folder in inputs.items():
            if folder is not None and output.resolve().is_relative_to(folder.resolve()):
                raise UserError(f"{output}: output inside {option} {folder}; write it outside the input folders")
    if len(set(path.resolve() for path in outputs)) != len(outputs):
        raise UserError(f"outputs {[str(path) for path in outputs]} must be distinct files")


def duplicate_cases(jobs: list[Job]) -> list[str]:
    """One line per case id that several label files share (``x.nii`` and ``x.nii.gz``, ``x_gt`` and ``x``)."""
    by_case: dict[str, list[Path]] = {}
    for job in jobs:
        by_case.setdefault(job.case, []).append(job.label_path)
    return [f"{case}: {', '.join(map(str, paths))}" for case, paths in by_case.items() if len(paths) > 1]


def unpaired_predictions(jobs: list[Job], pred_dir: Path) -> list[Path]:
    """Prediction files that no label file is paired with."""
    paired = {job.pred_path.resolve() for job in jobs}
    return [path for path in discover_images(pred_dir) if path.resolve() not in paired]


def load_checked(job: Job) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label, prediction and affine of a case, after the checks that name the offending file."""
    if not job.pred_path.exists():
        raise ValueError(f"{job.pred_path}: prediction missing for label {job.label_path}")
    label, label_affine = load_volume(job.label_path)
    pred, pred_affine = load_volume(job.pred_path)
    if pred.shape != label.shape:
        raise ValueError(
            f"{job.pred_path}: shape {pred.shape} differs from the label's {label.shape} ({job.label_path})"
        )
    if not np.allclose(pred_affine, label_affine, atol=1e-3):
        raise ValueError(f"{job.pred_path}: affine differs from the label's ({job.label_path})")
    if job.num_classes is not None:
        for path, array in ((job.label_path, label), (job.pred_path, pred)):
            outside = np.unique(array[(array < 0) | (array >= job.num_classes)])
            if outside.size:
                raise ValueError(f"{path}: label values {outside.tolist()} outside 0..{job.num_classes - 1}")
    return label, pred, label_affine


def write_overlay(job: Job, label: np.ndarray, pred: np.ndarray) -> None:
    """Overlay of the axial slice (last axis) with the most labelled voxels."""
    image = label
    if job.image_path is not None:
        image, _ = load_volume(job.image_path)
        if image.shape != label.shape:
            raise ValueError(f"{job.image_path}: shape {image.shape} differs from the label's {label.shape}")
    index = int(np.argmax((label > 0).sum(axis=(0, 1))))
    plot_segmentation_overlay(
        np.asarray(image[..., index], dtype=np.float32),
        np.asarray(label[..., index]).astype(np.int64),
        np.asarray(pred[..., index]).astype(np.int64),
        job.overlay_path,
        num_classes=job.num_classes,
        title=f"{job.case}, slice {index}",
        overwrite=job.overwrite,
    )


def run_job(job: Job) -> tuple[list[StructureResult], str | None]:
    try:
        label, pred, affine = load_checked(job)
        try:
            results = evaluate_case(pred, label, job.structures, spacing_from_affine(affine), case=job.case)
        except ValueError as error:
            raise ValueError(f"{job.pred_path}: {error}") from error
        if job.overlay_path is not None:
            write_overlay(job, label, pred)
        return results, None
    except (ValueError, OSError) as error:
        return [], str(error)


def dataset_structures(path: Path, include_background: bool) -> dict[str, tuple[int, ...]]:
    """One structure per label of an MSD ``dataset.json`` (``"labels": {"1": "aorta", ...}``), named as there.

    Raises:
        UserError: the file is unreadable or its ``labels`` entry is not such a mapping.
    """
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))["labels"]
        values = {int(value): str(name) for value, name in labels.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise UserError(
            f'{path}: needs a "labels" entry such as {{"0": "background", "1": "aorta"}} ({type(error).__name__}: '
            f"{error})"
        ) from error
    if len(set(values.values())) != len(values):
        raise UserError(f"{path}: label names must be distinct, got {sorted(values.values())}")
    return {name: (value,) for value, name in sorted(values.items()) if value != 0 or include_background}


def datalist_structures(path: Path, include_background: bool) -> dict[str, tuple[int, ...]]:
    """One structure per training class of a datalist, named by its ``class_names``, with the data set's label
    values that its ``label_mapping`` takes to the class (a merged class has several).

    Raises:
        UserError: the file is not a datalist naming its classes, or the names and mapping do not fit each other.
    """
    try:
        names = ["background", *read_datalist_field(path, "class_names")]
        mapping = read_datalist_field(path, "label_mapping")
        pairs = list(zip(mapping["orig_labels"], mapping["target_labels"], strict=True))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(
            f"{path}: needs the classes of a datalist written by scripts/prepare_*.py (or a dataset.json with "
            f'"labels") ({type(error).__name__}: {error})'
        ) from error
    values = {
        index: tuple(sorted(int(orig) for orig, target in pairs if target == index)) for index in range(len(names))
    }
    problems = [
        f"class {index} ({names[index]}) has no label value" for index in range(1, len(names)) if not values[index]
    ]
    problems += [
        f"label_mapping targets {target}, beyond the {len(names)} classes"
        for _, target in pairs
        if target >= len(names)
    ]
    if len(set(names)) != len(names):
        problems.append(f"class names must be distinct, got {names}")
    if problems:
        raise UserError(f"{path}: {'; '.join(problems)}")
    return {names[index]: values[index] for index in range(0 if include_background else 1, len(names))}


def build_structures(args: argparse.Namespace) -> dict[str, tuple[int, ...]]:
    if args.datalist:
        structures = datalist_structures(args.datalist, args.include_background)
    elif args.dataset_json:
        structures = dataset_structures(args.dataset_json, args.include_background)
    elif args.labels:
        structures = {f"class_{v}": (v,) for v in args.labels}
    elif args.num_classes:
        structures = class_structures(args.num_classes, include_background=args.include_background)
    else:
        structures = {}
    if args.regions == "brats":
        structures.update(brats_regions(args.enhancing_label))
    return structures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label-dir", required=True, type=Path, help="ground-truth NIfTI labels (recursive)")
    parser.add_argument("--pred-dir", required=True, type=Path, help="predicted NIfTI label maps")
    parser.add_argument("--output", required=True, type=Path, help="per-case CSV to write")
    parser.add_argument("--summary", type=Path, help="summary CSV (default: <output stem>_summary.csv)")
    parser.add_argument("--num-classes", type=int, help="classes including background; evaluates 1..N-1")
    parser.add_argument("--labels", type=int, nargs="+", help="explicit label values to evaluate as classes")
    parser.add_argument(
        "--dataset-json", type=Path, help="MSD dataset.json: evaluate its label values, named as in its 'labels'"
    )
    parser.add_argument(
        "--datalist", type=Path, help="training datalist: evaluate its classes by name, in the data set's label values"
    )
    parser.add_argument(
        "--include-background", action="store_true", help="also evaluate the background (--num-classes, --datalist)"
    )
    parser.add_argument("--regions", choices=["brats"], help="also evaluate BraTS WT/TC/ET regions")
    parser.add_argument("--enhancing-label", type=int, default=4, help="enhancing-tumour label for --regions brats")
    parser.add_argument("--label-postfix", default="", help="removed from label file names (e.g. _gt)")
    parser.add_argument("--pred-postfix", default="", help="added to find prediction file names (e.g. _seg)")
    parser.add_argument(
        "--overlays", type=Path, help="folder for a PNG overlay of image, label and prediction per case"
    )
    parser.add_argument("--image-dir", type=Path, help="images for --overlays (same names without --label-postfix)")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    args = parser.parse_args(argv)

    for option, postfix in (("--label-postfix", args.label_postfix), ("--pred-postfix", args.pred_postfix)):
        if "/" in postfix or "\\" in postfix:  # would lead the pairing out of the folder
            parser.error(f"{option} {postfix!r}: a postfix is part of a file name and may not hold a path separator")
    try:
        structures = build_structures(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    if not structures:
        parser.error("nothing to evaluate: give --num-classes, --labels, --dataset-json, --datalist or --regions")
    summary_path = args.summary or args.output.with_name(f"{args.output.name.removesuffix('.csv')}_summary.csv")
    outputs = [args.output, summary_path] + ([args.overlays] if args.overlays else [])
    try:
        check_folders(args, outputs)
        ensure_absent(args.output, summary_path, overwrite=args.overwrite)
        label_paths = discover_images(args.label_dir)
        if not args.pred_dir.is_dir():
            raise NotADirectoryError(f"{args.pred_dir}: prediction folder does not exist or is not a folder")
        if not label_paths:
            raise UserError(f"{args.label_dir}: no NIfTI label files found (searched recursively)")
        by_value = args.labels or args.dataset_json or args.datalist  # data set values, not 0..num_classes - 1
        num_classes = args.num_classes if not by_value and args.regions is None else None
        jobs = [make_job(label_path, args, structures, num_classes) for label_path in label_paths]
        ensure_absent(*[job.overlay_path for job in jobs if job.overlay_path], overwrite=args.overwrite)
        duplicates = duplicate_cases(jobs)
        if duplicates:
            raise UserError(
                "label files that give the same case name (rename or remove one):\n  " + "\n  ".join(duplicates)
            )
    except (UserError, FileExistsError, NotADirectoryError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR

    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            outcomes = list(pool.map(run_job, jobs))
    else:
        outcomes = [run_job(job) for job in jobs]
    results = [row for rows, _ in outcomes for row in rows]
    failures = [error for _, error in outcomes if error]
    unpaired = unpaired_predictions(jobs, args.pred_dir)

    if results:
        write_results_csv(results, args.output, overwrite=args.overwrite)
        summary = summarize(results)
        write_summary_csv(summary, summary_path, overwrite=args.overwrite)
        print(format_summary(summary))
        print(f"wrote {args.output} and {summary_path} ({len(jobs) - len(failures)} cases)")
    if unpaired:
        print(f"{len(unpaired)} prediction(s) without a label file, not evaluated:", file=sys.stderr)
        for path in unpaired:
            print(f"  {path}: no label file pairs with it", file=sys.stderr)
    if failures:
        print(f"{len(failures)} of {len(jobs)} cases failed:", file=sys.stderr)
        for error in failures:
            print(f"  {error}", file=sys.stderr)
    return EXIT_FAILURE if failures or unpaired else 0


if __name__ == "__main__":
    install_error_hook()  # anything unexpected still ends with its cause as the last line
    sys.exit(main())
