"""MONAI dictionary transforms that add region-wise (RW) maps to a data dictionary.

The maps depend only on the ground truth, so they belong in the deterministic part of a pipeline, where
``CacheDataset``/``PersistentDataset`` compute them once. The RW paper computes RRW maps on the 3D labels and
trains 2D networks on slices: put the map transform before the slice crop and list the map key among the crop's
keys. To compute the map on the patch instead, put the transform after the crop.

``compact=True`` stores an RRW map as one float per voxel, ``(1, *spatial)``: the value of the voxel's own class
(see :mod:`common.maps`). A cached dataset then holds 4 bytes per voxel instead of ``4 * C``; the losses read it
with ``compact=True`` and take any class weights themselves. Zero padding of the map (``SpatialPadd``, rotation,
zoom) marks voxels without a map, which give no RW loss in the dense and the compact form alike; the active-contour
map (own-class value 0 everywhere) therefore has no compact form.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type

from common.maps import active_contour_map, boundary_map, rrw_map

__all__ = ["MAP_FUNCTIONS", "ActiveContourMapd", "BoundaryMapd", "RRWMapd", "RWMapd"]

MAP_FUNCTIONS: dict[str, Callable[..., np.ndarray]] = {
    "rrw": rrw_map,
    "boundary": boundary_map,
    "active_contour": active_contour_map,
}
_USES_SPACING = {"rrw", "boundary"}
_HAS_COMPACT_FORM = {"rrw"}  # active contour: own value 0 = "no map"


class RWMapd(MapTransform):
    """Compute an RW map from a channel-first label and store it under a new key.

    The map has shape ``(num_classes, *spatial)`` (``(1, *spatial)`` with ``compact=True``) and, for a
    ``MetaTensor`` label, the label's metadata (affine, filename, applied operations), so later spatial transforms
    treat it like the label.

    Args:
        keys: key(s) of the label(s), each of shape ``(1, *spatial)`` with 2 or 3 spatial dimensions.
        num_classes: number of classes, background (0) included.
        map_type: ``"rrw"``, ``"boundary"`` (RW-Boundary) or ``"active_contour"``.
        output_key: key(s) for the map(s), one per label key.
        spacing: voxel size in mm for the distances; None for voxel units (unless ``spacing_from_affine``).
            Ignored by ``"active_contour"``, which uses no distances, so one config can switch map types.
        spacing_from_affine: take the spacing from each label's affine (the label must be a ``MetaTensor``).
        allow_missing_keys: do not raise if a key is missing.
        compact: store only each voxel's own-class value, ``(1, *spatial)`` (``"rrw"`` only); class weights then
            go to the loss, not to the map.
        map_kwargs: passed to the map function (``class_weights`` for a dense ``"rrw"``, ``offset`` for
            ``"boundary"``).

    Raises:
        ValueError: on an unknown map type, both ``spacing`` and ``spacing_from_affine``, a mismatch between
            the numbers of keys and output keys, ``compact`` with ``"boundary"``, or ``compact`` with class weights.
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        num_classes: int = 2,
        map_type: str = "rrw",
        output_key: str | Sequence[str] = "rw_map",
        spacing: Sequence[float] | None = None,
        spacing_from_affine: bool = False,
        allow_missing_keys: bool = False,
        compact: bool = False,
        **map_kwargs: Any,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if map_type not in MAP_FUNCTIONS:
            raise ValueError(f"map_type must be one of {sorted(MAP_FUNCTIONS)}, got {map_type!r}.")
        if compact and map_type not in _HAS_COMPACT_FORM:
            raise ValueError(
                f"map_type {map_type!r} has no compact form (RW-Boundary: its non-true entries differ per class; "
                "active contour: its own-class value is 0, which the compact form reserves for padding); use "
                f"compact=False or one of {sorted(_HAS_COMPACT_FORM)}."
            )
        if compact and map_kwargs.get("class_weights") is not None:
            raise ValueError(
                "class_weights cannot be stored in a compact map; give them to the loss instead: "
                "RegionWiseLoss(compact=True, class_weights=...) or RWCombinedLoss(compact=True, class_weights=...)."
            )
        if spacing is not None and spacing_from_affine:
            raise ValueError("Give either spacing or spacing_from_affine=True, not both.")
        self.output_keys = (output_key,) if isinstance(output_key, str) else tuple(output_key)
        if len(self.output_keys) != len(self.keys):
            raise ValueError(f"{len(self.keys)} label key(s) but {len(self.output_keys)} output key(s).")
        self.num_classes = num_classes
        self.map_type = map_type
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.spacing_from_affine = spacing_from_affine
        self.compact = compact
        self.map_kwargs = map_kwargs

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Add the map of every label key to a copy of ``data``."""
        d = dict(data)
        for key, output_key in self.key_iterator(d, self.output_keys):
            d[output_key] = self.compute(d[key], key)
        return d

    def compute(self, label: np.ndarray | torch.Tensor, key: Hashable = "label") -> np.ndarray | torch.Tensor:
        """Map of one channel-first label, of the label's array type (``MetaTensor`` keeps its metadata).

        Raises:
            ValueError: naming the label's file (when known) and the problem.
        """
        source = _describe(label, key)
        if label.ndim not in (3, 4) or label.shape[0] != 1:
            raise ValueError(
                f"{source}: expected a channel-first label of shape (1, H, W) or (1, H, W, D), got "
                f"{tuple(label.shape)}; use EnsureChannelFirstd, or AsDiscreted(argmax=True) for one-hot labels."
            )
        array = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
        kwargs = dict(self.map_kwargs)
        if self.compact:
            kwargs["compact"] = True
        if self.map_type in _USES_SPACING:
            kwargs["spacing"] = self._spacing(label, source)
        try:
            z = MAP_FUNCTIONS[self.map_type](array[0], self.num_classes, **kwargs)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from error
        if self.compact:
            z = z[None]
        if isinstance(label, torch.Tensor):
            return convert_to_dst_type(z, dst=label, dtype=torch.float32)[0]
        return z

    def _spacing(self, label: np.ndarray | torch.Tensor, source: str) -> tuple[float, ...] | None:
        if not self.spacing_from_affine:
            return self.spacing
        if not isinstance(label, MetaTensor):
            raise ValueError(f"{source}: spacing_from_affine=True needs a MetaTensor label (load it with LoadImaged).")
        spatial_dims = label.ndim - 1
        return tuple(float(s) for s in affine_to_spacing(label.affine, r=spatial_dims))


def _describe(label: Any, key: Hashable) -> str:
    filename = label.meta.get("filename_or_obj") if isinstance(label, MetaTensor) else None
    return f"label '{key}' ({filename})" if filename else f"label '{key}'"


class RRWMapd(RWMapd):
    """Rectified RW map (see :func:`common.maps.rrw_map`).

    ``class_weights[c]`` replaces the ``+1`` entries at the voxels of class ``c`` (dense maps; with ``compact=True``
    give the weights to the loss).
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        num_classes: int = 2,
        output_key: str | Sequence[str] = "rw_map",
        spacing: Sequence[float] | None = None,
        spacing_from_affine: bool = False,
        class_weights: Sequence[float] | None = None,
        allow_missing_keys: bool = False,
        compact: bool = False,
    ) -> None:
        super().__init__(
            keys,
            num_classes,
            "rrw",
            output_key,
            spacing,
            spacing_from_affine,
            allow_missing_keys,
            compact,
            class_weights=class_weights,
        )


class BoundaryMapd(RWMapd):
    """RW-Boundary map (see :func:`common.maps.boundary_map`); ``offset=1`` matches MONAI's ``BoundaryLoss``."""

    def __init__(
        self,
        keys: KeysCollection = "label",
        num_classes: int = 2,
        output_key: str | Sequence[str] = "rw_map",
        spacing: Sequence[float] | None = None,
        spacing_from_affine: bool = False,
        offset: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(
            keys, num_classes, "boundary", output_key, spacing, spacing_from_affine, allow_missing_keys, offset=offset
        )


class ActiveContourMapd(RWMapd):
    """Active-contour map ``1 - onehot(label)`` (see :func:`common.maps.active_contour_map`); dense only."""

    def __init__(
        self,
        keys: KeysCollection = "label",
        num_classes: int = 2,
        output_key: str | Sequence[str] = "rw_map",
        allow_missing_keys: bool = False,
        compact: bool = False,
    ) -> None:
        super().__init__(
            keys, num_classes, "active_contour", output_key, allow_missing_keys=allow_missing_keys, compact=compact
        )
