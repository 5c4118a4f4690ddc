"""NIfTI volumes on disk: reading them whatever the case of the extension, checking image/label pairs, writing.

:func:`load_nifti` is the project's one NIfTI opener (preparation, the training datalist's header check and
inference all open files through it): it reads the header only and refuses a file whose header claims more voxel
data than the file can hold (a corrupt or hostile header such as 100000 x 100000 x 100000 voxels), naming the file,
before anything is allocated.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

import nibabel as nib
import numpy as np

from common.files import atomic_output
from common.maps import check_label

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# the most bytes deflate can expand one compressed byte to (zlib's limit is 1032:1), with a margin
MAX_GZIP_RATIO = 1100


class UnreadableVolumeError(ValueError):
    """A NIfTI file that cannot be read as a volume; the message names the file and the reason."""


def _is_gzip(path: str | os.PathLike) -> bool:
    with open(path, "rb") as file:
        return file.read(2) == b"\x1f\x8b"


def check_data_size(image: nib.Nifti1Image, path: str | os.PathLike) -> None:
    """Refuse a header that claims more voxel data than the file can hold, before any array is allocated.

    An uncompressed file must hold the header's ``vox_offset`` plus every voxel; a gzip file cannot expand more
    than about 1032-fold (deflate's limit), so a header claiming more than that is corrupt.

    Args:
        image: the lazily opened image (header read, data not).
        path: its file.

    Raises:
        UnreadableVolumeError: naming the file, the claimed shape and size, and the file's size.
    """
    header = image.header
    shape = tuple(int(size) for size in header.get_data_shape())
    itemsize = np.dtype(header.get_data_dtype()).itemsize
    claimed = int(np.prod(shape, dtype=object)) * itemsize + int(header.get_data_offset())
    file_size = os.path.getsize(path)
    capacity = file_size * MAX_GZIP_RATIO if _is_gzip(path) else file_size
    if claimed > capacity:
        raise UnreadableVolumeError(
            f"{path}: cannot read as NIfTI: its header claims shape {shape} of {header.get_data_dtype()} "
            f"({claimed:,} bytes), more than the {file_size:,}-byte file can hold; the file is corrupt or truncated "
            "(replace it or drop the case)"
        )


def load_nifti(path: str | os.PathLike) -> nib.Nifti1Image:
    """Open a NIfTI-1 or NIfTI-2 file lazily whatever the letter case of its extension.

    ``nib.load`` looks for ``x.nii`` when given ``x.Nii``; a file map of the exact name avoids that, and the
    compression follows the ``.gz`` extension in any case. Only the header is read.

    Raises:
        UnreadableVolumeError: the header claims more voxel data than the file holds (see :func:`check_data_size`).
        Exception: whatever nibabel raises for a file that is not NIfTI.
    """
    holder = nib.FileHolder(filename=os.fspath(path))
    try:
        image = nib.Nifti1Image.from_file_map({"header": holder, "image": holder})
    except nib.spatialimages.HeaderDataError:  # a NIfTI-2 header has another size
        image = nib.Nifti2Image.from_file_map({"header": holder, "image": holder})
    check_data_size(image, path)
    return image


def load_volume(path: str | os.PathLike, spatial_dims: int | Collection[int] = 3) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI volume and check that it has the expected number of spatial dimensions.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        spatial_dims: required number of dimensions, or the accepted numbers (``(2, 3)``: 2D or 3D files).

    Returns:
        The voxel array and the 4x4 affine.

    Raises:
        UnreadableVolumeError: the file cannot be read (message names the file and the reason; a header claiming
            more data than the file holds is refused before any allocation).
        ValueError: the file has another number of dimensions.
    """
    accepted = {spatial_dims} if isinstance(spatial_dims, int) else set(spatial_dims)
    try:
        image = load_nifti(path)
        array = np.asanyarray(image.dataobj)
    except UnreadableVolumeError:
        raise
    except Exception as error:  # nibabel raises several unrelated types for corrupt files
        raise UnreadableVolumeError(f"{path}: cannot read as NIfTI ({type(error).__name__}: {error})") from error
    if array.ndim not in accepted:
        expected = " or ".join(f"{count}D" for count in sorted(accepted))
        raise ValueError(f"{path}: expected a {expected} volume, got shape {array.shape}")
    return array, image.affine


def check_image_label_pair(
    image_path: str | os.PathLike, label_path: str | os.PathLike, num_classes: int
) -> tuple[tuple[int, ...], np.ndarray]:
    """Check that an image and its label are readable 3D volumes on the same grid with valid class indices.

    Args:
        image_path: image file.
        label_path: label file.
        num_classes: classes including background; labels must lie in ``[0, num_classes)``.

    Returns:
        The volume shape and the affine.

    Raises:
        ValueError: with the offending file and the problem.
    """
    image, image_affine = load_volume(image_path)
    label, label_affine = load_volume(label_path)
    if image.shape != label.shape:
        raise ValueError(f"{label_path}: shape {label.shape} differs from the image's {image.shape} ({image_path})")
    if not np.allclose(image_affine, label_affine, atol=1e-3):
        raise ValueError(f"{label_path}: affine differs from the image's ({image_path})")
    try:
        check_label(label, num_classes)
    except ValueError as error:
        raise ValueError(f"{label_path}: {error}") from error
    return tuple(int(s) for s in image.shape), image_affine


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an array as NIfTI atomically (temporary file in the same folder, then rename).

    Args:
        array: voxel data, written with its own dtype.
        affine: 4x4 voxel-to-world matrix (mm), stored as both qform and sform.
        path: destination ``.nii`` or ``.nii.gz``; parent folders are created.

    Returns:
        The destination path.
    """
    path = Path(path)
    image = nib.Nifti1Image(np.ascontiguousarray(array), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    with atomic_output(path) as tmp_path:
        nib.save(image, tmp_path)
    return path
