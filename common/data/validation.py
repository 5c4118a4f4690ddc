"""Input checks for training and evaluation pipelines: every problem is reported with the file it comes from.

:class:`ValidateSegmentationd` goes right after ``LoadImaged`` + ``EnsureChannelFirstd`` in a bundle's
``base_transforms``; it rejects a case with a ``ValueError`` that names the file when the image has another number
of spatial dimensions (a 2D file for a 3D bundle; 2D files pass with ``allow_2d`` where the network is 2D) or
channels than the bundle expects, holds NaN or infinite intensities, or when the label is not on the image's grid
(shape, affine), holds values outside the configured classes or has no foreground voxel.
:class:`CheckedMapLabelValued` maps a label's data set values to training indices like MONAI's ``MapLabelValued``
(same arguments) but refuses, naming the file and the values, any value the mapping does not list: MONAI's passes
such a value through unchanged, so that with labels ``{0, 1, 4}`` (mapped to ``0, 1, 2``) an undeclared 2 would be
trained as the class of 4. It replaces ``MapLabelValued`` wherever the label comes from a datalist's
``label_mapping``.
:func:`validate_datalist` runs the same checks over a whole datalist and reports every bad case at once, so that a
training can refuse to start with the full list of problems instead of stopping at the first one while caching.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, MapLabelValued, MapTransform

from common.maps import check_label

__all__ = ["CheckedMapLabelValued", "ValidateSegmentationd", "source_name", "validate_datalist"]


def source_name(item: Any, key: Hashable) -> str:
    """The file an image came from (``filename_or_obj`` of a ``MetaTensor``), else ``<key>``."""
    meta = getattr(item, "meta", None) or {}
    source = meta.get("filename_or_obj")
    if isinstance(source, list | tuple):
        return ", ".join(os.fspath(s) for s in source)
    return os.fspath(source) if source else f"<{key}>"


def _affine(item: Any) -> np.ndarray | None:
    affine = getattr(item, "affine", None)
    return None if affine is None else np.asarray(torch.as_tensor(affine).detach().cpu(), dtype=float)


class CheckedMapLabelValued(MapLabelValued):
    """MONAI's ``MapLabelValued`` that refuses label values its mapping does not list, naming the file and values.

    Args:
        keys: label keys.
        orig_labels: every data set value a label may hold (a datalist's ``label_mapping["orig_labels"]``).
        target_labels: the training index of each (``label_mapping["target_labels"]``).
        dtype: output type, as for ``MapLabelValued``.
        allow_missing_keys: skip missing keys.
        source: where the mapping comes from (the datalist), for the message.

    Raises:
        ValueError: from ``__call__``: the label holds values outside ``orig_labels`` (names the file, the values
            and the fix).
    """

    def __init__(
        self,
        keys: KeysCollection,
        orig_labels: Sequence[int],
        target_labels: Sequence[int],
        dtype: Any = np.float32,
        allow_missing_keys: bool = False,
        source: str = "the datalist's label_mapping",
    ) -> None:
        super().__init__(keys, orig_labels, target_labels, dtype=dtype, allow_missing_keys=allow_missing_keys)
        self.known = np.asarray(sorted(orig_labels), dtype=float)
        self.source = source

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Check every label value against the mapping, then map."""
        d = dict(data)
        for key in self.key_iterator(d):
            values = np.unique(np.asarray(torch.as_tensor(d[key]).detach().cpu()))
            unknown = values[~np.isin(values, self.known)]
            if unknown.size:
                shown = [int(v) if float(v).is_integer() else float(v) for v in unknown[:10]]
                raise ValueError(
                    f"{source_name(d[key], key)}: label value(s) {shown}{' ...' if unknown.size > 10 else ''} are "
                    f"not among the values {[int(v) for v in self.known]} of {self.source}; they would be trained "
                    "as another class: fix the label file, or declare the values in the data set's 'labels' and "
                    "prepare the datalist again (scripts/prepare_*.py)"
                )
        return super().__call__(d)


class ValidateSegmentationd(MapTransform):
    """Check a channel-first image (and its label) before any resampling; raise naming the file on a problem.

    Args:
        keys: the image key, optionally followed by the label key (``[image, label]``).
        num_classes: classes including background; label values must lie in ``[0, num_classes)``.
        in_channels: channels the network takes.
        spatial_dims: spatial dimensions of the volumes (3 also for 2D networks trained on slices of volumes).
        allow_2d: also accept 2D files (one slice) where the network is 2D; ``common.data.geometry.AddSliceAxisd`` then
            makes them one-slice volumes.
        allow_empty_foreground: accept labels without any foreground voxel.
        affine_atol: tolerance of the image/label affine comparison, in mm.
        allow_missing_keys: skip a missing label key (inference dictionaries have no label).

    Raises:
        ValueError: from ``__call__``, with the file name and the problem.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        num_classes: int | None = None,
        in_channels: int = 1,
        spatial_dims: int = 3,
        allow_empty_foreground: bool = False,
        affine_atol: float = 1e-3,
        allow_missing_keys: bool = False,
        allow_2d: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) not in (1, 2):
            raise ValueError(f"keys must be [image] or [image, label], got {list(self.keys)}")
        if len(self.keys) == 2 and num_classes is None:
            raise ValueError("num_classes is needed to check a label")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.spatial_dims = spatial_dims
        self.allow_empty_foreground = allow_empty_foreground
        self.affine_atol = affine_atol
        self.allow_2d = allow_2d

    def check_image(self, image: Any, source: str) -> None:
        """Check the number of dimensions and channels and that every intensity is finite."""
        shape = tuple(image.shape)
        dims = len(shape) - 1
        if dims != self.spatial_dims and not (self.allow_2d and dims == 2):
            hint = (
                "; this bundle's network is 3D: segment 2D files with a 2D-network bundle (e.g. msd_rrw)"
                if dims == 2
                else ""
            )
            raise ValueError(
                f"{source}: expected a {self.spatial_dims}D image, got {dims} spatial dimension(s) "
                f"(channel-first shape {shape}){hint}"
            )
        if shape[0] != self.in_channels:
            raise ValueError(f"{source}: has {shape[0]} channel(s), the bundle expects {self.in_channels}")
        values = torch.as_tensor(image)
        if values.is_floating_point() and not bool(torch.isfinite(values).all()):
            nan, inf = int(torch.isnan(values).sum()), int(torch.isinf(values).sum())
            raise ValueError(f"{source}: {nan} NaN and {inf} infinite intensities; fix or drop this image")

    def check_label(self, label: Any, source: str, image: Any, image_source: str) -> None:
        """Check that the label lies on the image's grid and holds the configured classes with some foreground."""
        if tuple(label.shape[1:]) != tuple(image.shape[1:]) or label.shape[0] != 1:
            raise ValueError(
                f"{source}: shape {tuple(label.shape)} does not match the image's {tuple(image.shape)} with one "
                f"label channel ({image_source})"
            )
        label_affine, image_affine = _affine(label), _affine(image)
        if label_affine is not None and image_affine is not None:
            if not np.allclose(label_affine, image_affine, atol=self.affine_atol):
                raise ValueError(f"{source}: affine differs from the image's ({image_source})")
        values = np.asarray(torch.as_tensor(label)[0].detach().cpu())
        try:
            values, _ = check_label(values, self.num_classes)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from error
        if not self.allow_empty_foreground and not values.any():
            raise ValueError(
                f"{source}: no foreground voxel (background only); drop the case or set allow_empty_foreground"
            )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Check the dictionary's image and label and return it unchanged."""
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys or keys[0] != self.keys[0]:
            raise KeyError(f"image key {self.keys[0]!r} missing")
        image = d[keys[0]]
        image_source = source_name(image, keys[0])
        self.check_image(image, image_source)
        if len(keys) == 2:
            self.check_label(d[keys[1]], source_name(d[keys[1]], keys[1]), image, image_source)
        return d


def validate_datalist(
    cases: Iterable[Mapping[str, Any]],
    num_classes: int,
    in_channels: int = 1,
    spatial_dims: int = 3,
    allow_empty_foreground: bool = False,
    keys: Sequence[str] = ("image", "label"),
    allow_2d: bool = False,
    label_mapping: Mapping[str, Sequence[int]] | None = None,
) -> list[Mapping[str, Any]]:
    """Check every case of a datalist (absolute paths) and report all bad ones together.

    Args:
        cases: datalist entries, e.g. from ``monai.data.load_decathlon_datalist``.
        num_classes: classes including background.
        in_channels: channels the network takes.
        spatial_dims: spatial dimensions of the volumes.
        allow_empty_foreground: accept labels without foreground.
        keys: image and label keys.
        allow_2d: also accept 2D files (the network is 2D).
        label_mapping: a datalist's ``label_mapping`` (``orig_labels``, ``target_labels``): labels hold data set
            values, every one of which must be listed (:class:`CheckedMapLabelValued`), and are checked as training
            indices; None: labels already hold training indices.

    Returns:
        The cases, unchanged, when all pass.

    Raises:
        ValueError: one line per failed case, each naming its file and problem (unreadable files included).
    """
    cases = list(cases)
    pipeline = Compose(
        [
            LoadImaged(list(keys), image_only=True),
            EnsureChannelFirstd(list(keys)),
            *([CheckedMapLabelValued(keys[1:], **label_mapping)] if label_mapping and len(keys) > 1 else []),
            ValidateSegmentationd(
                keys, num_classes, in_channels, spatial_dims, allow_empty_foreground, allow_2d=allow_2d
            ),
        ]
    )
    failures = []
    for case in cases:
        try:
            pipeline({key: case[key] for key in keys})
        except Exception as error:  # MONAI wraps transform errors in RuntimeErrors; report the wrapped one
            while isinstance(error, RuntimeError) and error.__cause__ is not None:
                error = error.__cause__
            message = str(error)
            named = any(os.fspath(case[key]) in message for key in keys if isinstance(case.get(key), str | os.PathLike))
            failures.append(message if named else f"{case[keys[0]]}: {type(error).__name__}: {message}")
    if failures:
        raise ValueError(f"{len(failures)} of {len(cases)} case(s) failed the checks:\n" + "\n".join(failures))
    return cases
