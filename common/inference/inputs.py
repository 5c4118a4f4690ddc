"""Input checks and readers of folder inference: each file's header, dimensions, channels and finite intensities."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, NibabelReader
from monai.data.utils import correct_nifti_header_if_necessary
from monai.transforms import MapTransform
from monai.utils import ensure_tuple

from common.data.nifti import load_nifti
from common.inference.inversion import count_non_finite


class CheckInputFiled(MapTransform):
    """Before loading: check from the NIfTI header alone that the file at ``data[key]`` suits the network.

    Args:
        keys: keys holding file paths.
        in_channels: network input channels; more than 1 takes 4D files with the channels along the last axis.
        network_spatial_dims: 2 for a slice-wise network, which also takes 2D images (segmented as one slice),
            3 for a volumetric network, which takes 3D volumes only.

    Raises:
        ValueError: naming the file: unreadable header, or a number of dimensions or channels the network cannot take.
    """

    def __init__(
        self,
        keys: KeysCollection,
        in_channels: int = 1,
        network_spatial_dims: int = 3,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if network_spatial_dims not in (2, 3):
            raise ValueError(f"network_spatial_dims must be 2 or 3, got {network_spatial_dims}")
        self.in_channels = in_channels
        self.network_spatial_dims = network_spatial_dims

    def check(self, path: str | os.PathLike) -> None:
        """Raise a ValueError naming ``path`` when it does not suit the network."""
        try:
            shape = tuple(load_nifti(path).shape)
        except Exception as error:  # nibabel raises several unrelated types for corrupt files
            raise ValueError(f"{path}: cannot read as NIfTI ({type(error).__name__}: {error})") from error
        spatial = shape[:-1] if self.in_channels > 1 else shape
        if self.in_channels > 1 and (len(shape) != 4 or shape[-1] != self.in_channels):
            raise ValueError(
                f"{path}: expected a 4D volume with {self.in_channels} channels along the last axis, got shape {shape}"
            )
        if len(spatial) == 2 and self.network_spatial_dims == 3:
            raise ValueError(f"{path}: 2D image of shape {shape}, but this bundle's network is 3D; give 3D volumes")
        allowed = (2, 3) if self.network_spatial_dims == 2 else (3,)
        if len(spatial) not in allowed:
            expected = "a 3D volume or a 2D image" if self.network_spatial_dims == 2 else "a 3D volume"
            raise ValueError(f"{path}: expected {expected}, got shape {shape}")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Check the file of each key; the data passes unchanged."""
        d = dict(data)
        for key in self.key_iterator(d):
            self.check(d[key])
        return d


class NiftiReader(NibabelReader):
    """MONAI's nibabel reader that also opens mixed-case extensions (``.Nii``, ``.Nii.gz``), see ``load_nifti``."""

    def read(self, data: Sequence[os.PathLike | str] | os.PathLike | str, **kwargs: Any) -> Any:
        """Open each file lazily (``LoadImage`` then reads the array and meta data)."""
        self.filenames = ensure_tuple(data)
        images = [correct_nifti_header_if_necessary(load_nifti(name)) for name in self.filenames]
        return images if len(images) > 1 else images[0]


class AsVolumed(MapTransform):
    """Make a channel-first 2D image ``(C, H, W)`` a one-slice volume for slice-wise networks (3D data passes).

    The slice axis is inserted at ``slice_axis`` and the affine's columns follow, so the volume keeps the image's
    world geometry; the written segmentation drops the singleton axis again.

    Args:
        keys: keys of channel-first images.
        slice_axis: spatial axis along which the network slices the volumes.
    """

    def __init__(self, keys: KeysCollection, slice_axis: int = 2, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if slice_axis not in (0, 1, 2):
            raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
        self.slice_axis = slice_axis

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Add the slice axis to 2D images; volumes pass unchanged."""
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if image.ndim != 3:
                continue
            volume = image.unsqueeze(self.slice_axis + 1)
            if isinstance(image, MetaTensor):
                columns = [0, 1]
                columns.insert(self.slice_axis, 2)  # the affine's third column belongs to the new axis
                affine = image.affine.clone()
                affine[:, :3] = image.affine[:, columns]
                meta = {**image.meta, "affine": affine, "spatial_shape": np.asarray(volume.shape[1:])}
                volume = MetaTensor(volume.as_tensor(), meta=meta)
            d[key] = volume
        return d


class CheckFiniteIntensityd(MapTransform):
    """At the end of the preprocessing: refuse images whose intensities are not finite.

    NaN or infinite values reach a network as an all-background segmentation, with no error. They come from the
    file itself or appear on the way (a scale factor or values beyond float32, a normalisation that overflows);
    the message says which, naming the file.

    Raises:
        ValueError: naming the file, the counts and where the values come from.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Raise on non-finite intensities; the data passes unchanged."""
        d = dict(data)
        for key in self.key_iterator(d):
            nan, inf = count_non_finite(torch.as_tensor(d[key]))
            if nan or inf:
                source = d[key].meta.get("filename_or_obj", key) if isinstance(d[key], MetaTensor) else key
                raise ValueError(f"{source}: {self.origin(source, nan, inf)}")
        return d

    @staticmethod
    def origin(source: str | os.PathLike, nan: int, inf: int) -> str:
        """Whether the file holds the non-finite values or they appear when scaling, casting or normalising."""
        try:
            stored = np.asanyarray(load_nifti(source).dataobj)
        except Exception:  # not a file (e.g. in-memory data): say what was found
            return f"{nan} NaN and {inf} infinite intensities; fix or drop this image"
        if stored.dtype.kind in "fc" and not np.isfinite(stored).all():
            return (
                f"{int(np.isnan(stored).sum())} NaN and {int(np.isinf(stored).sum())} infinite intensities in the "
                "file; fix or drop this image"
            )
        magnitude = float(np.abs(stored).max(initial=0))
        return (
            f"intensities become non-finite after scaling, casting to float32 or normalising ({nan} NaN, {inf} "
            f"infinite; largest stored magnitude {magnitude:.3g}); rescale the image into float32 range"
        )
