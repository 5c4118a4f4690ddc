"""Tiny fake BraTS, KiTS19 and MSD releases in the exact folder layouts that :mod:`common.data.releases` reads.

Each volume holds one lesion drawn as concentric ellipsoids (outer label first), so every label value of the
release is present in every case, inside a background of noise. Files are written with
:func:`common.data.nifti.save_nifti` (atomic, qform and sform set); the same seed gives the same release.

BraTS 2017/2018 (``write_fake_brats``): ``<root>/{HGG,LGG}/<subject>/<subject>_{t1,t1ce,t2,flair,seg}.nii.gz``,
labels 2 (oedema) around 4 (enhancing) around 1 (necrotic core), skull-stripped (zero outside the brain).

KiTS19 (``write_fake_kits19``): ``<root>/case_XXXXX/imaging.nii.gz`` and ``segmentation.nii.gz`` (1 kidney around
2 tumour), arrays ordered (slice, row, column) with the release's permuted affine; unlabelled test cases have
only ``imaging.nii.gz``.

MSD (``write_fake_msd``): ``<root>/dataset.json``, ``imagesTr/``, ``labelsTr/`` and ``imagesTs/``; images are 4D
with the modality last when several modalities are given.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.data.nifti import save_nifti
from common.data.releases import BRATS_GRADES, BRATS_MODALITIES, NIFTI_SUFFIX
from common.files import write_json_atomic

MIN_AXIS = 8
# tumour labels outer to inner: oedema, enhancing rim, necrotic core
BRATS_LESION = (2, 4, 1)
# mean intensity per modality of (healthy brain, oedema, enhancing, necrosis) in arbitrary MR units
BRATS_INTENSITY = {
    "t1": (0.55, 0.45, 0.5, 0.25),
    "t1ce": (0.55, 0.45, 0.95, 0.2),
    "t2": (0.4, 0.8, 0.6, 0.95),
    "flair": (0.45, 0.95, 0.7, 0.5),
}
# Hounsfield units of (soft tissue, kidney, tumour)
KITS19_HU = (40.0, 180.0, 90.0)


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    if len(shape) != 3 or min(shape) < MIN_AXIS:
        raise ValueError(f"shape must have 3 axes of at least {MIN_AXIS} voxels, got {tuple(shape)}")
    return (int(shape[0]), int(shape[1]), int(shape[2]))


def _ellipsoid_distance(shape: Sequence[int], center: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    """Normalised distance to ``center``: 1 on the surface of the ellipsoid with semi-axes ``radii`` (voxels)."""
    grid = np.indices(shape, dtype=np.float32)
    return np.sqrt(sum(((grid[axis] - center[axis]) / radii[axis]) ** 2 for axis in range(len(shape))))


def lesion_labels(shape: Sequence[int], rng: np.random.Generator, values_outer_to_inner: Sequence[int]) -> np.ndarray:
    """Draw one lesion as concentric ellipsoidal shells at a random place, background 0 elsewhere.

    Semi-axes are at least 3 voxels and the centre is a voxel about one semi-axis or more from the border, so every
    shell holds voxels and the corners stay background.

    Args:
        shape: volume shape, every axis at least 8 voxels.
        rng: random generator.
        values_outer_to_inner: label value of each shell, from the outside in (at most 3 shells).

    Returns:
        uint8 labels.
    """
    shape = _check_shape(shape)
    if not 1 <= len(values_outer_to_inner) <= 3:
        raise ValueError(f"between 1 and 3 shells can be drawn, got {len(values_outer_to_inner)}")
    radii = np.maximum(3.0, rng.uniform(0.25, 0.35, size=3) * np.asarray(shape))
    center = np.round(rng.uniform(radii, np.asarray(shape) - 1 - radii))
    distance = _ellipsoid_distance(shape, center, radii)
    labels = np.zeros(shape, dtype=np.uint8)
    for shell, value in enumerate(values_outer_to_inner):
        labels[distance <= 1.0 - shell / len(values_outer_to_inner)] = value
    return labels


def render_image(
    labels: np.ndarray, means: dict[int, float], rng: np.random.Generator, noise: float = 0.05
) -> np.ndarray:
    """Paint each label with its mean intensity and add Gaussian noise (float32)."""
    image = np.zeros(labels.shape, dtype=np.float32)
    for value, mean in means.items():
        image[labels == value] = mean
    return image + rng.normal(0.0, noise, size=labels.shape).astype(np.float32)


def _refuse_existing(path: Path) -> None:
    if path.exists():
        raise FileExistsError(f"{path}: already exists; choose an empty folder for a fake release")


def write_fake_brats(
    root: str | os.PathLike,
    n_subjects: int = 4,
    shape: Sequence[int] = (16, 16, 8),
    seed: int = 0,
    prefix: str = "Brats18",
) -> Path:
    """Write a fake BraTS training release; subjects alternate between HGG and LGG.

    Args:
        root: release folder (created); existing subject folders are refused, never overwritten.
        n_subjects: number of subjects.
        shape: volume shape, every axis at least 8 voxels (1 mm isotropic).
        seed: seed of the generator.
        prefix: subject name prefix, ``Brats18`` or ``Brats17``.

    Returns:
        ``root``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    for index in range(n_subjects):
        grade = BRATS_GRADES[index % len(BRATS_GRADES)]
        subject = f"{prefix}_FAKE_{index + 1:03d}_1"
        subject_dir = root / grade / subject
        _refuse_existing(subject_dir)
        labels = lesion_labels(shape, rng, BRATS_LESION)
        half_extent = np.asarray(labels.shape) / 2
        brain = (_ellipsoid_distance(labels.shape, half_extent - 0.5, half_extent) <= 1) | (labels > 0)
        for modality in BRATS_MODALITIES:
            means = dict(zip((0, *BRATS_LESION), BRATS_INTENSITY[modality], strict=True))
            image = np.where(brain, render_image(labels, means, rng), 0.0)
            save_nifti((image * 1000).astype(np.int16), affine, subject_dir / f"{subject}_{modality}{NIFTI_SUFFIX}")
        save_nifti(labels, affine, subject_dir / f"{subject}_seg{NIFTI_SUFFIX}")
    return root


def write_fake_kits19(
    root: str | os.PathLike,
    n_cases: int = 4,
    shape: Sequence[int] = (8, 16, 16),
    seed: int = 0,
    n_unlabelled: int = 0,
) -> Path:
    """Write a fake KiTS19 ``data`` folder: labelled cases first, then unlabelled test cases.

    Args:
        root: the ``data`` folder (created); existing case folders are refused.
        n_cases: number of labelled cases (``case_00000`` onwards).
        shape: array shape (slices, rows, columns) as stored by KiTS19, every axis at least 8 voxels.
        seed: seed of the generator.
        n_unlabelled: number of following cases written without ``segmentation.nii.gz``.

    Returns:
        ``root``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    # KiTS19 stores axial slices along the first array axis: (slice, row, column) -> (-z, -y, -x) in mm
    affine = np.array([[0.0, 0.0, -0.8, 0.0], [0.0, -0.8, 0.0, 0.0], [-3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    for index in range(n_cases + n_unlabelled):
        case_dir = root / f"case_{index:05d}"
        _refuse_existing(case_dir)
        labels = lesion_labels(shape, rng, (1, 2))
        image = render_image(labels, dict(enumerate(KITS19_HU)), rng, noise=20.0)
        save_nifti(image.astype(np.int16), affine, case_dir / f"imaging{NIFTI_SUFFIX}")
        if index < n_cases:
            save_nifti(labels, affine, case_dir / f"segmentation{NIFTI_SUFFIX}")
    return root


def write_fake_msd(
    root: str | os.PathLike,
    n_cases: int = 4,
    shape: Sequence[int] = (16, 16, 8),
    seed: int = 0,
    modalities: Sequence[str] = ("CT",),
    label_names: Sequence[str] = ("background", "aorta"),
    n_test: int = 0,
    name: str = "FakeTask",
) -> Path:
    """Write a fake Medical Segmentation Decathlon task folder with its ``dataset.json``.

    Args:
        root: task folder (created); an existing ``dataset.json`` is refused.
        n_cases: number of labelled training cases.
        shape: spatial shape, every axis at least 8 voxels.
        seed: seed of the generator.
        modalities: image channels; several make 4D images with the channel last.
        label_names: class names of labels 0, 1, ... (2 to 4 classes).
        n_test: number of unlabelled images in ``imagesTs``.
        name: task name in ``dataset.json``; also the file name prefix in lower case.

    Returns:
        ``root``.
    """
    if not 2 <= len(label_names) <= 4:
        raise ValueError(f"label_names must name 2 to 4 classes, got {len(label_names)}")
    root = Path(root)
    _refuse_existing(root / "dataset.json")
    rng = np.random.default_rng(seed)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    means = rng.uniform(0.0, 1.0, size=(len(modalities), len(label_names)))
    stem = name.lower()
    training = []
    for index in range(n_cases + n_test):
        labels = lesion_labels(shape, rng, range(1, len(label_names)))
        channels = [render_image(labels, dict(enumerate(channel_means)), rng) for channel_means in means]
        image = channels[0] if len(channels) == 1 else np.stack(channels, axis=-1)
        file_name = f"{stem}_{index + 1:03d}{NIFTI_SUFFIX}"
        if index < n_cases:
            save_nifti(image, affine, root / "imagesTr" / file_name)
            save_nifti(labels, affine, root / "labelsTr" / file_name)
            training.append({"image": f"./imagesTr/{file_name}", "label": f"./labelsTr/{file_name}"})
        else:
            save_nifti(image, affine, root / "imagesTs" / file_name)
    description = {
        "name": name,
        "description": "fake data written by common.data.synthetic_releases",
        "tensorImageSize": "4D" if len(modalities) > 1 else "3D",
        "modality": {str(index): modality for index, modality in enumerate(modalities)},
        "labels": {str(index): label for index, label in enumerate(label_names)},
        "numTraining": n_cases,
        "numTest": n_test,
        "training": training,
        "test": [f"./imagesTs/{stem}_{index + 1:03d}{NIFTI_SUFFIX}" for index in range(n_cases, n_cases + n_test)],
    }
    write_json_atomic(description, root / "dataset.json")
    return root
