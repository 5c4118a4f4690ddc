"""Segmentation files written by folder inference: marked in their header, written atomically, never through links."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from common.data.nifti import load_nifti
from common.files import atomic_output

SEGMENTATION_DESCRIPTION = b"segmentation by folder inference"  # header mark of the files this module writes


NIFTI_INTENT_LABEL = 1002


def is_own_segmentation(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a segmentation written by :func:`write_segmentation` (reads the header only)."""
    try:
        header = load_nifti(path).header
        return bytes(header["descrip"].tobytes()).rstrip(b"\0") == SEGMENTATION_DESCRIPTION
    except Exception:  # anything unreadable is not one of ours
        return False


def write_nifti_atomic(image: nib.Nifti1Image, path: str | os.PathLike, replace: bool = False) -> Path:
    """Write ``image`` so that ``path`` holds either nothing, its earlier file or the complete new one.

    The file is serialised in memory (gzip for a ``.gz`` name of any case), written to a hidden temporary file in
    the same folder and then moved into place; the mode follows the umask like a plain ``open``. Without
    ``replace`` the final step refuses to replace a file that appeared in the meantime.

    Raises:
        FileExistsError: ``path`` exists and ``replace`` is False.
        OSError: the file cannot be written (full disk, permissions); no temporary file is left behind.
    """
    path = Path(path)
    payload = image.to_bytes()
    if path.name.lower().endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=1, mtime=0)  # same labels, same bytes
    with atomic_output(path, replace=replace) as temporary, open(temporary, "wb") as stream:
        stream.write(payload)
        stream.flush()
        os.fsync(stream.fileno())
    return path


def write_segmentation(
    label: np.ndarray, reference_path: str | os.PathLike, path: str | os.PathLike, replace: bool = False
) -> Path:
    """Write a label map with the geometry (shape, affine, qform/sform, units) of the input at ``reference_path``.

    Args:
        label: integer labels on the reference grid; extra trailing axes of size 1 (a 2D input segmented as a
            one-slice volume) are dropped.
        reference_path: the input image the labels belong to.
        path: destination file.
        replace: replace an existing file.

    Raises:
        ValueError: ``label`` does not fit the reference's spatial shape.
        OSError: the file cannot be written; the message names it.
    """
    reference = load_nifti(reference_path)
    spatial_shape = tuple(reference.shape[:3])
    if label.shape != spatial_shape and label.size == int(np.prod(spatial_shape)):
        label = label.reshape(spatial_shape)  # only singleton axes differ: a 2D input handled as one slice
    if tuple(label.shape) != spatial_shape:
        raise ValueError(f"segmentation shape {label.shape} differs from the input's {spatial_shape}")
    dtype = np.uint8 if label.max(initial=0) < 256 else np.uint16
    header = reference.header.copy()
    header.set_data_dtype(dtype)
    output = nib.Nifti1Image(label.astype(dtype, copy=False), reference.affine, header)
    output.header.set_slope_inter(1.0, 0.0)
    output.header["descrip"] = SEGMENTATION_DESCRIPTION
    output.header.set_intent(NIFTI_INTENT_LABEL)
    try:
        return write_nifti_atomic(output, path, replace=replace)
    except FileExistsError as error:
        raise FileExistsError(f"{path}: appeared while segmenting; not replaced (pass --overwrite True)") from error
    except OSError as error:  # full disk, lost permissions: name the output (the summary names the input)
        raise OSError(error.errno, f"{path}: cannot write the segmentation ({error.strerror or error})") from error
