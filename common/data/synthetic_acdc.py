"""A synthetic ACDC 2017 release: tiny cardiac phantoms in the release's exact folder layout.

The tests and the demo cannot download any of the papers' data sets, so this module draws tiny phantoms with
the same label conventions and writes them the way the release is laid out, so that ``scripts/prepare_acdc.py``
runs unchanged on them (:mod:`common.data.synthetic_releases` does the same for BraTS, KiTS19 and MSD).

ACDC17 (``write_acdc_dataset``)::

    <root>/training/patientNNN/Info.cfg
    <root>/training/patientNNN/patientNNN_4d.nii.gz           (optional, cine series)
    <root>/training/patientNNN/patientNNN_frameXX.nii.gz      (ED and ES frames)
    <root>/training/patientNNN/patientNNN_frameXX_gt.nii.gz   (0 background, 1 RV, 2 myocardium, 3 LV)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.data.nifti import save_nifti

ACDC_GROUPS = ("NOR", "MINF", "DCM", "HCM", "RV")


ACDC_LABELS = {0: "background", 1: "RV", 2: "myocardium", 3: "LV"}


def _disc(grid_x: np.ndarray, grid_y: np.ndarray, center: Sequence[float], radius: float) -> np.ndarray:
    return (grid_x - center[0]) ** 2 + (grid_y - center[1]) ** 2 <= radius**2


@dataclass(frozen=True)
class HeartGeometry:
    """Random but plausible short-axis heart of one subject (sizes in mm, position in voxels)."""

    center: tuple[float, float]
    lv_radius_ed: float
    myocardium_thickness: float
    rv_radius: float
    rv_angle: float
    ejection_fraction: float


def _random_heart(rng: np.random.Generator, shape: Sequence[int]) -> HeartGeometry:
    margin = 0.3
    center = tuple(float(rng.uniform(margin, 1 - margin) * n) for n in shape[:2])
    return HeartGeometry(
        center=center,
        lv_radius_ed=float(rng.uniform(18.0, 26.0)),
        myocardium_thickness=float(rng.uniform(6.0, 11.0)),
        rv_radius=float(rng.uniform(16.0, 24.0)),
        rv_angle=float(rng.uniform(0.0, 2 * np.pi)),
        ejection_fraction=float(rng.uniform(0.3, 0.6)),
    )


def acdc_label_volume(
    heart: HeartGeometry, shape: Sequence[int], spacing: Sequence[float], systole: float
) -> np.ndarray:
    """Draw the label volume of one cardiac phase.

    Args:
        heart: subject geometry.
        shape: volume shape (X, Y, Z), Z along the long axis from base to apex.
        spacing: voxel size in mm.
        systole: 0 at end diastole, 1 at end systole; the LV cavity shrinks and the wall thickens.

    Returns:
        uint8 labels with the ACDC convention (1 RV, 2 myocardium, 3 LV).
    """
    grid_x, grid_y = np.meshgrid(
        np.arange(shape[0], dtype=np.float32) * spacing[0],
        np.arange(shape[1], dtype=np.float32) * spacing[1],
        indexing="ij",
    )
    center_mm = (heart.center[0] * spacing[0], heart.center[1] * spacing[1])
    lv_radius = heart.lv_radius_ed * np.sqrt(1.0 - heart.ejection_fraction * systole)
    thickness = heart.myocardium_thickness * (1.0 + 0.4 * systole)
    labels = np.zeros(tuple(shape), dtype=np.uint8)
    for z in range(shape[2]):
        # the ventricles taper towards the apex; the apical slices hold only a myocardium cap
        taper = np.sqrt(max(1.0 - (z / max(shape[2], 1)) ** 2, 0.05))
        outer = (lv_radius + thickness) * taper
        inner = lv_radius * taper - 0.5 * thickness * (z == shape[2] - 1)
        rv_offset = lv_radius * taper + thickness
        rv_center = (
            center_mm[0] + rv_offset * np.cos(heart.rv_angle),
            center_mm[1] + rv_offset * np.sin(heart.rv_angle),
        )
        slice_labels = labels[:, :, z]
        slice_labels[_disc(grid_x, grid_y, rv_center, heart.rv_radius * taper * (1 - 0.3 * systole))] = 1
        slice_labels[_disc(grid_x, grid_y, center_mm, outer)] = 2
        if inner > 0:
            slice_labels[_disc(grid_x, grid_y, center_mm, inner)] = 3
    return labels


def acdc_image_volume(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Render a cine-MRI-like int16 image from labels: bright blood pools, dark muscle, textured body, noise."""
    body_x, body_y = np.meshgrid(
        np.linspace(-1, 1, labels.shape[0]), np.linspace(-1, 1, labels.shape[1]), indexing="ij"
    )
    body = ((body_x / 0.95) ** 2 + (body_y / 0.85) ** 2 <= 1.0)[..., None]
    tissue_intensity = np.array([0.0, 0.85, 0.3, 0.9], dtype=np.float32)
    image = np.where(body, 0.45, 0.02).astype(np.float32)
    image = np.where(labels > 0, tissue_intensity[labels], image)
    bias = 1.0 + 0.2 * body_x[..., None] * rng.uniform(-1, 1) + 0.2 * body_y[..., None] * rng.uniform(-1, 1)
    image = image * bias + rng.normal(0.0, 0.06, size=labels.shape).astype(np.float32)
    return np.clip(image * 400.0, 0, None).astype(np.int16)


def _acdc_affine(spacing: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = rng.uniform(-150.0, 150.0, size=3)
    return affine


def write_acdc_subject(
    subject_dir: str | os.PathLike,
    subject_id: int,
    rng: np.random.Generator,
    shape: Sequence[int] = (64, 64, 6),
    spacing: Sequence[float] = (1.6, 1.6, 10.0),
    num_frames: int = 6,
    with_cine: bool = False,
) -> list[Path]:
    """Write one ACDC subject folder (``Info.cfg``, ED/ES frames with ``_gt`` labels, optional 4D cine).

    Args:
        subject_dir: the ``patientNNN`` folder to create.
        subject_id: NNN.
        rng: random generator (the caller seeds it).
        shape: volume shape (X, Y, Z).
        spacing: voxel size in mm.
        num_frames: frames of the cardiac cycle (``NbFrame``); ED is frame 1, ES a later frame.
        with_cine: also write ``patientNNN_4d.nii.gz`` holding every frame.

    Returns:
        The files written.
    """
    if num_frames < 2:
        raise ValueError(f"num_frames must be at least 2 (ED and ES), got {num_frames}")
    subject_dir = Path(subject_dir)
    name = f"patient{subject_id:03d}"
    heart = _random_heart(rng, shape)
    affine = _acdc_affine(spacing, rng)
    es_frame = int(rng.integers(2, num_frames + 1))
    written = []
    frames = []
    for frame in range(1, num_frames + 1):
        # systole rises from ED (frame 1) to ES, then relaxes back towards the end of the cycle
        if frame <= es_frame:
            phase = (frame - 1) / (es_frame - 1)
        else:
            phase = (num_frames - frame + 1) / (num_frames - es_frame + 1)
        labels = acdc_label_volume(heart, shape, spacing, systole=phase)
        image = acdc_image_volume(labels, rng)
        frames.append(image)
        if frame in (1, es_frame):
            written.append(save_nifti(image, affine, subject_dir / f"{name}_frame{frame:02d}.nii.gz"))
            written.append(save_nifti(labels, affine, subject_dir / f"{name}_frame{frame:02d}_gt.nii.gz"))
    if with_cine:
        written.append(save_nifti(np.stack(frames, axis=-1), affine, subject_dir / f"{name}_4d.nii.gz"))
    info = {
        "ED": 1,
        "ES": es_frame,
        "Group": ACDC_GROUPS[subject_id % len(ACDC_GROUPS)],
        "Height": round(float(rng.uniform(150, 195)), 1),
        "NbFrame": num_frames,
        "Weight": round(float(rng.uniform(50, 110)), 1),
    }
    info_path = subject_dir / "Info.cfg"
    info_path.write_text("".join(f"{key}: {value}\n" for key, value in info.items()))
    written.append(info_path)
    return written


def write_acdc_dataset(
    root: str | os.PathLike,
    num_subjects: int = 4,
    seed: int = 0,
    shape: Sequence[int] = (64, 64, 6),
    spacing: Sequence[float] = (1.6, 1.6, 10.0),
    num_frames: int = 6,
    with_cine: bool = False,
) -> Path:
    """Write a synthetic ACDC17 release (``<root>/training/patientNNN/...``) with subjects 1..``num_subjects``.

    Args:
        root: release folder; created if missing. Existing subject folders are refused, never overwritten.
        num_subjects: number of subjects; the groups cycle through the five ACDC pathology groups.
        seed: seed of the generator; the same seed gives the same volumes.
        shape: volume shape (X, Y, Z) of every frame.
        spacing: voxel size in mm.
        num_frames: frames of the cardiac cycle.
        with_cine: also write the 4D cine series of every subject.

    Returns:
        The ``training`` folder.

    Raises:
        FileExistsError: a subject folder already exists under ``root``.
    """
    training_dir = Path(root) / "training"
    rng = np.random.default_rng(seed)
    for subject_id in range(1, num_subjects + 1):
        subject_dir = training_dir / f"patient{subject_id:03d}"
        if subject_dir.exists():
            raise FileExistsError(f"{subject_dir}: already exists; choose an empty folder for synthetic data")
        write_acdc_subject(subject_dir, subject_id, rng, shape, spacing, num_frames, with_cine)
    return training_dir
