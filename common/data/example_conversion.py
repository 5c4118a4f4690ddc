"""Conversion of the files inside the pinned example-data packages into labelled volumes (see common.data.example_data).

Each ``build_*`` function takes the archive members that :mod:`common.data.example_data` read from the verified
downloads (``{source name: {member path: bytes}}``, member paths without the sdist's top folder or the .deb's
``./``) and returns a :class:`DatasetContent`: the cases (image, label, RAS affine) and the dataset.json texts.
Nothing here downloads or writes files.

Readers: NIfTI through nibabel, the TotalSegmentator DICOM example through pydicom (installed into the cache by
common.data.example_data) and pyradiomics' NRRD files through :func:`read_nrrd`, a small reader of the one NRRD flavour
those files use (attached header, raw or gzip data, 3D scalar, LPS or RAS space) because pynrrd is not a project
dependency. Grids are changed with nibabel.processing (scipy) only: linear interpolation for the CAT12 template,
nearest neighbour for label maps, which is checked to be an exact voxel re-indexing.
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass

import nibabel as nib
import nibabel.processing
import numpy as np

Members = Mapping[str, Mapping[str, bytes]]

MRICRON_TEMPLATES = "usr/share/mricron/templates"
CAT12_TEMPLATES = "deepmriprep/data/templates"
TOTALSEG_FILES = "tests/reference_files"
TOTALSEG_CLASS_MAP = "totalsegmentator/map_to_binary.py"
PYRADIOMICS_DATA = "data"
PYRADIOMICS_CASES = {"brain1": "MRI", "brain2": "MRI", "breast1": "MRI", "lung1": "CT", "lung2": "CT"}
TOTALSEG_REFERENCE = "Wasserthal et al., Radiology: AI 2023"
TOTALSEG_LICENCE = "Apache-2.0 (TotalSegmentator package)"
PYRADIOMICS_LICENCE = "BSD-3-Clause (pyradiomics)"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
NRRD_TYPES = {
    "char": "i1", "signed char": "i1", "int8": "i1", "int8_t": "i1",
    "uchar": "u1", "unsigned char": "u1", "uint8": "u1", "uint8_t": "u1",
    "short": "i2", "short int": "i2", "signed short": "i2", "signed short int": "i2", "int16": "i2", "int16_t": "i2",
    "ushort": "u2", "unsigned short": "u2", "unsigned short int": "u2", "uint16": "u2", "uint16_t": "u2",
    "int": "i4", "signed int": "i4", "int32": "i4", "int32_t": "i4",
    "uint": "u4", "unsigned int": "u4", "uint32": "u4", "uint32_t": "u4",
    "float": "f4", "double": "f8",
}  # fmt: skip


class ExampleDataError(Exception):
    """A user-facing problem (download, verification, unreadable source): reported as one line, exit status 2."""


@dataclass
class Case:
    """One image/label pair on the same voxel grid."""

    case_id: str
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    modality: str | None = None


@dataclass
class DatasetContent:
    """The cases of one example dataset and the texts of its dataset.json.

    ``labels`` maps the written label values (0 = background) to names; ``label_ids`` maps written values back to
    the source's values when they were renumbered to ``1..n``.
    """

    description: str
    modality: str
    labels: dict[int, str]
    cases: list[Case]
    source: str
    licence: str
    reference: str = ""
    label_ids: dict[int, int] | None = None


def nifti_array(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Decode a (gzipped) NIfTI file held in memory into its scaled array (trailing unit axes dropped) and affine."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    image_class = nib.Nifti2Image if int.from_bytes(data[:4], "little") == 540 else nib.Nifti1Image
    image = image_class.from_bytes(data)
    array = np.asanyarray(image.dataobj)
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return array, image.affine


def read_nrrd(data: bytes, name: str = "NRRD file") -> tuple[np.ndarray, np.ndarray]:
    """Decode a 3D scalar NRRD file with an attached header into its array (x, y, z) and RAS affine.

    Raises:
        ExampleDataError: a feature outside that flavour (detached data, other encodings, non-spatial axes).
    """
    header_end = data.find(b"\n\n")
    if not data.startswith(b"NRRD") or header_end < 0:
        raise ExampleDataError(f"{name}: not an NRRD file with an attached header")
    fields: dict[str, str] = {}
    for line in data[:header_end].decode("latin-1").splitlines()[1:]:
        if line.startswith("#") or ":=" in line or ":" not in line:
            continue  # comments and key/value pairs
        key, value = line.split(":", 1)
        fields[key.strip().lower()] = value.strip()
    unsupported = [key for key in ("data file", "datafile") if key in fields]
    if unsupported or fields.get("encoding", "raw") not in ("raw", "gzip", "gz") or fields.get("dimension") != "3":
        raise ExampleDataError(f"{name}: only 3D NRRD files with attached raw or gzip data are supported")
    if fields.get("type", "").lower() not in NRRD_TYPES:
        raise ExampleDataError(f"{name}: unsupported NRRD type {fields.get('type')!r}")
    body = data[header_end + 2 :]
    if fields.get("encoding") in ("gzip", "gz"):
        body = gzip.decompress(body)
    dtype = np.dtype(NRRD_TYPES[fields["type"].lower()]).newbyteorder(">" if fields.get("endian") == "big" else "<")
    sizes = [int(size) for size in fields["sizes"].split()]
    array = np.frombuffer(body, dtype=dtype, count=int(np.prod(sizes))).reshape(sizes[::-1]).T
    directions = re.findall(r"\(([^)]*)\)", fields.get("space directions", ""))
    origin = re.findall(r"\(([^)]*)\)", fields.get("space origin", ""))
    if len(directions) != 3 or len(origin) != 1:
        raise ExampleDataError(f"{name}: needs three spatial 'space directions' and a 'space origin'")
    affine = np.eye(4)
    affine[:3, :3] = np.array([[float(value) for value in vector.split(",")] for vector in directions]).T
    affine[:3, 3] = [float(value) for value in origin[0].split(",")]
    space = fields.get("space", "").lower()
    if space in ("left-posterior-superior", "lps"):
        affine = LPS_TO_RAS @ affine
    elif space not in ("right-anterior-superior", "ras"):
        raise ExampleDataError(f"{name}: unsupported NRRD space {space!r}")
    return np.ascontiguousarray(array.astype(array.dtype.newbyteorder("="))), affine


def renumber_labels(label: np.ndarray, label_ids: list[int]) -> np.ndarray:
    """Map the sorted source values ``label_ids`` to ``1..len(label_ids)``; 0 and unlisted values become 0."""
    lookup = np.zeros(max(int(label.max()), max(label_ids)) + 1, np.uint16)
    lookup[label_ids] = np.arange(1, len(label_ids) + 1)
    return lookup[label.astype(np.int64)]


def label_grid_to(label: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], target: np.ndarray) -> np.ndarray:
    """Put a label map onto another grid that shares its voxels (flipped, permuted or cropped); outside is 0.

    Raises:
        ExampleDataError: the grids do not share voxel centres (that would need interpolation).
    """
    if label.shape == tuple(shape) and np.allclose(affine, target, atol=1e-4):
        return label
    voxel_map = np.linalg.inv(target) @ affine
    if not (
        np.allclose(voxel_map, np.rint(voxel_map), atol=1e-2)
        and np.allclose(np.abs(np.rint(voxel_map[:3, :3])).sum(0), 1)
    ):
        raise ExampleDataError(f"label grid {label.shape} does not share voxels with {tuple(shape)}")
    source = nib.Nifti1Image(label.astype(np.int16), affine)
    moved = nibabel.processing.resample_from_to(source, (tuple(shape), target), order=0, mode="constant", cval=0)
    return np.asarray(moved.dataobj).astype(label.dtype)


def build_colin27_aal(members: Members) -> DatasetContent:
    """Colin27 (ch2) T1 with the AAL parcellation from Debian mricron-data."""
    files = members["mricron-data"]
    image, affine = nifti_array(files[f"{MRICRON_TEMPLATES}/ch2.nii.gz"])
    label, label_affine = nifti_array(files[f"{MRICRON_TEMPLATES}/aal.nii.gz"])
    if image.shape != label.shape or not np.allclose(affine, label_affine):
        raise ExampleDataError("mricron-data: ch2 and aal are not on the same grid")
    names = {0: "background"}
    for line in files[f"{MRICRON_TEMPLATES}/aal.nii.txt"].decode().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    if not {int(value) for value in np.unique(label)} <= set(names):
        raise ExampleDataError("mricron-data: AAL label without a name in aal.nii.txt")
    return DatasetContent(
        "Colin27 single-subject T1 MRI (average of 27 scans of one person, 1 mm) with the AAL parcellation "
        "(116 regions, manually delineated on this brain)",
        "MRI-T1",
        names,
        [Case("colin27", image.astype(np.int16), label, affine)],
        "Debian package mricron-data 1.2.20211006+dfsg-4 (/usr/share/mricron/templates/ch2.nii.gz, aal.nii.gz)",
        "Debian main, BSD-3-clause (per debian/copyright); AAL: Tzourio-Mazoyer 2002 (cite)",
        "Tzourio-Mazoyer et al., NeuroImage 2002; Holmes et al., JCAT 1998",
    )


def build_cat12_atlas(members: Members, atlas: str, atlas_description: str) -> DatasetContent:
    """CAT12 T1 template (linearly resampled onto the atlas grid) with one of deepmriprep's label atlases."""
    files = members["deepmriprep"]
    template, template_affine = nifti_array(files[f"{CAT12_TEMPLATES}/Template_05mm_bet.nii.gz"])
    label, affine = nifti_array(files[f"{CAT12_TEMPLATES}/{atlas}.nii.gz"])
    rows = csv.DictReader(io.StringIO(files[f"{CAT12_TEMPLATES}/{atlas}.csv"].decode()), delimiter=";")
    id_to_name = {int(row["ROIid"]): row["ROIname"] for row in rows}
    label_ids = sorted(int(value) for value in np.unique(label) if value > 0)
    names = {0: "background"} | {index: id_to_name.get(value, f"id{value}") for index, value in enumerate(label_ids, 1)}
    template_image = nib.Nifti1Image(template.astype(np.float32), template_affine)
    image = nibabel.processing.resample_from_to(template_image, (label.shape, affine), order=1, mode="constant")
    return DatasetContent(
        f"CAT12 IXI555 population-average T1 template (skull-stripped, resampled 0.5->1 mm with linear "
        f"interpolation) with the {atlas_description}; labels remapped to 1..{len(label_ids)} (original ids in "
        '"label_ids")',
        "MRI-T1",
        names,
        [
            Case(
                f"cat12_template_{atlas}",
                np.asarray(image.dataobj, np.float32),
                renumber_labels(label, label_ids),
                affine,
            )
        ],
        "PyPI deepmriprep==0.3.0 wheel (deepmriprep/data/templates/)",
        "deepmriprep MIT; CAT12 templates/atlases: see CAT12 (atlas-specific academic licences)",
        label_ids=dict(enumerate(label_ids, 1)),
    )


def build_cat12_ibsr(members: Members) -> DatasetContent:
    """CAT12 template with the IBSR 32-structure atlas."""
    return build_cat12_atlas(
        members,
        "ibsr",
        "IBSR FreeSurfer-style 32-structure atlas (cortex, WM, ventricles, thalamus, caudate, putamen, pallidum, "
        "hippocampus, amygdala, ...)",
    )


def build_cat12_neuromorphometrics(members: Members) -> DatasetContent:
    """CAT12 template with the neuromorphometrics 134-region atlas."""
    return build_cat12_atlas(members, "neuromorphometrics", "Neuromorphometrics 134-region atlas (MICCAI 2012 labels)")


def totalseg_class_map(members: Members, task: str) -> dict[int, str]:
    """The ``class_map[task]`` dict literal of TotalSegmentator's map_to_binary.py, read without running it."""
    tree = ast.parse(members["totalsegmentator"][TOTALSEG_CLASS_MAP])
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(target, "id", "") == "class_map" for target in node.targets):
            return ast.literal_eval(node.value)[task]
    raise ExampleDataError("totalsegmentator: map_to_binary.py has no class_map")


def read_dicom_series(files: Mapping[str, bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Stack single-frame DICOM slices (sorted along the slice normal) into a volume (i, j, k) and RAS affine.

    Raises:
        ExampleDataError: pydicom or a Pillow >= 10 with JPEG 2000 support is missing.
    """
    try:
        import PIL
        import pydicom
    except ImportError as error:
        raise ExampleDataError(f"reading the DICOM example needs pydicom and Pillow>=10: {error}") from None
    if int(PIL.__version__.split(".")[0]) < 10:
        raise ExampleDataError(f"the DICOM example is JPEG 2000: pydicom needs Pillow>=10, found {PIL.__version__}")
    slices = [pydicom.dcmread(io.BytesIO(data)) for data in files.values()]
    orientation = np.array(slices[0].ImageOrientationPatient, float)
    normal = np.cross(orientation[:3], orientation[3:])
    slices.sort(key=lambda dataset: float(np.dot(normal, np.array(dataset.ImagePositionPatient, float))))
    volume = np.stack(
        [s.pixel_array.astype(np.float32) * float(s.RescaleSlope) + float(s.RescaleIntercept) for s in slices], -1
    ).transpose(1, 0, 2)  # (rows, columns, slices) -> (columns, rows, slices)
    row_spacing, column_spacing = (float(value) for value in slices[0].PixelSpacing)
    first, last = (np.array(s.ImagePositionPatient, float) for s in (slices[0], slices[-1]))
    lps = np.eye(4)
    lps[:3, 0] = orientation[:3] * column_spacing
    lps[:3, 1] = orientation[3:] * row_spacing
    lps[:3, 2] = (last - first) / max(len(slices) - 1, 1)
    lps[:3, 3] = first
    return volume, LPS_TO_RAS @ lps


def build_ct_totalseg(members: Members) -> DatasetContent:
    """Two TotalSegmentator CT examples (NIfTI 3 mm and a DICOM series) with the union of "total" classes."""
    files = members["totalsegmentator"]
    image, affine = nifti_array(files[f"{TOTALSEG_FILES}/example_ct.nii.gz"])
    label, label_affine = nifti_array(files[f"{TOTALSEG_FILES}/example_seg_fast_force_split.nii.gz"])
    cases = [
        Case(
            "ts_ct_abdomen_3mm", image.astype(np.int16), label_grid_to(label, label_affine, image.shape, affine), affine
        )
    ]
    dicom_prefix = f"{TOTALSEG_FILES}/example_ct_dicom/"
    volume, volume_affine = read_dicom_series({k: v for k, v in files.items() if k.startswith(dicom_prefix)})
    label, label_affine = nifti_array(files[f"{TOTALSEG_FILES}/example_seg_dicom.nii.gz"])
    label = label_grid_to(label, label_affine, volume.shape, volume_affine)
    cases.append(Case("ts_ct_thorax_abdomen_dicom", np.rint(volume).astype(np.int16), label, volume_affine))
    label_ids = sorted({int(value) for case in cases for value in np.unique(case.label) if value > 0})
    class_map = totalseg_class_map(members, "total")
    for case in cases:
        case.label = renumber_labels(case.label, label_ids)
    return DatasetContent(
        "2 real CT scans (different subjects/series) from the TotalSegmentator test reference files; labels are "
        "TotalSegmentator v2 model outputs (fast 3 mm model / normal model), not manual annotations. Labels = union "
        f'of TotalSegmentator "total" classes present, remapped to 1..{len(label_ids)} (original ids in "label_ids")',
        "CT",
        {0: "background"} | {index: class_map[value] for index, value in enumerate(label_ids, 1)},
        cases,
        "PyPI totalsegmentator==2.18.0 sdist (tests/reference_files/example_ct.nii.gz, "
        "example_seg_fast_force_split.nii.gz, example_ct_dicom/, example_seg_dicom.nii.gz)",
        TOTALSEG_LICENCE,
        TOTALSEG_REFERENCE,
        dict(enumerate(label_ids, 1)),
    )


def build_mr_totalseg(members: Members) -> DatasetContent:
    """The TotalSegmentator abdominal MR example with its total_mr classes."""
    files = members["totalsegmentator"]
    image, affine = nifti_array(files[f"{TOTALSEG_FILES}/example_mr_sm.nii.gz"])
    label, label_affine = nifti_array(files[f"{TOTALSEG_FILES}/example_seg_mr.nii.gz"])
    label = label_grid_to(label, label_affine, image.shape, affine)
    label_ids = sorted(int(value) for value in np.unique(label) if value > 0)
    class_map = totalseg_class_map(members, "total_mr")
    return DatasetContent(
        f"Real abdominal MR (3 mm, 20 slices) with TotalSegmentator total_mr model output ({len(label_ids)} classes "
        f'incl. kidneys, liver, spleen), remapped to 1..{len(label_ids)} (original ids in "label_ids")',
        "MRI",
        {0: "background"} | {index: class_map[value] for index, value in enumerate(label_ids, 1)},
        [Case("ts_mr_abdomen", image.astype(np.int16), renumber_labels(label, label_ids), affine)],
        "PyPI totalsegmentator==2.18.0 sdist (tests/reference_files/example_mr_sm.nii.gz, example_seg_mr.nii.gz)",
        TOTALSEG_LICENCE,
        TOTALSEG_REFERENCE,
        dict(enumerate(label_ids, 1)),
    )


HEART_VESSEL_PARTS = (
    ("heart", "pulmonary_report/models/heart.nii.gz"),
    ("aorta", "aorta_report/test_result/models/aorta.nii.gz"),
    ("pulmonary_artery", "pulmonary_report/models/pulmonary_artery.nii.gz"),
    ("brachiocephalic_trunk", "aorta_report/test_result/models/brachiocephalic_trunk.nii.gz"),
    ("subclavian_artery_left", "aorta_report/test_result/models/subclavian_artery_left.nii.gz"),
    ("common_carotid_artery_left", "aorta_report/test_result/models/common_carotid_artery_left.nii.gz"),
    ("vertebrae_T12", "aorta_report/test_result/models/vertebrae_T12.nii.gz"),
)


def build_ct_heart_vessels_totalseg(members: Members) -> DatasetContent:
    """The 1.5 mm chest CT of TotalSegmentator's report tests with heart, great vessels and T12 on the full grid."""
    files = members["totalsegmentator"]
    image, affine = nifti_array(files[f"{TOTALSEG_FILES}/aorta_report/example_ct.nii.gz"])
    label = np.zeros(image.shape, np.uint8)
    for value, (_, path) in enumerate(HEART_VESSEL_PARTS, 1):
        mask, mask_affine = nifti_array(files[f"{TOTALSEG_FILES}/{path}"])
        mask = label_grid_to((mask > 0).astype(np.uint8), mask_affine, image.shape, affine)
        label[(mask > 0) & (label == 0)] = value  # earlier (larger) structures win overlaps
    return DatasetContent(
        "Real CT (1.5 mm) with heart, aorta, pulmonary artery, supra-aortic branches and T12 from TotalSegmentator "
        "aorta/pulmonary report test outputs (model outputs; cropped masks re-embedded into the full grid)",
        "CT",
        {0: "background"} | {value: name for value, (name, _) in enumerate(HEART_VESSEL_PARTS, 1)},
        [Case("ts_ct_chest_1p5mm", image.astype(np.int16), label, affine)],
        "PyPI totalsegmentator==2.18.0 sdist (tests/reference_files/aorta_report, pulmonary_report)",
        TOTALSEG_LICENCE,
        TOTALSEG_REFERENCE,
    )


def pyradiomics_cases(members: Members) -> list[Case]:
    """The five pyradiomics test patients with their binary lesion masks."""
    files = members["pyradiomics"]
    cases = []
    for case_id, modality in PYRADIOMICS_CASES.items():
        image, affine = read_nrrd(files[f"{PYRADIOMICS_DATA}/{case_id}_image.nrrd"], f"{case_id}_image.nrrd")
        label, label_affine = read_nrrd(files[f"{PYRADIOMICS_DATA}/{case_id}_label.nrrd"], f"{case_id}_label.nrrd")
        if image.shape != label.shape or not np.allclose(affine, label_affine, atol=1e-4):
            raise ExampleDataError(f"pyradiomics: {case_id} image and label are not on the same grid")
        cases.append(Case(case_id, image.astype(np.int16), (label > 0).astype(np.uint8), affine, modality))
    return cases


def build_lesion_pyradiomics(members: Members) -> DatasetContent:
    """The five pyradiomics lesion cases as 3D volumes."""
    return DatasetContent(
        "5 real patients (brain MR x2, breast MR x1, lung CT x2) with one manually delineated lesion each (binary); "
        'lesions span only 3-11 slices. Per-case modality in "training[*].modality"',
        "MRI/CT (mixed)",
        {0: "background", 1: "lesion"},
        pyradiomics_cases(members),
        "PyPI pyradiomics==3.0.1 sdist (data/*_image.nrrd, *_label.nrrd)",
        PYRADIOMICS_LICENCE,
        "van Griethuysen et al., Cancer Research 2017",
    )


def build_lesion2d_pyradiomics(members: Members) -> DatasetContent:
    """Every axial slice with lesion of the pyradiomics cases as a 2D case (affine moved to the slice)."""
    slices = []
    for case in pyradiomics_cases(members):
        for z in np.flatnonzero(case.label.any(axis=(0, 1))):
            affine = case.affine.copy()
            affine[:3, 3] = (case.affine @ np.array([0, 0, z, 1]))[:3]
            slices.append(
                Case(f"{case.case_id}_z{z:03d}", case.image[:, :, z], case.label[:, :, z], affine, case.modality)
            )
    return DatasetContent(
        "axial 2D slices (with lesion) of lesion_pyradiomics",
        "MRI/CT (mixed)",
        {0: "background", 1: "lesion"},
        slices,
        "PyPI pyradiomics==3.0.1 sdist",
        PYRADIOMICS_LICENCE,
        "van Griethuysen et al., Cancer Research 2017",
    )
