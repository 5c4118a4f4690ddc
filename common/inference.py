"""Batch inference on a folder of NIfTI volumes, shared by the bundles' ``inference.yaml``.

Every ``.nii``/``.nii.gz`` under the input folder is segmented and written, as a label map on the input's own
grid (same shape, affine and header geometry), to the same relative path under the output folder. Outputs
that exist are kept unless ``overwrite`` is set, files are written atomically, and a file that cannot be read
or segmented is recorded and skipped; a summary at the end lists what failed and why.

A bundle config supplies the MONAI parts (network, preprocessing, inferer, postprocessing with ``Invertd``)
through :class:`VolumeSegmenter` and calls :func:`run_folder_segmentation` from its ``run`` section.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from tqdm import tqdm

from common.checkpoint import read_network_state
from common.data import atomic_output, load_volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: Path) -> bool:
    """Whether ``path`` names a NIfTI file (``.nii`` or ``.nii.gz``, any case)."""
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def discover_images(input_dir: str | os.PathLike, exclude: str | os.PathLike | None = None) -> list[Path]:
    """List the NIfTI files under ``input_dir`` recursively, sorted, skipping hidden files and ``exclude``.

    Args:
        input_dir: folder to search.
        exclude: a folder whose contents are ignored (the output folder when it lies inside the input).

    Returns:
        The files found.

    Raises:
        NotADirectoryError: ``input_dir`` is not a folder.
    """
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise NotADirectoryError(f"{input_dir}: input folder does not exist or is not a folder")
    excluded = Path(exclude).resolve() if exclude is not None else None
    found = []
    for path in sorted(input_dir.rglob("*")):
        if not path.is_file() or not is_nifti(path) or path.name.startswith("."):
            continue
        if excluded is not None and path.resolve().is_relative_to(excluded):
            continue
        found.append(path)
    return found


def mirrored_output_path(
    image_path: Path, input_dir: str | os.PathLike, output_dir: str | os.PathLike, postfix: str = ""
) -> Path:
    """Map ``input_dir/a/b/name.nii.gz`` to ``output_dir/a/b/name{postfix}.nii.gz``."""
    relative = image_path.relative_to(input_dir)
    suffix = next(s for s in (".nii.gz", ".nii") if relative.name.lower().endswith(s))
    stem = relative.name[: -len(suffix)]
    return Path(output_dir) / relative.parent / f"{stem}{postfix}{relative.name[-len(suffix) :]}"


def check_finite(array: np.ndarray, path: str | os.PathLike) -> None:
    """Refuse an image with NaN or infinite intensities (they would silently spoil the normalisation).

    Raises:
        ValueError: naming ``path`` and the number of bad values.
    """
    if array.dtype.kind in "fc" and not np.isfinite(array).all():
        nan, inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
        raise ValueError(f"{path}: {nan} NaN and {inf} infinite intensities; fix or drop this image")


def check_input_volume(path: str | os.PathLike, in_channels: int = 1) -> None:
    """Check that a file to segment holds what the network takes, with finite intensities.

    Args:
        path: NIfTI file.
        in_channels: channels of the network: 1 takes 3D volumes, more take 4D files with the channels (e.g. the
            MR modalities of BraTS) along the last axis.

    Raises:
        ValueError: naming the file: unreadable, wrong number of dimensions or channels, NaN or infinite values.
    """
    array = load_volume(path, spatial_dims=3 if in_channels == 1 else 4)[0]
    if in_channels > 1 and array.shape[-1] != in_channels:
        raise ValueError(f"{path}: expected {in_channels} channels along the last axis, got shape {array.shape}")
    check_finite(array, path)


def save_label_like(label: np.ndarray, reference: nib.Nifti1Image, path: str | os.PathLike) -> Path:
    """Write a label map atomically with the geometry (affine, qform/sform, units) of ``reference``.

    Args:
        label: integer labels on the reference grid.
        reference: the input image the labels belong to.
        path: destination file.

    Returns:
        The destination path.

    Raises:
        ValueError: ``label`` does not have the reference's shape.
        OSError: the file cannot be written (e.g. a full disk); the message names it, no partial file is left.
    """
    if tuple(label.shape) != tuple(reference.shape[:3]):
        raise ValueError(f"segmentation shape {label.shape} differs from the input's {reference.shape[:3]}")
    dtype = np.uint8 if label.max(initial=0) < 256 else np.uint16
    header = reference.header.copy()
    header.set_data_dtype(dtype)
    output = nib.Nifti1Image(label.astype(dtype), reference.affine, header)
    output.header.set_slope_inter(1.0, 0.0)
    output.header["descrip"] = b"segmentation"
    try:
        with atomic_output(path) as tmp_path:
            nib.save(output, tmp_path)
    except OSError as error:  # full disk, lost permissions: name the output (the summary names the input)
        raise OSError(error.errno, f"{path}: cannot write the segmentation ({error.strerror or error})") from error
    return Path(path)


class VolumeSegmenter:
    """Segment one volume file with MONAI parts; returns labels on the file's own grid.

    Args:
        network: the segmentation network.
        preprocessing: dictionary transform that loads ``{image_key: path}`` (``LoadImaged`` first).
        inferer: MONAI inferer, e.g. ``SliceInferer`` for a 2D network on 3D volumes.
        postprocessing: dictionary transform on ``{pred_key: logits, image_key: image}`` that inverts the
            preprocessing (``Invertd``) and takes the argmax, leaving a ``(1, *spatial)`` label.
        device: where the network runs.
        image_key: key of the image.
        pred_key: key of the prediction.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        preprocessing: Callable[[dict[str, Any]], dict[str, Any]],
        inferer: Callable[..., torch.Tensor],
        postprocessing: Callable[[dict[str, Any]], dict[str, Any]],
        device: str | torch.device = "cpu",
        image_key: str = "image",
        pred_key: str = "pred",
    ) -> None:
        self.network = network.to(device)
        self.preprocessing = preprocessing
        self.inferer = inferer
        self.postprocessing = postprocessing
        self.device = torch.device(device)
        self.image_key = image_key
        self.pred_key = pred_key

    def load_weights(self, checkpoint: str | os.PathLike) -> None:
        """Load the weights saved by the training (see :func:`common.checkpoint.read_network_state`).

        Raises:
            FileNotFoundError: the checkpoint does not exist.
            ValueError: the file is not a checkpoint, or not one of this network.
        """
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"{checkpoint}: checkpoint not found; train the bundle first or pass --ckpt_path")
        state = read_network_state(checkpoint, self.device)
        known = self.network.state_dict()  # training-only deep supervision heads are not part of inference
        state = {key: value for key, value in state.items() if key in known or "deep_supervision_heads." not in key}
        try:
            self.network.load_state_dict(state)
        except RuntimeError as error:
            first_line = str(error).strip().splitlines()[0]
            raise ValueError(
                f"{checkpoint}: does not fit this network ({first_line}); the network settings (filters, "
                "num_classes, ...) must be those of the training run"
            ) from error

    @torch.no_grad()
    def __call__(self, path: str | os.PathLike) -> np.ndarray:
        """Segment the file at ``path`` and return the labels as an array of the file's spatial shape."""
        self.network.eval()
        data = self.preprocessing({self.image_key: os.fspath(path)})
        image = data[self.image_key].to(self.device)
        data[self.pred_key] = self.inferer(image[None], self.network)[0]
        data = self.postprocessing(data)
        return data[self.pred_key][0].detach().cpu().numpy()


@dataclass
class FolderReport:
    """What a folder segmentation did with each input file."""

    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    failures: dict[Path, str] = field(default_factory=dict)

    def summary(self) -> str:
        """Human-readable summary with one line per failed file."""
        lines = [
            f"segmented {len(self.written)} file(s), kept {len(self.kept)} existing output(s), "
            f"{len(self.failures)} failure(s)"
        ]
        if self.kept:
            lines.append("existing outputs were not replaced (pass --overwrite True to replace them)")
        lines += [f"FAILED {path}: {reason}" for path, reason in self.failures.items()]
        return "\n".join(lines)


def _failure_reason(error: Exception, path: Path) -> str:
    """The error message without a leading file name (the summary prints it), else prefixed by the error type."""
    message = str(error)
    if message.startswith(f"{path}: "):
        return message.removeprefix(f"{path}: ")
    return f"{type(error).__name__}: {message}"


def segment_folder(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    segmenter: Callable[[Path], np.ndarray],
    overwrite: bool = False,
    postfix: str = "",
    progress: bool = True,
    in_channels: int = 1,
) -> FolderReport:
    """Segment every NIfTI file under ``input_dir`` into the mirrored path under ``output_dir``.

    Args:
        input_dir: folder searched recursively.
        output_dir: root of the outputs, not ``input_dir`` itself; may lie inside it (it is then not searched).
        segmenter: maps a file path to labels on the file's grid, e.g. a :class:`VolumeSegmenter`.
        overwrite: replace existing outputs; otherwise they are kept and counted.
        postfix: appended to each output file's stem (``name{postfix}.nii.gz``).
        progress: show a progress bar.
        in_channels: channels of the network; multi-channel inputs are 4D files with the channels last, and the
            segmentation is written on their 3D grid.

    Returns:
        The report; a file that fails (unreadable, wrong dimensions or channels, NaN or infinite intensities, an
        output that cannot be written, e.g. on a full disk) is recorded with the reason and the run goes on.

    Raises:
        NotADirectoryError: ``input_dir`` is not a folder.
        FileNotFoundError: no NIfTI file under ``input_dir``.
        ValueError: the output folder is the input folder.
    """
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be True or False, got {overwrite!r}")
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if input_dir.resolve() == output_dir.resolve():
        raise ValueError(f"{output_dir}: output folder equals the input folder; choose another one")
    images = discover_images(input_dir, exclude=output_dir)
    if not images:
        raise FileNotFoundError(f"{input_dir}: no .nii or .nii.gz files found (searched recursively)")
    report = FolderReport()
    for image_path in tqdm(images, desc="segmenting", unit="volume", disable=not progress):
        output_path = mirrored_output_path(image_path, input_dir, output_dir, postfix)
        if output_path.exists() and not overwrite:
            report.kept.append(output_path)
            continue
        try:
            check_input_volume(image_path, in_channels)
            reference = nib.load(image_path)
            save_label_like(segmenter(image_path), reference, output_path)
        except Exception as error:  # one bad file must not stop the batch; the reason goes to the summary
            report.failures[image_path] = _failure_reason(error, image_path)
            tqdm.write(f"FAILED {image_path}: {report.failures[image_path]}", file=sys.stderr)
            continue
        report.written.append(output_path)
    return report


def run_folder_segmentation(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    segmenter: VolumeSegmenter,
    checkpoint: str | os.PathLike,
    overwrite: bool = False,
    postfix: str = "",
    progress: bool = True,
    in_channels: int = 1,
) -> FolderReport:
    """Command-line entry: load the weights, segment the folder, print the summary, exit nonzero on problems.

    Exits with status 2 when nothing can run (missing checkpoint, input folder or inputs) and 1 when some files
    failed; returns the report when every file was handled.
    """
    try:
        if not Path(input_dir).is_dir():
            raise NotADirectoryError(f"{input_dir}: input folder does not exist or is not a folder")
        segmenter.load_weights(checkpoint)
        report = segment_folder(input_dir, output_dir, segmenter, overwrite, postfix, progress, in_channels)
    except (FileNotFoundError, NotADirectoryError, ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    print(report.summary())
    print(f"outputs under {Path(output_dir).resolve()}")
    if report.failures:
        raise SystemExit(1)
    return report
