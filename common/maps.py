"""Region-wise (RW) maps of Valverde & Tohka, computed from a ground-truth label image.

Every function takes one integer label image (2D or 3D, no channel axis) and returns a float32 map of shape
``(num_classes, *spatial)`` to be multiplied with the softmax output (see :class:`common.losses.RegionWiseLoss`).

Compact form. A rectified map (RRW, active contour) has, at every voxel, one value for the voxel's own class and
one equal value for all other classes: ``+1``, or the class weight ``w_{label(i)}`` of a class-weighted RRW map.
With ``compact=True`` the functions return only the own-class value ``z_{label(i)}(i)``, shape ``(*spatial)``:
4 bytes per voxel whatever the class count. The other classes' value is implied: ``+1``, or
``class_weights[label(i)]`` given to the loss (``RegionWiseLoss(compact=True, class_weights=...)``). A compact
map never holds class weights, so ``rrw_map(..., compact=True, class_weights=...)`` is an error that names the
loss argument; a dense map always holds them, so the dense losses refuse ``class_weights``. RW-Boundary maps are
not rectified and have no compact form.

A compact value of 0 means "no map here": padding (``SpatialPadd``, rotated-in corners, zoomed-out borders write
label 0 and map 0) or a voxel to ignore, which gives no loss, as a dense map that is 0 in every channel does
(:mod:`common.losses.region_wise`). A real voxel's compact RRW value lies in ``[-1, 0)`` and is never 0. The
active-contour map's own-class value is 0 at every voxel, so its compact form would read as padding everywhere:
``active_contour_map(..., compact=True)`` is refused; use the dense map (its loss needs nothing but the label).

Distances come from the ``edt`` package. One multi-label EDT call gives, for every voxel, the distance to the
nearest voxel of another label, which is ``d_in`` of the voxel's own class for all classes at once; that single
call replaces the per-class ``scipy.ndimage.distance_transform_edt`` loop of the original code and of MONAI's
``BoundaryLoss`` (see ``scripts/bench_maps.py``). ``threads`` sets the EDT's threads (default: the CPUs this
process may use).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import edt
import numpy as np

__all__ = ["active_contour_map", "boundary_map", "check_label", "inside_distance", "rrw_map"]


def check_label(
    label: np.ndarray, num_classes: int, spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """Validate a label image and its spacing.

    Args:
        label: integer-valued array of shape ``(*spatial)`` with 2 or 3 spatial dimensions. Float arrays are
            accepted when every value is a whole number.
        num_classes: number of classes ``C``; valid labels are ``0 .. C - 1``.
        spacing: voxel size per axis in mm, or None for distances in voxels.

    Returns:
        The label as a C-contiguous array of the smallest unsigned integer type that holds ``num_classes``
        (no copy when it already is one) and the spacing as a tuple of floats (or None).

    Raises:
        ValueError: on a wrong number of dimensions, NaN or non-integer values, labels outside
            ``[0, num_classes)``, or a spacing that does not match the label's dimensions or is not positive.
    """
    label = np.asarray(label)
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    if label.ndim not in (2, 3):
        raise ValueError(
            f"label must be a 2D or 3D array without channel axis, got shape {label.shape}; "
            "squeeze a (1, *spatial) channel-first label before calling."
        )
    if label.size == 0:
        raise ValueError(f"label is empty (shape {label.shape}).")
    if label.dtype.kind == "b":
        label = label.astype(np.uint8)
    elif label.dtype.kind == "f":
        if np.isnan(label).any():
            raise ValueError("label contains NaN values.")
        if not np.all(np.isfinite(label)) or not np.array_equal(label, np.round(label)):
            raise ValueError("label contains non-integer values; expected class indices.")
    elif label.dtype.kind not in "iu":
        raise ValueError(f"label must hold integer class indices, got dtype {label.dtype}.")
    low, high = label.min(), label.max()
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"label values must lie in [0, {num_classes - 1}] for num_classes={num_classes}, "
            f"found values in [{low}, {high}]."
        )
    if spacing is not None:
        spacing = tuple(float(s) for s in np.atleast_1d(np.asarray(spacing, dtype=float)))
        if len(spacing) != label.ndim:
            raise ValueError(f"spacing {spacing} has {len(spacing)} values but label has {label.ndim} dimensions.")
        if not all(np.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"spacing must be positive and finite, got {spacing}.")
    return np.ascontiguousarray(label, dtype=np.min_scalar_type(num_classes)), spacing


def _threads(threads: int | None) -> int:
    return max(1, threads if threads is not None else len(os.sched_getaffinity(0)))


def inside_distance(
    label: np.ndarray, spacing: Sequence[float] | None = None, threads: int | None = None
) -> np.ndarray:
    """Distance from every voxel to the nearest voxel with a different label (``d_in`` of its own class).

    Boundary voxels of a class get the distance to the neighbouring voxel (1 voxel, or the spacing along that
    axis), as ``scipy.ndimage.distance_transform_edt`` of the class mask does. The image border is not a boundary.
    Where the whole image holds one label the distance is undefined and ``inf`` is returned.

    Args:
        label: validated unsigned label image (see :func:`check_label`).
        spacing: voxel size per axis, or None for voxel units.
        threads: EDT threads; None for all CPUs available to the process.

    Returns:
        float32 array of the label's shape.
    """
    # edt treats label 0 as background (distance 0), so shift every class to a nonzero id; check_label's dtype
    # holds num_classes, so the shift cannot overflow.
    shifted = label + label.dtype.type(1)
    return edt.edt(shifted, anisotropy=spacing, black_border=False, parallel=_threads(threads))


def _class_counts(label: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(label.ravel(), minlength=num_classes)


def _scatter_own_class(base: np.ndarray, label: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Write ``values[i]`` into ``base[label[i], i]`` for every voxel ``i`` (in place) and return ``base``."""
    flat_index = label.ravel().astype(np.intp)
    flat_index *= label.size
    flat_index += np.arange(label.size)
    np.put(base, flat_index, values)
    return base


def _dense_from_compact(own: np.ndarray, label: np.ndarray, num_classes: int, others: np.ndarray) -> np.ndarray:
    """Dense ``(C, *spatial)`` rectified map: ``others[label(i)]`` for every class but the own one, ``own`` there."""
    z = np.empty((num_classes, *label.shape), dtype=np.float32)
    z[...] = others[label]
    return _scatter_own_class(z, label, own)


def rrw_map(
    label: np.ndarray,
    num_classes: int,
    spacing: Sequence[float] | None = None,
    class_weights: Sequence[float] | None = None,
    threads: int | None = None,
    compact: bool = False,
) -> np.ndarray:
    """Rectified region-wise (RRW) map.

    ``z_c(i) = -d_in_c(i) / max_j d_in_c(j)`` where ``label(i) == c`` (values in ``[-1, 0)``), and ``+1``
    elsewhere. Normalisation is per class over the whole image. A class absent from the image is ``+1``
    everywhere; a class covering the whole image is ``-1`` everywhere.

    Class weights (paper Sec. 3.3) emphasise the voxels *of* a class: at a voxel of class ``y`` every other
    class's entry becomes ``class_weights[y]`` instead of ``+1``, so the non-true entries of each voxel stay equal
    and the map stays rectified (exactly one negative gradient component per voxel). Scaling a channel instead
    would break that.

    Args:
        label: integer label image ``(*spatial)``, 2D or 3D.
        num_classes: number of classes ``C`` (background is class 0 and is treated like any class).
        spacing: voxel size per axis in mm; distances are in voxels when None.
        class_weights: optional positive weight per class, the value of the other classes' entries at the voxels
            of that class (dense maps only; compact maps leave the weights to the loss).
        threads: EDT threads; None for all CPUs available to the process.
        compact: return only each voxel's own-class value, ``(*spatial)`` (see the module docstring).

    Returns:
        float32 array ``(C, *spatial)``, or ``(*spatial)`` with ``compact=True``.

    Raises:
        ValueError: on an invalid label, spacing or class weights, or class weights with ``compact=True``.
    """
    if compact and class_weights is not None:
        raise ValueError(
            "class_weights cannot be stored in a compact RRW map (it holds only each voxel's own-class value); "
            "give them to the loss instead: RegionWiseLoss(compact=True, class_weights=...)."
        )
    label, spacing = check_label(label, num_classes, spacing)
    others = _class_weights(num_classes, class_weights)
    own = _normalised_inside_distance(label, num_classes, spacing, threads)
    return own if compact else _dense_from_compact(own, label, num_classes, others)


def _normalised_inside_distance(
    label: np.ndarray, num_classes: int, spacing: tuple[float, ...] | None, threads: int | None
) -> np.ndarray:
    """Own-class RRW value ``-d_in(i) / max d_in`` of the voxel's class (``-1`` everywhere for a one-class image)."""
    if label.min() == label.max():  # one class fills the image: no boundary, its map is -1
        return np.full(label.shape, -1.0, dtype=np.float32)
    distance = inside_distance(label, spacing, threads)
    class_max = np.zeros(num_classes, dtype=np.float32)
    np.maximum.at(class_max, label.ravel(), distance.ravel())
    divisor = np.where(class_max > 0, -class_max, np.float32(1.0))  # absent classes have no voxel to divide
    distance /= divisor[label]
    return distance


def _class_weights(num_classes: int, class_weights: Sequence[float] | None) -> np.ndarray:
    if class_weights is None:
        return np.ones(num_classes, dtype=np.float32)
    weights = np.asarray(class_weights, dtype=np.float32).ravel()
    if weights.size != num_classes:
        raise ValueError(f"class_weights has {weights.size} values but num_classes={num_classes}.")
    if not np.all(np.isfinite(weights)) or np.any(weights <= 0):
        raise ValueError(f"class_weights must be positive and finite, got {weights.tolist()}.")
    return weights


def boundary_map(
    label: np.ndarray,
    num_classes: int,
    spacing: Sequence[float] | None = None,
    offset: float = 0.0,
    threads: int | None = None,
) -> np.ndarray:
    """RW-Boundary map: Kervadec's boundary-loss distance map written as an RW map.

    ``z_c(i) = -(d_in_c(i) - offset)`` inside class ``c`` and ``z_c(i) = d_out_c(i)`` (distance to the nearest
    voxel of class ``c``) outside. ``offset=0`` is the RW paper's convention; ``offset=1`` gives exactly MONAI's
    ``BoundaryLoss.compute_distance_map``. A class that is absent or fills the whole image has an all-zero map.

    Args:
        label: integer label image ``(*spatial)``, 2D or 3D.
        num_classes: number of classes ``C``.
        spacing: voxel size per axis in mm; distances are in voxels when None.
        offset: subtracted from the inside distance.
        threads: EDT threads; None for all CPUs available to the process.

    Returns:
        float32 array ``(C, *spatial)``.

    Raises:
        ValueError: on an invalid label or spacing.
    """
    label, spacing = check_label(label, num_classes, spacing)
    counts = _class_counts(label, num_classes)
    z = np.zeros((num_classes, *label.shape), dtype=np.float32)
    has_interface = (counts > 0) & (counts < label.size)
    if not has_interface.any():
        return z
    for c in np.flatnonzero(has_interface):
        # distance of every voxel outside c to the nearest voxel of c (zero inside c)
        z[c] = edt.edt((label != c).view(np.uint8), anisotropy=spacing, black_border=False, parallel=_threads(threads))
    # at least two classes are present here, so every voxel's own class has an interface
    return _scatter_own_class(z, label, np.float32(offset) - inside_distance(label, spacing, threads))


def active_contour_map(label: np.ndarray, num_classes: int, compact: bool = False) -> np.ndarray:
    """Active-contour map ``Z = 1 - onehot(label)``: the region term of the AC loss with ``c1 = 1, c2 = 0``.

    Args:
        label: integer label image ``(*spatial)``, 2D or 3D.
        num_classes: number of classes ``C``.
        compact: refused: the own-class value is 0 at every voxel, which the compact form reserves for voxels
            without a map (padding; see the module docstring).

    Returns:
        float32 array ``(C, *spatial)``.

    Raises:
        ValueError: on an invalid label, or ``compact=True``.
    """
    if compact:
        raise ValueError(
            "the active-contour map has no compact form: its own-class value is 0 at every voxel, and a compact value "
            "of 0 marks a voxel without a map (padding), which gives no loss; use the dense map (compact=False)."
        )
    label, _ = check_label(label, num_classes)
    own = np.zeros(label.shape, dtype=np.float32)
    return _dense_from_compact(own, label, num_classes, np.ones(num_classes, dtype=np.float32))
