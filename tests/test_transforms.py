from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader, MetaTensor, PersistentDataset
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, RandSpatialCropd, SqueezeDimd

from common.maps import active_contour_map, boundary_map, rrw_map
from common.transforms import ActiveContourMapd, BoundaryMapd, RRWMapd, RWMapd

SPACING = (1.5, 1.25, 10.0)


def make_label(shape=(20, 16, 6), num_classes=4, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, dtype=np.uint8)
    for c in range(1, num_classes):
        x, y = rng.integers(2, shape[0] - 6), rng.integers(2, shape[1] - 6)
        label[x : x + 5, y : y + 4, 1:-1] = c
    return label


@pytest.fixture
def nifti_case(tmp_path):
    label = make_label()
    image = np.broadcast_to(np.arange(label.shape[2], dtype=np.float32), label.shape).copy()  # value = slice index
    affine = np.diag([*SPACING, 1.0])
    paths = {}
    for key, array in (("image", image), ("label", label)):
        paths[key] = str(tmp_path / f"{key}.nii.gz")
        nib.save(nib.Nifti1Image(array, affine), paths[key])
    return paths, label


def load(keys=("image", "label")):
    return [LoadImaged(keys), EnsureChannelFirstd(keys)]


def test_rrw_mapd_spacing_from_affine_matches_function(nifti_case):
    paths, label = nifti_case
    out = Compose([*load(), RRWMapd("label", num_classes=4, spacing_from_affine=True)])(paths)
    rw_map = out["rw_map"]
    assert isinstance(rw_map, MetaTensor) and rw_map.shape == (4, *label.shape) and rw_map.dtype == torch.float32
    np.testing.assert_allclose(rw_map.numpy(), rrw_map(label, 4, spacing=SPACING), atol=1e-6)
    np.testing.assert_allclose(rw_map.affine.numpy(), out["label"].affine.numpy())
    assert rw_map.meta["filename_or_obj"] == paths["label"]


def test_map_types_and_numpy_input():
    label = make_label(seed=1)
    data = {"label": label[None]}
    np.testing.assert_array_equal(RRWMapd(num_classes=4, spacing=SPACING)(data)["rw_map"], rrw_map(label, 4, SPACING))
    boundary = BoundaryMapd(num_classes=4, offset=1.0)(data)["rw_map"]
    np.testing.assert_array_equal(boundary, boundary_map(label, 4, offset=1.0))
    np.testing.assert_array_equal(ActiveContourMapd(num_classes=4)(data)["rw_map"], active_contour_map(label, 4))
    generic = RWMapd(num_classes=4, map_type="active_contour", spacing_from_affine=True)  # spacing ignored for AC
    np.testing.assert_array_equal(generic(data)["rw_map"], active_contour_map(label, 4))


def test_multiple_keys_and_output_keys():
    data = {"a": make_label(seed=1)[None], "b": make_label(seed=2)[None]}
    out = RWMapd(["a", "b"], num_classes=4, output_key=["map_a", "map_b"])(data)
    np.testing.assert_array_equal(out["map_b"], rrw_map(data["b"][0], 4))
    with pytest.raises(ValueError, match="2 label key"):
        RWMapd(["a", "b"], num_classes=4, output_key="rw_map")


def test_errors_name_the_file(tmp_path):
    label = make_label()
    label[0, 0, 0] = 9
    path = tmp_path / "bad_label.nii.gz"
    nib.save(nib.Nifti1Image(label, np.eye(4)), path)
    with pytest.raises(RuntimeError) as info:  # MONAI wraps transform errors
        Compose([*load(("label",)), RRWMapd(num_classes=4)])({"label": str(path)})
    assert "bad_label.nii.gz" in str(info.value.__cause__) and "[0, 3]" in str(info.value.__cause__)
    with pytest.raises(ValueError, match=r"channel-first label of shape \(1, H, W\)"):
        RRWMapd(num_classes=4)({"label": np.zeros((2, 5, 5), dtype=int)})
    with pytest.raises(ValueError, match="needs a MetaTensor"):
        RRWMapd(num_classes=4, spacing_from_affine=True)({"label": np.zeros((1, 5, 5), dtype=int)})
    with pytest.raises(ValueError, match="map_type"):
        RWMapd(num_classes=4, map_type="signed")
    with pytest.raises(ValueError, match="not both"):
        RWMapd(num_classes=4, spacing=SPACING, spacing_from_affine=True)


@pytest.mark.parametrize("dataset_type", ["cache", "persistent"])
def test_2d_slices_of_a_3d_map_in_cached_pipelines(nifti_case, tmp_path, dataset_type):
    """Map on the 3D label (cached), then random 2D slices: the slice of the map is the slice of the 3D map."""
    paths, label = nifti_case
    keys = ["image", "label", "rw_map"]
    deterministic = [*load(), RRWMapd(num_classes=4, spacing_from_affine=True)]
    random_slice = [RandSpatialCropd(keys, roi_size=(-1, -1, 1), random_size=False), SqueezeDimd(keys, dim=-1)]
    transform = Compose(deterministic + random_slice).set_random_state(seed=0)
    if dataset_type == "cache":
        dataset = CacheDataset([paths] * 3, transform, progress=False)
    else:
        dataset = PersistentDataset([paths] * 3, transform, cache_dir=tmp_path / "cache")
    full_map = rrw_map(label, 4, spacing=SPACING)
    seen = set()
    for batch in DataLoader(dataset, batch_size=3, num_workers=0):
        assert batch["rw_map"].shape == (3, 4, *label.shape[:2])
        for image, rw_map in zip(batch["image"], batch["rw_map"], strict=True):
            z = int(image[0, 0, 0])
            seen.add(z)
            np.testing.assert_allclose(rw_map.numpy(), full_map[..., z], atol=1e-6)
    assert seen


def test_map_on_the_2d_patch_option(nifti_case):
    paths, label = nifti_case
    keys = ["image", "label"]
    pipeline = Compose(
        [
            *load(),
            RandSpatialCropd(keys, roi_size=(-1, -1, 1), random_size=False),
            SqueezeDimd(keys, dim=-1),
            RRWMapd(num_classes=4, spacing_from_affine=True),
        ]
    ).set_random_state(seed=1)
    out = pipeline(paths)
    z = int(out["image"][0, 0, 0])
    np.testing.assert_allclose(out["rw_map"].numpy(), rrw_map(label[..., z], 4, spacing=SPACING[:2]), atol=1e-6)


@pytest.mark.parametrize("dataset_type", ["cache", "persistent"])
def test_compact_map_before_the_slice_crop_in_cached_pipelines(nifti_case, tmp_path, dataset_type):
    """Compact (1, H, W, D) map cached once, sliced with the label: each slice is the slice of the compact 3D map."""
    paths, label = nifti_case
    keys = ["image", "label", "rw_map"]
    deterministic = [*load(), RRWMapd(num_classes=4, spacing_from_affine=True, compact=True)]
    random_slice = [RandSpatialCropd(keys, roi_size=(-1, -1, 1), random_size=False), SqueezeDimd(keys, dim=-1)]
    transform = Compose(deterministic + random_slice).set_random_state(seed=0)
    if dataset_type == "cache":
        dataset = CacheDataset([paths] * 2, transform, progress=False)
        cached = dataset._cache[0]["rw_map"]
        assert cached.shape == (1, *label.shape) and cached.dtype == torch.float32
    else:
        dataset = PersistentDataset([paths] * 2, transform, cache_dir=tmp_path / "cache")
    full_map = rrw_map(label, 4, spacing=SPACING, compact=True)
    for batch in DataLoader(dataset, batch_size=2, num_workers=0):
        assert batch["rw_map"].shape == (2, 1, *label.shape[:2])
        for image, rw_map in zip(batch["image"], batch["rw_map"], strict=True):
            np.testing.assert_allclose(rw_map[0].numpy(), full_map[..., int(image[0, 0, 0])], atol=1e-6)


def test_compact_maps_metadata_and_errors(nifti_case):
    paths, label = nifti_case
    out = Compose([*load(), RRWMapd(num_classes=4, spacing_from_affine=True, compact=True)])(paths)
    assert isinstance(out["rw_map"], MetaTensor) and out["rw_map"].meta["filename_or_obj"] == paths["label"]
    np.testing.assert_allclose(out["rw_map"].affine.numpy(), out["label"].affine.numpy())
    with pytest.raises(ValueError, match="no compact form"):  # its own-class value is 0, which marks padding
        ActiveContourMapd(num_classes=4, compact=True)
    with pytest.raises(ValueError, match="no compact form"):
        active_contour_map(label, 4, compact=True)
    with pytest.raises(ValueError, match="'boundary' has no compact form"):
        RWMapd(num_classes=4, map_type="boundary", compact=True)
    with pytest.raises(ValueError, match=r"give them to the loss instead: RegionWiseLoss\(compact=True"):
        RRWMapd(num_classes=4, class_weights=(1.0, 3.0, 1.0, 1.0), compact=True)
