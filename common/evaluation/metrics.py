"""Per-case segmentation metrics of each structure: Dice, Hausdorff distance and HD95 in mm, with a status.

Each *structure* is a set of label values: a single class (``{"class_1": (1,)}``) or a region such as the BraTS
whole tumour (``{"WT": (1, 2, 4)}``). For every case and structure the evaluation reports a status that makes absent
structures explicit instead of silently averaging them as 0 or NaN:

- ``present``: the structure is in the ground truth and in the prediction; Dice, HD and HD95 are finite.
- ``missed``: in the ground truth only; Dice 0, HD and HD95 infinite.
- ``false_positive``: in the prediction only; Dice 0, HD and HD95 infinite.
- ``absent``: in neither; Dice, HD and HD95 are NaN (undefined).

The Hausdorff distances follow MONAI's `compute_hausdorff_distance` exactly: surface voxels are the voxels of the
mask that a 6-connected (face) binary erosion removes, distances go from every surface voxel of one mask to the
nearest surface voxel of the other, in mm from the voxel spacing; HD is the maximum of both directed maxima and
HD95 the maximum of both directed 95th percentiles (linear interpolation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import KDTree

if TYPE_CHECKING:
    pass


STATUS_PRESENT = "present"


STATUS_MISSED = "missed"


STATUS_FALSE_POSITIVE = "false_positive"


STATUS_ABSENT = "absent"


@dataclass(frozen=True)
class StructureResult:
    """Metrics of one structure in one case.

    Attributes:
        case: case identifier.
        structure: structure name (for example ``class_1`` or ``WT``).
        labels: label values forming the structure, joined by ``+``.
        status: one of ``present``, ``missed``, ``false_positive``, ``absent`` (see the module docstring).
        dice: Dice coefficient.
        hd: Hausdorff distance in mm.
        hd95: 95th-percentile Hausdorff distance in mm.
        gt_voxels: number of ground-truth voxels of the structure.
        pred_voxels: number of predicted voxels of the structure.
    """

    case: str
    structure: str
    labels: str
    status: str
    dice: float
    hd: float
    hd95: float
    gt_voxels: int
    pred_voxels: int


RESULT_COLUMNS = tuple(field.name for field in fields(StructureResult))


def class_structures(
    num_classes: int, include_background: bool = False, names: Sequence[str] | None = None
) -> dict[str, tuple[int, ...]]:
    """Structures for the individual classes ``0..num_classes-1``.

    Args:
        num_classes: number of classes including background (label 0).
        include_background: whether to evaluate label 0 too.
        names: names of the evaluated classes in label order (default ``class_<k>``).

    Returns:
        Mapping of each name to ``(k,)``.

    Raises:
        ValueError: when the number of names does not match the evaluated classes.
    """
    labels = range(0 if include_background else 1, num_classes)
    names = [f"class_{label}" for label in labels] if names is None else list(names)
    if len(names) != len(labels) or len(set(names)) != len(names):
        raise ValueError(f"need {len(labels)} distinct class names for labels {list(labels)}, got {names}.")
    return {name: (label,) for name, label in zip(names, labels, strict=True)}


def brats_regions(enhancing_label: int = 4) -> dict[str, tuple[int, ...]]:
    """BraTS evaluation regions: whole tumour, tumour core and enhancing tumour.

    BraTS labels are 1 (necrosis / non-enhancing core), 2 (oedema) and 4 (enhancing tumour); pipelines that remap
    the enhancing label to 3 pass ``enhancing_label=3``.

    Args:
        enhancing_label: label value of the enhancing tumour.

    Returns:
        Mapping ``WT``, ``TC``, ``ET`` to their label values.
    """
    return {"WT": (1, 2, enhancing_label), "TC": (1, enhancing_label), "ET": (enhancing_label,)}


def brats18_structures(enhancing_label: int = 4) -> dict[str, tuple[int, ...]]:
    """BraTS18 structures in the RW paper's layout: each label (ET, ED, NCR_NET) first, then WT and TC.

    The RW paper (Valverde & Tohka, Table 3) scores the labels themselves; the BraTS challenge scores the nested
    regions. The enhancing-tumour region equals the ET label, so it appears once, as ``ET``.

    Args:
        enhancing_label: label value of the enhancing tumour (3 after the training pipeline's 0/1/2/4 -> 0..3).

    Returns:
        Mapping ``ET``, ``ED``, ``NCR_NET``, ``WT``, ``TC`` to their label values.
    """
    regions = brats_regions(enhancing_label)
    return {"ET": regions["ET"], "ED": (2,), "NCR_NET": (1,), "WT": regions["WT"], "TC": regions["TC"]}


def spacing_from_affine(affine: np.ndarray | torch.Tensor) -> tuple[float, ...]:
    """Voxel spacing (mm) along each array axis from a homogeneous affine.

    Args:
        affine: ``(D+1, D+1)`` affine mapping voxel indices to world coordinates.

    Returns:
        Length of each column of the linear part, i.e. the spacing of each array axis.
    """
    matrix = np.asarray(affine, dtype=np.float64)
    spatial_dims = matrix.shape[0] - 1
    return tuple(float(v) for v in np.linalg.norm(matrix[:spatial_dims, :spatial_dims], axis=0))


def _validate_label_array(array: np.ndarray, name: str) -> np.ndarray:
    """Check that ``array`` holds non-negative integer labels and return it as a contiguous integer array."""
    if array.ndim not in (2, 3):
        raise ValueError(f"{name}: expected a 2D or 3D label array, got shape {array.shape}.")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise ValueError(f"{name}: labels must be integers, found non-integer values.")
    elif array.dtype.kind not in "iub":
        raise ValueError(f"{name}: unsupported label dtype {array.dtype}.")
    if array.size and array.min() < 0:
        raise ValueError(f"{name}: labels must be non-negative, found {array.min()}.")
    return np.ascontiguousarray(array, dtype=np.int64 if array.max(initial=0) > np.iinfo(np.int32).max else np.int32)


def _union_box(boxes: Sequence[tuple[slice, ...] | None]) -> tuple[slice, ...] | None:
    """Smallest box containing all the given `scipy.ndimage.find_objects` boxes (``None`` entries are empty)."""
    present = [box for box in boxes if box is not None]
    if not present:
        return None
    return tuple(
        slice(min(box[axis].start for box in present), max(box[axis].stop for box in present))
        for axis in range(len(present[0]))
    )


def _boxes_of(objects: list[tuple[slice, ...] | None], labels: Sequence[int]) -> list[tuple[slice, ...] | None]:
    """Boxes of ``labels`` from a `find_objects` list (label ``k`` at index ``k - 1``; label 0 has no box)."""
    return [objects[label - 1] if 0 < label <= len(objects) else None for label in labels]


def _structure_mask(label_map: np.ndarray, members: Sequence[int]) -> np.ndarray:
    """Boolean mask of the voxels whose label is one of ``members``."""
    return label_map == members[0] if len(members) == 1 else np.isin(label_map, members)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a mask: the voxels a 6-connected erosion removes (as in MONAI `get_mask_edges`)."""
    return mask & ~ndimage.binary_erosion(mask)


def _directed_distances(
    from_points: np.ndarray, on_to_surface: np.ndarray, to_points: np.ndarray, scale: np.ndarray
) -> np.ndarray:
    """Distance (mm, float32 like MONAI) from each surface point to the nearest point of the other surface.

    Args:
        from_points: ``(N, D)`` voxel indices of the source surface.
        on_to_surface: ``(N,)`` whether each source point also lies on the target surface; those are at distance 0
            and skip the KD-tree query (a large share of the surface for good predictions).
        to_points: ``(M, D)`` voxel indices of the target surface.
        scale: voxel spacing in mm per axis.

    Returns:
        ``(N,)`` float32 distances, zeros first.
    """
    distances = np.zeros(len(from_points), dtype=np.float32)
    tree = KDTree(to_points * scale, balanced_tree=False, compact_nodes=False)
    distances[np.count_nonzero(on_to_surface) :] = tree.query(from_points[~on_to_surface] * scale, k=1)[0]
    return distances


def hausdorff_from_masks(
    pred_mask: np.ndarray, gt_mask: np.ndarray, spacing: Sequence[float] | None = None, percentile: float = 95.0
) -> tuple[float, float]:
    """Symmetric Hausdorff distance and its percentile variant between two non-empty binary masks.

    Surface voxel coordinates (in mm) are matched with a KD-tree, as MONAI does on CPU, so the values are identical
    to `compute_hausdorff_distance`; the speed-up over MONAI comes from working on cropped integer label maps
    and from skipping the query for voxels on both surfaces. A dense EDT of each surface on the masks' bounding
    box (`edt` package) gives the same numbers but its distance step was 2-3x slower than the KD-tree on 20-class
    128^3 label maps (surfaces are sparse, bounding boxes are not). Callers crop the masks to their union bounding
    box with a margin of at least one voxel; the distances do not depend on the crop as long as that margin is
    there.

    Args:
        pred_mask: boolean prediction mask (2D or 3D), not empty.
        gt_mask: boolean ground-truth mask of the same shape, not empty.
        spacing: voxel spacing in mm per array axis; 1 when ``None``.
        percentile: percentile of each directed distance set for the second value.

    Returns:
        ``(hd, hd_percentile)`` in mm.

    Raises:
        ValueError: for empty masks or mismatched shapes.
    """
    if pred_mask.shape != gt_mask.shape:
        raise ValueError(f"mask shapes differ: {pred_mask.shape} and {gt_mask.shape}.")
    if not pred_mask.any() or not gt_mask.any():
        raise ValueError("Hausdorff distance needs two non-empty masks.")
    spacing = (1.0,) * pred_mask.ndim if spacing is None else tuple(float(s) for s in spacing)
    scale = np.asarray(spacing, dtype=np.float64)
    pred_surface, gt_surface = _surface(pred_mask), _surface(gt_mask)
    pred_points, gt_points = np.argwhere(pred_surface), np.argwhere(gt_surface)
    directed = (
        _directed_distances(pred_points, gt_surface[tuple(pred_points.T)], gt_points, scale),
        _directed_distances(gt_points, pred_surface[tuple(gt_points.T)], pred_points, scale),
    )
    hd = max(float(d.max()) for d in directed)
    hd_percentile = max(float(np.quantile(d, percentile / 100.0)) for d in directed)
    return hd, hd_percentile


def evaluate_case(
    pred: np.ndarray,
    label: np.ndarray,
    structures: Mapping[str, Sequence[int]],
    spacing: Sequence[float] | None = None,
    case: str = "",
    distances: bool = True,
) -> list[StructureResult]:
    """Dice, HD and HD95 of every structure of one case.

    Args:
        pred: integer predicted label map (*spatial), 2D or 3D.
        label: integer ground-truth label map of the same shape.
        structures: mapping structure name to the label values it unites.
        spacing: voxel spacing in mm per array axis; 1 when ``None``.
        case: case identifier stored in the results (and used in error messages).
        distances: compute HD and HD95; when False they stay NaN for ``present`` structures (Dice only, one pass
            over the voxels).

    Returns:
        One `StructureResult` per structure, in the order of ``structures``.

    Raises:
        ValueError: when the arrays are not integer label maps of the same 2D/3D shape or the spacing is invalid.
    """
    where = f"case {case!r}" if case else "case"
    pred = _validate_label_array(np.asarray(pred), f"{where} prediction")
    label = _validate_label_array(np.asarray(label), f"{where} label")
    if pred.shape != label.shape:
        raise ValueError(f"{where}: prediction shape {pred.shape} differs from label shape {label.shape}.")
    spacing = (1.0,) * label.ndim if spacing is None else tuple(float(s) for s in spacing)
    if len(spacing) != label.ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"{where}: spacing {spacing} must hold {label.ndim} positive values.")

    num_values = int(max(pred.max(initial=0), label.max(initial=0))) + 1
    confusion = np.bincount(
        label.ravel().astype(np.int64) * num_values + pred.ravel(), minlength=num_values * num_values
    ).reshape(num_values, num_values)
    if distances:
        label_objects = ndimage.find_objects(label)
        pred_objects = ndimage.find_objects(pred)
        # A frame of -1 (no structure's label) keeps every crop (union box plus a one-voxel margin) inside the arrays.
        padded_label = np.pad(label, 1, constant_values=-1)
        padded_pred = np.pad(pred, 1, constant_values=-1)

    results = []
    for name, values in structures.items():
        members = [v for v in values if v < num_values]
        gt_voxels = int(confusion[members, :].sum())
        pred_voxels = int(confusion[:, members].sum())
        intersection = int(confusion[np.ix_(members, members)].sum())
        dice, hd, hd95 = math.nan, math.nan, math.nan
        if gt_voxels and pred_voxels:
            status = STATUS_PRESENT
            dice = 2.0 * intersection / (gt_voxels + pred_voxels)
            if distances:
                if 0 in members:  # background has no find_objects box and usually spans the volume
                    box = tuple(slice(0, n) for n in label.shape)
                else:
                    box = _union_box(_boxes_of(label_objects, members) + _boxes_of(pred_objects, members))
                crop = tuple(slice(s.start, s.stop + 2) for s in box)  # box in padded coordinates, margin 1
                hd, hd95 = hausdorff_from_masks(
                    _structure_mask(padded_pred[crop], members), _structure_mask(padded_label[crop], members), spacing
                )
        elif gt_voxels or pred_voxels:
            status = STATUS_MISSED if gt_voxels else STATUS_FALSE_POSITIVE
            dice, hd, hd95 = 0.0, math.inf, math.inf
        else:
            status = STATUS_ABSENT
        results.append(
            StructureResult(
                case=case,
                structure=name,
                labels="+".join(str(v) for v in values),
                status=status,
                dice=dice,
                hd=hd,
                hd95=hd95,
                gt_voxels=gt_voxels,
                pred_voxels=pred_voxels,
            )
        )
    return results


def label_map(array: torch.Tensor) -> np.ndarray:
    """Channel-first tensor (1 or C channels) to an integer label map; C channels are argmax-ed.

    ``torch.max(dim=0)`` rather than ``argmax(dim=0)``: 3-4x faster over the channel axis of a contiguous tensor.
    """
    values = array.detach().cpu()
    values = values[0] if values.shape[0] == 1 else torch.max(values, dim=0).indices
    if values.is_floating_point():
        values = values.round()
    return values.numpy().astype(np.int32, copy=False)
