"""Slice geometry of volumes for the 2D-network bundles: the canonical orientation, the slice axis and 2D files.

Every training pipeline reorients volumes to RAS (``monai.transforms.Orientationd``) before anything else, so axes
are counted in that orientation here too. A 2D network trained on slices must slice along the volume's coarsest
axis (the acquisition's slice direction) and must never resample across slices:

- :func:`volume_geometry` gives the voxel spacing of a NIfTI affine in RAS axis order and the slice axis
  (the coarsest axis; axis 2, the axial one, when several are equally coarse). ``scripts/prepare_*.py`` record
  both per case and the data set's slice axis in the datalist.
- :class:`AddSliceAxisd` turns a 2D file (channel-first ``(C, H, W)``) into a one-slice volume ``(C, H, W, 1)``
  that keeps the file's 4x4 affine, so that the rest of a slice pipeline runs unchanged.
- :class:`SliceSpacingd` is ``Spacingd`` that resamples in-plane only (``-1`` along the slice axis) and refuses,
  naming the file, a volume whose slice axis is not its coarsest axis (slicing it would interpolate across the
  acquisition's slices).
- :class:`SliceStepd` keeps every k-th slice of a volume (the RW bundles' coarser validation grid,
  ``val_slice_step``): a slice-wise network sees each kept slice exactly as in training, with ``k`` times less work.
- :class:`LabelledSlicesd` crops volumes along the slice axis to the slices that hold a label (``SpatialCrop``,
  affine updated), as the RW authors' KiTS19 preparation keeps only those slices.
- :class:`SliceResized` is ``Resized`` whose voxels may keep the spacing they had before (``keep_spacing``), as the
  RW authors' resized KiTS19 files kept the release's header spacing.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Resized, Spacingd, SpatialCrop

from common.data.validation import source_name

__all__ = [
    "AddSliceAxisd",
    "LabelledSlicesd",
    "SliceResized",
    "SliceSpacingd",
    "SliceStepd",
    "VolumeGeometry",
    "coarsest_axis",
    "volume_geometry",
]

DEFAULT_SLICE_AXIS = 2  # axial in RAS
SPACING_RTOL = 0.05  # axes whose spacing is within 5 % of the largest count as equally coarse


def coarsest_axis(spacing: Sequence[float], rtol: float = SPACING_RTOL) -> int:
    """The axis of largest spacing; :data:`DEFAULT_SLICE_AXIS` when it is among several equally coarse axes."""
    spacing = np.asarray(spacing, dtype=float)
    coarse = np.flatnonzero(spacing >= spacing.max() * (1.0 - rtol))
    return DEFAULT_SLICE_AXIS if DEFAULT_SLICE_AXIS in coarse else int(coarse[0])


@dataclass(frozen=True)
class VolumeGeometry:
    """Voxel spacing (mm) in RAS axis order and the slice axis of one volume."""

    spacing: list[float]
    slice_axis: int


def volume_geometry(affine: np.ndarray, spatial_dims: int = 3) -> VolumeGeometry:
    """Spacing in RAS axis order and slice axis of a NIfTI volume.

    Args:
        affine: the file's 4x4 voxel-to-world matrix.
        spatial_dims: 3, or 2 for a 2D file: its slice axis is the RAS axis of the third voxel axis, whatever the
            spacing the header gives it.

    Returns:
        The geometry, axes counted after reorientation to RAS.
    """
    affine = np.asarray(affine, dtype=float)
    voxel_spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    ras_axis_of_voxel_axis = nib.io_orientation(affine)[:, 0].astype(int)
    spacing = np.empty(3)
    spacing[ras_axis_of_voxel_axis] = voxel_spacing
    slice_axis = int(ras_axis_of_voxel_axis[2]) if spatial_dims == 2 else coarsest_axis(spacing)
    return VolumeGeometry([round(float(value), 6) for value in spacing], slice_axis)


class AddSliceAxisd(MapTransform):
    """Turn 2D channel-first arrays ``(C, H, W)`` into one-slice volumes ``(C, H, W, 1)``; 3D ones pass unchanged.

    A NIfTI file's affine is 4x4 also for a 2D file (its third column holds the slice direction and thickness), so
    the one-slice volume is placed in the world like the slice it is and the usual 3D transforms apply.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return the dictionary with every 2D array given a trailing slice axis."""
        d = dict(data)
        for key in self.key_iterator(d):
            if d[key].ndim == 3:
                d[key] = d[key].unsqueeze(-1)
        return d


class SliceSpacingd(Spacingd):
    """``Spacingd`` to an in-plane spacing that keeps every volume's slices as they are, with a slice-axis check.

    Args:
        keys: image (and label) keys.
        slice_axis: the axis the 2D network slices along, counted after reorientation to RAS.
        pixdim: in-plane spacing in mm, one value or one per in-plane axis (in axis order).
        rtol: relative tolerance of the check: an axis whose spacing exceeds the slice axis' by more than this
            fraction makes the volume unusable with this ``slice_axis``.
        kwargs: further arguments of ``monai.transforms.Spacingd`` (``mode``, ``allow_missing_keys``, ...).

    Raises:
        ValueError: ``slice_axis`` is not 0, 1 or 2; from ``__call__``: a volume is coarser along another axis
            than along ``slice_axis`` (the message names the file, both axes and their spacing).
    """

    def __init__(
        self,
        keys: KeysCollection,
        slice_axis: int,
        pixdim: float | Sequence[float],
        rtol: float = SPACING_RTOL,
        **kwargs: Any,
    ) -> None:
        if slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis!r}")
        in_plane = [float(pixdim)] * 2 if np.isscalar(pixdim) else [float(value) for value in pixdim]
        if len(in_plane) != 2:
            raise ValueError(f"pixdim must give the two in-plane spacings, got {pixdim!r}")
        in_plane.insert(slice_axis, -1.0)
        super().__init__(keys, pixdim=in_plane, **kwargs)
        self.slice_axis = slice_axis
        self.rtol = rtol

    def check_slice_axis(self, image: Any, source: str) -> None:
        """Raise when ``image`` is coarser along another axis than along the slice axis (one-slice volumes pass)."""
        if image.shape[1 + self.slice_axis] == 1:
            return  # a single slice (a 2D file) has nothing to resample across
        spacing = np.asarray(torch.as_tensor(image.pixdim).detach().cpu(), dtype=float)[:3]
        coarsest = int(np.argmax(spacing))
        if spacing[coarsest] > spacing[self.slice_axis] * (1.0 + self.rtol):
            raise ValueError(
                f"{source}: slice_axis {self.slice_axis} has spacing {spacing[self.slice_axis]:.3g} mm but axis "
                f"{coarsest} is coarser ({spacing[coarsest]:.3g} mm, RAS axes); slicing along {self.slice_axis} would "
                f"resample across the acquisition's slices. Set slice_axis to {coarsest} (the datalist of "
                "scripts/prepare_*.py records the data set's 'slice_axis')"
            )

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        """Check the first present key's volume, then resample in-plane."""
        for key in self.key_iterator(dict(data)):
            self.check_slice_axis(data[key], source_name(data[key], key))
            break
        return super().__call__(data, lazy=lazy)


class SliceStepd(MapTransform):
    """Keep slices ``0, step, 2 * step, ...`` along ``slice_axis``; the affine's slice column is scaled by ``step``.

    The coarser validation grid of slice-wise networks: every kept slice is the network's input as it is in
    training (no interpolation in-plane or across slices), so Dice and the Hausdorff distance (in mm, from the
    updated affine) are those of the thinned volume at ``1 / step`` of the network and metric work. MONAI has no
    strided selection (``SpatialCrop`` refuses slice steps, ``Zoom`` interpolates and may round a short volume to
    no slice at all), hence this transform.

    Args:
        keys: keys of channel-first volumes ``(C, *spatial)`` (image and label, so that they stay aligned).
        slice_axis: spatial axis the slices are taken along (0, 1 or 2).
        step: keep every ``step``-th slice; 1 returns the volumes unchanged.
        allow_missing_keys: don't raise an error for a missing key.

    Raises:
        ValueError: ``step`` is smaller than 1 or ``slice_axis`` is not 0, 1 or 2.
    """

    def __init__(self, keys: KeysCollection, slice_axis: int, step: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis!r}")
        if int(step) != step or step < 1:
            raise ValueError(f"the slice step must be a whole number >= 1, got {step!r}")
        self.slice_axis = slice_axis
        self.step = int(step)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return the dictionary with every volume thinned to every ``step``-th slice."""
        d = dict(data)
        if self.step == 1:
            return d
        for key in self.key_iterator(d):
            volume = d[key]
            index = [slice(None)] * volume.ndim
            index[1 + self.slice_axis] = slice(None, None, self.step)
            thinned = volume[tuple(index)].clone()
            if isinstance(volume, MetaTensor):
                affine = volume.affine.clone()
                affine[:, self.slice_axis] *= self.step
                thinned = MetaTensor(thinned.as_tensor(), meta=dict(volume.meta))
                thinned.affine = affine
            d[key] = thinned
        return d


class LabelledSlicesd(MapTransform):
    """Crop volumes along ``slice_axis`` to the slices from the first to the last one that holds a label (> 0).

    The RW authors' KiTS19 preparation (their ``datasplits/kits19.py``) keeps only the axial slices whose
    segmentation is not all background, for the training and the scored cases alike. Here the kept slices are the
    range from the first to the last labelled slice, cropped with ``monai.transforms.SpatialCrop`` (affine updated,
    invertible), so that the volume stays one coherent 3D grid for the RW maps and the Hausdorff distance; it is the
    authors' selection whenever a case's labelled slices are contiguous. A volume without any label is left whole.

    Args:
        keys: keys of channel-first volumes ``(C, *spatial)`` cropped alike (image and label, and any map).
        label_key: the key of the label volume that decides which slices are kept.
        slice_axis: spatial axis the slices are taken along (0, 1 or 2).
        allow_missing_keys: don't raise an error for a missing key.

    Raises:
        ValueError: ``slice_axis`` is not 0, 1 or 2.
    """

    def __init__(
        self, keys: KeysCollection, label_key: str = "label", slice_axis: int = 2, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis!r}")
        self.label_key = label_key
        self.slice_axis = slice_axis

    def labelled_range(self, label: Any) -> tuple[int, int] | None:
        """First and one-past-last slice of ``label`` (``(C, *spatial)``) that hold a label; None when none does."""
        label = torch.as_tensor(label)
        axis = 1 + self.slice_axis
        held = (label != 0).movedim(axis, 0).reshape(label.shape[axis], -1).any(dim=1)
        indices = torch.nonzero(held).flatten()
        return None if indices.numel() == 0 else (int(indices[0]), int(indices[-1]) + 1)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return the dictionary with every volume cropped to the labelled slices of ``label_key``."""
        d = dict(data)
        kept = self.labelled_range(d[self.label_key])
        if kept is None:
            return d
        shape = d[self.label_key].shape[1:]
        start = [0] * len(shape)
        end = list(shape)
        start[self.slice_axis], end[self.slice_axis] = kept
        cropper = SpatialCrop(roi_start=start, roi_end=end)
        for key in self.key_iterator(d):
            d[key] = cropper(d[key])
        return d


class SliceResized(Resized):
    """``monai.transforms.Resized`` whose voxels may keep the spacing they had before the resize.

    With ``keep_spacing=False`` this is ``Resized``: the affine is scaled so that the resized voxels have their true
    size in mm. With ``keep_spacing=True`` the affine's voxel axes keep their length (their direction and the origin
    are unchanged), as in the RW authors' KiTS19 files, written on the 256 x 256 grid with the release's affine:
    distances in mm (RW maps, Hausdorff distance) are then counted in the release's voxel sizes on the new grid.

    Args:
        keys: keys of channel-first volumes.
        spatial_size: as ``Resized`` (``-1`` keeps an axis).
        keep_spacing: keep each volume's voxel spacing instead of the resized voxels' true size.
        kwargs: further arguments of ``monai.transforms.Resized`` (``mode``, ``allow_missing_keys``, ...).
    """

    def __init__(
        self, keys: KeysCollection, spatial_size: Sequence[int] | int, keep_spacing: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(keys, spatial_size=spatial_size, **kwargs)
        self.keep_spacing = bool(keep_spacing)

    @staticmethod
    def _spacing(volume: Any) -> torch.Tensor | None:
        if not isinstance(volume, MetaTensor):
            return None
        return torch.linalg.norm(volume.affine[:3, :3].double(), dim=0)

    def _restore(self, d: dict[Hashable, Any], spacings: dict[Hashable, torch.Tensor | None]) -> dict[Hashable, Any]:
        for key, spacing in spacings.items():
            volume = d[key]
            if spacing is None or not isinstance(volume, MetaTensor):
                continue
            affine = volume.affine.clone().double()
            lengths = torch.linalg.norm(affine[:3, :3], dim=0)
            affine[:3, :3] = affine[:3, :3] / lengths * spacing
            volume.affine = affine.to(volume.affine.dtype)
        return d

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        """Resize; with ``keep_spacing`` the voxels keep the spacing they had."""
        spacings = {key: self._spacing(data[key]) for key in self.key_iterator(dict(data))} if self.keep_spacing else {}
        return self._restore(super().__call__(data, lazy=lazy), spacings)

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Undo the resize; with ``keep_spacing`` the voxels again keep their spacing."""
        spacings = {key: self._spacing(data[key]) for key in self.key_iterator(dict(data))} if self.keep_spacing else {}
        return self._restore(super().inverse(data), spacings)
