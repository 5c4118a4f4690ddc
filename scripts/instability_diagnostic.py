"""Render the RW paper's instability diagnostic (its Figure 3) for label volumes.

For every label file, RW maps (RRW and RW-Boundary by default) are computed on the 3D label with the file's
spacing, and the number of negative components of the RW-loss gradient dL/dlogits is counted at every voxel
(``common.evaluation.diagnostics``). The logits are those of a network at initialisation by default
(``--logits uniform``: equal probabilities; ``random``: standard normal logits), or read from ``--prediction``
(a 4D NIfTI with the classes along the last axis, logits or, with ``--probabilities``, softmax outputs). Prints the
fraction of voxels with more than one negative component per map and writes ``<output-dir>/<case>_instability.png``
with one panel per map over a slice (``<case>`` is the label's path below the labels' common folder, without
the suffix, so equally named labels of two folders get two figures). Failed cases are reported at the end (exit
status 1). Before any figure is written, every label is checked for values that are not whole numbers and every
``--prediction`` for NaN or infinite values: such a file is refused with one ``error:`` line naming it (exit
status 2); labels are never rounded.

    python scripts/instability_diagnostic.py --label patient001_frame01_gt.nii.gz --image patient001_frame01.nii.gz \
        --num-classes 4 --output-dir figures
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from common.data.nifti import load_volume
from common.errors import EXIT_USER_ERROR, UserError, install_error_hook
from common.evaluation.case_metrics import case_ids
from common.evaluation.diagnostics import (
    check_finite_scores,
    integer_labels,
    multi_negative_fraction,
    negative_component_count,
)
from common.evaluation.metrics import spacing_from_affine
from common.evaluation.plots import plot_diagnostic_overlay
from common.maps import active_contour_map, boundary_map, rrw_map

MAPS = {
    "rrw": ("RRW", lambda label, n, spacing: rrw_map(label, n, spacing)),
    "boundary": ("RW-Boundary", lambda label, n, spacing: boundary_map(label, n, spacing)),
    "active_contour": ("Active contour", lambda label, n, spacing: active_contour_map(label, n)),
}


def initial_logits(shape: tuple[int, ...], num_classes: int, kind: str, seed: int) -> torch.Tensor:
    if kind == "uniform":
        return torch.zeros(num_classes, *shape)
    return torch.randn(num_classes, *shape, generator=torch.Generator().manual_seed(seed))


def read_prediction(path: Path, shape: tuple[int, ...], num_classes: int, probabilities: bool) -> torch.Tensor:
    array, _ = load_volume(path, spatial_dims=len(shape) + 1)
    if array.shape != (*shape, num_classes):
        raise ValueError(f"{path}: expected shape {(*shape, num_classes)} (classes last), got {array.shape}")
    check_finite_scores(array, path, probabilities)
    values = torch.as_tensor(np.moveaxis(np.asarray(array, dtype=np.float32), -1, 0))
    return torch.log(values.clamp_min(1e-12)) if probabilities else values


def diagnose(
    args: argparse.Namespace, case: str, label_path: Path, image_path: Path | None, prediction_path: Path | None
):
    label, affine = load_volume(label_path)
    label = integer_labels(label, label_path)
    spacing = None if args.voxel_units else spacing_from_affine(affine)
    if prediction_path is not None:
        logits = read_prediction(prediction_path, label.shape, args.num_classes, args.probabilities)
    else:
        logits = initial_logits(label.shape, args.num_classes, args.logits, args.seed)
    counts, fractions = {}, {}
    for key in args.maps:
        title, make_map = MAPS[key]
        try:
            rw_map = torch.as_tensor(make_map(label, args.num_classes, spacing))
        except ValueError as error:
            raise ValueError(f"{label_path}: {error}") from error
        counts[title] = negative_component_count(logits, rw_map, dim=0).numpy()
        fractions[title] = multi_negative_fraction(logits, rw_map, dim=0)

    axis = args.axis
    foreground = np.moveaxis(label > 0, axis, 0).reshape(label.shape[axis], -1).sum(axis=1)
    index = int(np.argmax(foreground)) if args.slice is None else args.slice
    if not 0 <= index < label.shape[axis]:
        raise ValueError(f"{label_path}: slice {index} outside 0..{label.shape[axis] - 1} along axis {axis}")
    if image_path is not None:
        image, _ = load_volume(image_path)
        if image.shape != label.shape:
            raise ValueError(f"{image_path}: shape {image.shape} differs from the label's {label.shape}")
    else:
        image = label
    output = args.output_dir / f"{case}_instability.png"
    plot_diagnostic_overlay(
        np.take(np.asarray(image, dtype=np.float32), index, axis=axis),
        {title: np.take(count, index, axis=axis) for title, count in counts.items()},
        output,
        title=f"{case}, slice {index} (axis {axis}), logits: "
        + (prediction_path.name if prediction_path else args.logits),
        overwrite=args.overwrite,
    )
    return fractions, output


def check_values(label_paths: list[Path], prediction_paths: list[Path | None], probabilities: bool) -> None:
    """Refuse, before any figure is written, labels that are not whole numbers and non-finite predictions.

    A file that cannot be read is left to the per-case run, which lists it among the failed cases.

    Raises:
        DiagnosticInputError: naming the first such file and its problem.
    """
    for label_path, prediction_path in zip(label_paths, prediction_paths, strict=True):
        try:
            label, _ = load_volume(label_path)
        except (ValueError, OSError):
            continue
        integer_labels(label, label_path)
        if prediction_path is not None:
            try:
                prediction, _ = load_volume(prediction_path, spatial_dims=4)
            except (ValueError, OSError):
                continue
            check_finite_scores(prediction, prediction_path, probabilities)


def paired_inputs(
    parser: argparse.ArgumentParser, paths: list[Path] | None, count: int, option: str
) -> list[Path | None]:
    if paths is None:
        return [None] * count
    if len(paths) != count:
        parser.error(f"{option} needs one file per --label ({count}), got {len(paths)}")
    return list(paths)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", type=Path, nargs="+", required=True, help="3D NIfTI label volumes")
    parser.add_argument("--image", type=Path, nargs="+", help="matching images to draw under the diagnostic")
    parser.add_argument("--prediction", type=Path, nargs="+", help="matching 4D logits/probabilities (classes last)")
    parser.add_argument("--probabilities", action="store_true", help="--prediction holds softmax outputs")
    parser.add_argument("--num-classes", type=int, required=True, help="classes including background")
    parser.add_argument("--maps", nargs="+", choices=list(MAPS), default=["rrw", "boundary"])
    parser.add_argument("--logits", choices=["uniform", "random"], default="uniform", help="without --prediction")
    parser.add_argument("--seed", type=int, default=0, help="seed of --logits random")
    parser.add_argument("--voxel-units", action="store_true", help="distances in voxels instead of mm")
    parser.add_argument("--axis", type=int, default=2, help="slice axis of the figure")
    parser.add_argument("--slice", type=int, help="slice index (default: the one with most foreground)")
    parser.add_argument("--output-dir", type=Path, default=Path("."), help="folder of the PNG files")
    parser.add_argument("--overwrite", action="store_true", help="replace existing PNG files")
    args = parser.parse_args(argv)

    images = paired_inputs(parser, args.image, len(args.label), "--image")
    predictions = paired_inputs(parser, args.prediction, len(args.label), "--prediction")
    if len({path.resolve() for path in args.label}) != len(args.label):
        parser.error("each --label file may be given once")
    # figures are named by the label's path below the labels' common folder: x.nii.gz of two sites stay two figures
    cases = case_ids([str(path) for path in args.label])
    try:
        check_values(args.label, predictions, args.probabilities)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    titles = [MAPS[key][0] for key in args.maps]
    print(f"fraction of voxels with more than one negative gradient component ({args.num_classes} classes)")
    print(f"{'case':<32}" + "".join(f"{title:>16}" for title in titles))
    failures = []
    for label_path, image_path, prediction_path in zip(args.label, images, predictions, strict=True):
        case = cases[str(label_path)]
        try:
            fractions, output = diagnose(args, case, label_path, image_path, prediction_path)
        except (ValueError, OSError) as error:
            failures.append(str(error))
            continue
        print(f"{case:<32}" + "".join(f"{fractions[title]:>16.4f}" for title in titles))
    if failures:
        print(f"{len(failures)} of {len(args.label)} cases failed:", file=sys.stderr)
        for error in failures:
            print(f"  {error}", file=sys.stderr)
        return 1
    print(f"figures in {args.output_dir}")
    return 0


if __name__ == "__main__":
    install_error_hook()  # anything unexpected still ends with its cause as the last line
    sys.exit(main())
