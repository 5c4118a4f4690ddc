from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.losses import BoundaryLoss
from monai.networks import one_hot
from scipy import ndimage

from common.maps import active_contour_map, boundary_map, rrw_map

SQRT2 = np.sqrt(2.0)


def scipy_rrw(label: np.ndarray, num_classes: int, spacing=None) -> np.ndarray:
    """Per-class scipy loop, as in the authors' code and MONAI's BoundaryLoss."""
    z = np.ones((num_classes, *label.shape))
    for c in range(num_classes):
        mask = label == c
        if mask.all():
            z[c] = -1.0
        elif mask.any():
            d = ndimage.distance_transform_edt(mask, sampling=spacing)
            z[c][mask] = -d[mask] / d.max()
    return z


def scipy_boundary(label: np.ndarray, num_classes: int, spacing=None, offset: float = 0.0) -> np.ndarray:
    z = np.zeros((num_classes, *label.shape))
    for c in range(num_classes):
        mask = label == c
        if mask.any() and not mask.all():
            d_in = ndimage.distance_transform_edt(mask, sampling=spacing)
            d_out = ndimage.distance_transform_edt(~mask, sampling=spacing)
            z[c] = np.where(mask, -(d_in - offset), d_out)
    return z


def blobs(shape, num_classes: int, seed: int) -> np.ndarray:
    """Piecewise-constant random label with blob-like regions (upsampled random grid)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, num_classes, size=tuple(max(s // 4, 1) for s in shape))
    label = ndimage.zoom(coarse, [s / c for s, c in zip(shape, coarse.shape, strict=True)], order=0)
    return label[tuple(slice(0, s) for s in shape)]


def test_rrw_hand_computed_square():
    label = np.zeros((5, 5), dtype=np.int64)
    label[1:4, 1:4] = 1
    z = rrw_map(label, 2)
    # class 1: ring at distance 1, centre at distance 2 -> -0.5 and -1; +1 outside
    expected_1 = np.ones((5, 5))
    expected_1[1:4, 1:4] = -0.5
    expected_1[2, 2] = -1.0
    # class 0 (border ring): edge voxels are 1 from the square, corners sqrt(2); max is sqrt(2)
    expected_0 = np.full((5, 5), 1.0)
    border = label == 0
    expected_0[border] = -1.0 / SQRT2
    for corner in [(0, 0), (0, 4), (4, 0), (4, 4)]:
        expected_0[corner] = -1.0
    np.testing.assert_allclose(z[1], expected_1, atol=1e-6)
    np.testing.assert_allclose(z[0], expected_0, atol=1e-6)
    assert z.dtype == np.float32 and z.shape == (2, 5, 5)


@pytest.mark.parametrize("shape", [(40, 36), (24, 20, 12)])
@pytest.mark.parametrize("num_classes", [2, 4, 7])
def test_rrw_matches_scipy_loop(shape, num_classes):
    label = blobs(shape, num_classes, seed=num_classes)
    np.testing.assert_allclose(rrw_map(label, num_classes), scipy_rrw(label, num_classes), atol=1e-5)


@pytest.mark.parametrize("spacing", [(1.5, 1.5, 10.0), (0.7, 2.0, 3.3)])
def test_rrw_anisotropic_spacing_matches_scipy(spacing):
    label = blobs((24, 20, 8), 4, seed=3)
    z = rrw_map(label, 4, spacing=spacing)
    np.testing.assert_allclose(z, scipy_rrw(label, 4, spacing=spacing), atol=1e-5)
    assert not np.allclose(z, rrw_map(label, 4)), "spacing must change the distances"


def test_rrw_absent_and_full_classes():
    label = np.zeros((6, 7, 3), dtype=np.uint8)
    label[2:4, 2:5, 1] = 2
    z = rrw_map(label, 4)
    np.testing.assert_array_equal(z[1], 1.0)  # absent
    np.testing.assert_array_equal(z[3], 1.0)  # absent
    assert z[2][label == 2].max() < 0 and z[2][label == 2].min() == -1.0
    full = rrw_map(np.full((5, 5), 1), 3)
    np.testing.assert_array_equal(full[1], -1.0)
    np.testing.assert_array_equal(full[0], 1.0)
    np.testing.assert_array_equal(full[2], 1.0)


def test_rrw_values_range_and_normalisation_per_class():
    label = blobs((32, 32, 16), 5, seed=11)
    z = rrw_map(label, 5, spacing=(1.0, 1.0, 2.5))
    for c in range(5):
        inside = z[c][label == c]
        assert inside.min() == pytest.approx(-1.0) and inside.max() < 0
        np.testing.assert_array_equal(z[c][label != c], 1.0)


@pytest.mark.parametrize("weights", [(1.0, 3.0, 1.0, 1.0), (0.5, 1.0, 2.0, 4.0)])
def test_rrw_class_weights_set_the_other_entries_at_the_voxels_of_each_class(weights):
    """Sec. 3.3: at a voxel of class y every other entry is w_y, the own entry is unchanged (map stays rectified)."""
    label = blobs((20, 18, 6), 4, seed=5)
    weighted, plain = rrw_map(label, 4, class_weights=weights), rrw_map(label, 4)
    for c in range(4):
        inside = label == c
        np.testing.assert_array_equal(weighted[c][inside], plain[c][inside])
        for k in range(4):
            if k != c:
                np.testing.assert_array_equal(weighted[k][inside], weights[c])
    with pytest.raises(ValueError, match="class_weights has 2 values"):
        rrw_map(label, 4, class_weights=(1.0, 2.0))
    with pytest.raises(ValueError, match="positive"):
        rrw_map(label, 4, class_weights=(1.0, -2.0, 1.0, 1.0))


def own_class_values(dense: np.ndarray, label: np.ndarray) -> np.ndarray:
    return np.take_along_axis(dense, label[None].astype(np.intp), axis=0)[0]


@pytest.mark.parametrize("shape", [(40, 36), (24, 20, 12)])
@pytest.mark.parametrize("num_classes", [2, 3, 7])
@pytest.mark.parametrize("spacing", [None, "anisotropic"])
def test_compact_rrw_is_the_own_class_value_of_the_dense_map(shape, num_classes, spacing):
    label = blobs(shape, num_classes, seed=num_classes)
    label[label == num_classes - 1] = 0  # one absent class
    spacing = None if spacing is None else (0.8, 1.3, 3.0)[: len(shape)]
    compact = rrw_map(label, num_classes, spacing=spacing, compact=True)
    dense = rrw_map(label, num_classes, spacing=spacing)
    assert compact.shape == label.shape and compact.dtype == np.float32
    np.testing.assert_array_equal(compact, own_class_values(dense, label))
    # the implied entries of the dense map are all +1
    other_classes = np.arange(num_classes).reshape(-1, *([1] * label.ndim)) != label
    np.testing.assert_array_equal(dense[other_classes], 1.0)
    np.testing.assert_allclose(compact, own_class_values(scipy_rrw(label, num_classes, spacing), label), atol=1e-5)


def test_compact_rrw_of_one_class_images_and_hand_computed_square():
    np.testing.assert_array_equal(rrw_map(np.full((4, 5, 3), 2), 3, compact=True), -1.0)
    label = np.zeros((5, 5), dtype=np.int64)
    label[1:4, 1:4] = 1
    expected = np.full((5, 5), -1.0 / SQRT2)  # background ring, corners at sqrt(2)
    expected[[0, 0, 4, 4], [0, 4, 0, 4]] = -1.0
    expected[1:4, 1:4] = -0.5
    expected[2, 2] = -1.0
    np.testing.assert_allclose(rrw_map(label, 2, compact=True), expected, atol=1e-6)


def test_compact_rrw_refuses_class_weights_and_points_to_the_loss():
    with pytest.raises(ValueError, match=r"RegionWiseLoss\(compact=True, class_weights"):
        rrw_map(np.zeros((4, 4), dtype=int), 2, class_weights=(1.0, 2.0), compact=True)


@pytest.mark.parametrize("spacing", [None, (1.5, 1.5, 10.0)])
@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_boundary_map_matches_scipy_loop(spacing, offset):
    label = blobs((24, 20, 8), 4, seed=7)
    expected = scipy_boundary(label, 4, spacing=spacing, offset=offset)
    np.testing.assert_allclose(boundary_map(label, 4, spacing=spacing, offset=offset), expected, atol=1e-5)


@pytest.mark.parametrize("shape", [(30, 28), (16, 14, 10)])
def test_boundary_map_offset_one_equals_monai_boundary_loss(shape):
    label = blobs(shape, 3, seed=2)
    label[..., 0] = 0  # keep every class but make sure the layout is not trivial
    monai_map = BoundaryLoss().compute_distance_map(one_hot(torch.as_tensor(label)[None, None], num_classes=3))
    np.testing.assert_allclose(boundary_map(label, 3, offset=1.0), monai_map[0].numpy(), atol=1e-5)


def test_boundary_map_absent_and_full_classes_are_zero():
    label = np.zeros((8, 8), dtype=np.int32)
    label[2:5, 3:6] = 1
    z = boundary_map(label, 3)
    np.testing.assert_array_equal(z[2], 0.0)
    np.testing.assert_array_equal(boundary_map(np.ones((6, 6), dtype=int), 2), 0.0)
    # hand check on the square: outside voxel (2, 1) is 2 voxels from class 1, inside centre (3, 4) is 2 deep
    assert z[1][2, 1] == pytest.approx(2.0) and z[1][3, 4] == pytest.approx(-2.0)


def test_active_contour_map_is_one_minus_onehot():
    label = blobs((9, 11, 5), 4, seed=1)
    expected = 1.0 - np.eye(4)[label].transpose(3, 0, 1, 2)
    np.testing.assert_array_equal(active_contour_map(label, 4), expected)
    # its own-class value is 0 everywhere, which a compact map reserves for padding: no compact form
    with pytest.raises(ValueError, match="no compact form"):
        active_contour_map(label, 4, compact=True)


def test_compact_rrw_values_are_never_zero_so_zero_can_mark_padding():
    for seed, shape in [(0, (9, 11, 5)), (1, (12, 12)), (2, (1, 7))]:
        compact = rrw_map(blobs(shape, 3, seed=seed), 3, compact=True)
        assert (compact < 0).all() and (compact >= -1).all()
    assert (rrw_map(np.zeros((4, 5), int), 2, compact=True) == -1).all()  # one class fills the image


def test_maps_accept_whole_float_and_bool_labels():
    label = blobs((12, 12), 3, seed=4)
    np.testing.assert_array_equal(rrw_map(label.astype(np.float32), 3), rrw_map(label, 3))
    np.testing.assert_array_equal(rrw_map(label == 1, 2), rrw_map((label == 1).astype(int), 2))


@pytest.mark.parametrize("function", [rrw_map, boundary_map, active_contour_map])
@pytest.mark.parametrize(
    ("label", "message"),
    [
        (np.array([[0, 1], [2, 3]]), r"values must lie in \[0, 2\]"),
        (np.array([[0, -1], [1, 1]]), r"values must lie in"),
        (np.array([[0.0, 0.5], [1.0, 1.0]]), "non-integer"),
        (np.array([[0.0, np.nan], [1.0, 1.0]]), "NaN"),
        (np.zeros(5, dtype=int), "2D or 3D"),
        (np.zeros((2, 2, 2, 2), dtype=int), "2D or 3D"),
        (np.array([["a", "b"], ["c", "d"]]), "integer class indices"),
    ],
)
def test_invalid_labels_raise_clear_errors(function, label, message):
    with pytest.raises(ValueError, match=message):
        function(label, 3)


def test_invalid_spacing_and_num_classes():
    label = np.zeros((4, 4, 4), dtype=int)
    with pytest.raises(ValueError, match="spacing .* has 2 values"):
        rrw_map(label, 2, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="positive and finite"):
        boundary_map(label, 2, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="num_classes"):
        rrw_map(label, 0)
