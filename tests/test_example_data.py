"""scripts/fetch_examples.py without network: fake registry files built here, pins monkeypatched to their sha256."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common import files
from common.data import example_data
from common.data.example_conversion import ExampleDataError, label_grid_to, read_nrrd

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))
import fetch_examples  # noqa: E402

LESION_SHAPE = (6, 5, 4)
LESION_SLICES = (1, 2)  # z with lesion in every fake pyradiomics case
LESION_LICENCE = b"fake pyradiomics licence\n"


def nifti_gz(array: np.ndarray, affine: np.ndarray) -> bytes:
    return gzip.compress(nib.Nifti1Image(array, affine).to_bytes())


def nrrd_bytes(array: np.ndarray, spacing=(0.5, 0.5, 2.0), origin=(10.0, -20.0, 30.0), encoding="gzip") -> bytes:
    types = {np.dtype("int16"): "short", np.dtype("uint8"): "uchar"}
    body = array.tobytes(order="F")  # x fastest
    header = [
        "NRRD0004",
        "# written by the test",
        f"type: {types[array.dtype]}",
        "dimension: 3",
        "space: left-posterior-superior",
        f"sizes: {' '.join(map(str, array.shape))}",
        "space directions: "
        + " ".join(f"({','.join(str(s if i == a else 0) for i in range(3))})" for a, s in enumerate(spacing)),
        "kinds: domain domain domain",
        "endian: little",
        f"encoding: {encoding}",
        f"space origin: ({','.join(map(str, origin))})",
        "note:=key/value pair, ignored",
    ]
    return ("\n".join(header) + "\n\n").encode() + (gzip.compress(body) if encoding == "gzip" else body)


def tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def fake_pyradiomics_sdist() -> bytes:
    members = {"pyradiomics-3.0.1/LICENSE.txt": LESION_LICENCE, "pyradiomics-3.0.1/setup.py": b"import numpy\n"}
    for index, case in enumerate(example_data.conversion.PYRADIOMICS_CASES):
        image = (np.arange(np.prod(LESION_SHAPE)).reshape(LESION_SHAPE) + 100 * index).astype(np.int16)
        label = np.zeros(LESION_SHAPE, np.uint8)
        label[1:3, 2:4, LESION_SLICES[0] : LESION_SLICES[-1] + 1] = 255  # 2 x 2 x 2 voxels, value 255 -> 1
        members[f"pyradiomics-3.0.1/data/{case}_image.nrrd"] = nrrd_bytes(image)
        members[f"pyradiomics-3.0.1/data/{case}_label.nrrd"] = nrrd_bytes(label, encoding="raw")
    return tar_gz(members)


def pin(monkeypatch: pytest.MonkeyPatch, name: str, data: bytes) -> example_data.Source:
    """Pin source ``name`` to the sha256 and size of ``data`` (the fake file)."""
    source = replace(example_data.SOURCES[name], sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    monkeypatch.setitem(example_data.SOURCES, name, source)
    return source


class CountingDownloader:
    """Stands in for download_source: writes the given bytes as the pinned file, or raises."""

    def __init__(self, data: bytes | None = None, error: str = ""):
        self.data, self.error, self.calls = data, error, []

    def __call__(self, source: example_data.Source, destination: Path) -> None:
        self.calls.append(source.name)
        if self.error:
            raise ExampleDataError(f"{source.label}: {self.error}")
        (destination / source.filename).write_bytes(self.data)


@pytest.fixture
def pyradiomics_fake(monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, CountingDownloader]:
    data = fake_pyradiomics_sdist()
    pin(monkeypatch, "pyradiomics", data)
    downloader = CountingDownloader(data)
    monkeypatch.setattr(example_data, "download_source", downloader)
    return data, downloader


LESION_DATASETS = ["lesion_pyradiomics", "lesion2d_pyradiomics"]


def test_read_nrrd_gives_ras_affine_and_xyz_array():
    array = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    decoded, affine = read_nrrd(nrrd_bytes(array))
    assert decoded.shape == (2, 3, 4) and decoded.dtype == np.int16
    assert np.array_equal(decoded, array)
    assert np.allclose(affine, [[-0.5, 0, 0, -10], [0, -0.5, 0, 20], [0, 0, 2, 30], [0, 0, 0, 1]])  # LPS -> RAS
    with pytest.raises(ExampleDataError, match="attached header"):
        read_nrrd(b"P5 not an nrrd")


def test_lesion_datasets_are_written_in_msd_layout(tmp_path, pyradiomics_fake):
    out = tmp_path / "examples"
    assert example_data.fetch_examples(out, LESION_DATASETS, log=lambda line: None) == []
    assert pyradiomics_fake[1].calls == ["pyradiomics"]
    assert (tmp_path / "examples" / ".cache" / "pypi" / "pyradiomics-3.0.1.tar.gz").read_bytes() == pyradiomics_fake[0]
    description = json.loads((out / "lesion_pyradiomics" / "dataset.json").read_text())
    assert description["labels"] == {"0": "background", "1": "lesion"}
    assert description["numTraining"] == 5 and description["tensorImageSize"] == "3D"
    assert [entry["modality"] for entry in description["training"]] == ["MRI", "MRI", "MRI", "CT", "CT"]
    for entry in description["training"]:
        image, label = (nib.load(out / "lesion_pyradiomics" / entry[key]) for key in ("image", "label"))
        assert image.shape == label.shape == LESION_SHAPE and image.get_data_dtype() == np.int16
        assert np.allclose(label.affine, image.affine) and np.allclose(image.header.get_zooms(), (0.5, 0.5, 2.0))
        values, counts = np.unique(np.asanyarray(label.dataobj), return_counts=True)
        assert values.tolist() == [0, 1] and counts.tolist() == [112, 8]
    assert (out / "lesion_pyradiomics" / "LICENSE").read_bytes() == LESION_LICENCE
    description_2d = json.loads((out / "lesion2d_pyradiomics" / "dataset.json").read_text())
    assert description_2d["numTraining"] == 5 * len(LESION_SLICES) and description_2d["tensorImageSize"] == "2D"
    first = nib.load(out / "lesion2d_pyradiomics" / "imagesTr" / "brain1_z001.nii.gz")
    assert first.shape == LESION_SHAPE[:2] and first.affine[2, 3] == pytest.approx(32.0)  # slice 1 at z = 30 + 2
    rows = [line.split("\t") for line in (out / "summary.tsv").read_text().splitlines()]
    assert rows[0] == list(example_data.SUMMARY_COLUMNS) and len(rows) == 1 + 5 + 10
    fractions = ["0.0667", "6.67e-02", "6.67e-02"]  # 8 of 120 voxels
    assert rows[1] == ["lesion_pyradiomics", "brain1", "MRI", "6x5x4", "0.5x0.5x2", "int16", "1", "1", *fractions]
    assert rows[6][:5] == ["lesion2d_pyradiomics", "brain1_z001", "MRI", "6x5", "0.5x0.5"] and rows[6][8] == "0.1333"


def test_rerun_reuses_verified_cache_and_keeps_complete_datasets(tmp_path, pyradiomics_fake):
    out, logged = tmp_path / "examples", []
    example_data.fetch_examples(out, LESION_DATASETS, log=logged.append)
    label = out / "lesion_pyradiomics" / "labelsTr" / "lung1.nii.gz"
    written = label.stat().st_mtime_ns
    logged.clear()
    assert example_data.fetch_examples(out, LESION_DATASETS, log=logged.append) == []
    assert pyradiomics_fake[1].calls == ["pyradiomics"]  # downloaded once, in the first run
    assert logged[:2] == ["lesion_pyradiomics: complete, kept", "lesion2d_pyradiomics: complete, kept"]
    assert label.stat().st_mtime_ns == written
    label.write_bytes(label.read_bytes()[:-10])  # a truncated file makes the dataset incomplete
    example_data.fetch_examples(out, LESION_DATASETS, log=logged.append)
    assert pyradiomics_fake[1].calls == ["pyradiomics"]  # rewritten from the verified cache, no download
    assert nib.load(label).shape == LESION_SHAPE
    example_data.fetch_examples(out, ["lesion_pyradiomics"], force=True, log=logged.append)
    assert label.stat().st_mtime_ns != written and logged[-2].startswith("lesion_pyradiomics: 5 case(s)")


def test_cached_file_with_other_hash_is_refused_and_set_aside(tmp_path, pyradiomics_fake):
    data, downloader = pyradiomics_fake
    cached = tmp_path / "cache" / "pypi" / "pyradiomics-3.0.1.tar.gz"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(data + b"tampered")
    failures = example_data.fetch_examples(tmp_path / "out", ["lesion_pyradiomics"], tmp_path / "cache", log=print)
    bad_hash = hashlib.sha256(data + b"tampered").hexdigest()
    assert len(failures) == 1 and str(cached) in failures[0]
    assert bad_hash in failures[0] and example_data.SOURCES["pyradiomics"].sha256 in failures[0]
    assert not cached.exists() and cached.with_name(cached.name + ".rejected").read_bytes() == data + b"tampered"
    assert downloader.calls == [] and not (tmp_path / "out" / "lesion_pyradiomics").exists()
    assert example_data.fetch_examples(tmp_path / "out", ["lesion_pyradiomics"], tmp_path / "cache", log=print) == []
    assert downloader.calls == ["pyradiomics"] and cached.read_bytes() == data


def test_downloaded_file_with_other_hash_is_not_used(tmp_path, monkeypatch):
    pin(monkeypatch, "pyradiomics", fake_pyradiomics_sdist())
    monkeypatch.setattr(example_data, "download_source", CountingDownloader(b"something else"))
    failures = example_data.fetch_examples(tmp_path, ["lesion_pyradiomics"], log=print)
    assert "expected " + example_data.SOURCES["pyradiomics"].sha256 in failures[0]
    assert not (tmp_path / ".cache" / "pypi" / "pyradiomics-3.0.1.tar.gz").exists()
    assert not (tmp_path / "lesion_pyradiomics" / "dataset.json").exists()


def test_archive_without_an_expected_member_fails_that_dataset_only(tmp_path, monkeypatch):
    with tarfile.open(fileobj=io.BytesIO(fake_pyradiomics_sdist())) as tar:
        kept = {m.name: tar.extractfile(m).read() for m in tar if "lung2_label" not in m.name}
    sdist = tar_gz(kept)
    pin(monkeypatch, "pyradiomics", sdist)
    monkeypatch.setattr(example_data, "download_source", CountingDownloader(sdist))
    assert example_data.fetch_examples(tmp_path, ["lesion_pyradiomics"], log=print) == [
        "lesion_pyradiomics: archive member 'data/lung2_label.nrrd' missing"
    ]
    assert not (tmp_path / "lesion_pyradiomics" / example_data.MARKER_NAME).exists()


def test_offline_run_exits_2_with_one_line_naming_the_source(tmp_path, monkeypatch, capsys):
    pip_offline = (
        "WARNING: Retrying ... Failed to establish a new connection: [Errno -3] Temporary failure in name resolution\n"
        "ERROR: Could not find a version that satisfies the requirement pyradiomics==3.0.1 (from versions: none)\n"
    )
    commands = []

    def offline_run(command, **kwargs):
        commands.append(command)
        return subprocess.CompletedProcess(command, 1, "", pip_offline)

    monkeypatch.setattr(example_data.subprocess, "run", offline_run)
    assert fetch_examples.main.__module__ == "common.data.example_data"
    assert example_data.main([str(tmp_path), "--only", "lesion_pyradiomics,lesion2d_pyradiomics"]) == 2
    captured = capsys.readouterr()
    last_line = captured.err.strip().splitlines()[-1]
    assert last_line.startswith("error: 2 dataset(s) not written; first: lesion_pyradiomics: pyradiomics==3.0.1")
    assert "(from versions: none) (no network or registry unreachable?)" in last_line
    assert "Traceback" not in captured.out + captured.err
    assert len(commands) == 1 and "--no-build-isolation" in commands[0]  # network failure: no helper venv, no retry
    assert not (tmp_path / "lesion_pyradiomics").exists() and (tmp_path / "summary.tsv").read_text().count("\n") == 1


def test_missing_apt_get_and_stale_package_lists_are_explained(tmp_path, monkeypatch):
    source = example_data.SOURCES["mricron-data"]

    def no_apt(command, **kwargs):
        raise FileNotFoundError(command[0])

    monkeypatch.setattr(example_data.subprocess, "run", no_apt)
    with pytest.raises(ExampleDataError, match=r"mricron-data 1\.2\.20211006\+dfsg-4 \(Debian package\): apt-get not"):
        example_data.download_source(source, tmp_path)
    stale = "E: Can't select candidate version from package mricron-data as it has no candidate\n"
    monkeypatch.setattr(example_data.subprocess, "run", lambda c, **k: subprocess.CompletedProcess(c, 100, "", stale))
    with pytest.raises(ExampleDataError, match="run `sudo apt-get update`"):
        example_data.download_source(source, tmp_path)


def test_pyradiomics_download_falls_back_to_a_helper_venv(tmp_path, monkeypatch):
    commands = []

    def record(command, source, what, cwd, environment):
        commands.append(command)
        assert environment["TMPDIR"].startswith(str(tmp_path))  # pip's temporary files stay in the cache
        if len(commands) == 1:
            raise ExampleDataError("pyradiomics==3.0.1: No module named 'setuptools'")

    monkeypatch.setattr(example_data, "run_client", record)
    example_data.download_source(example_data.SOURCES["pyradiomics"], tmp_path)
    assert commands[0][:5] == [sys.executable, "-m", "pip", "download", "--no-build-isolation"]
    assert commands[1] == [sys.executable, "-m", "venv", str(tmp_path / ".pip-helper")]
    assert commands[2][-3:] == ["numpy", "setuptools<72", "wheel"]
    assert (
        commands[3][0] == str(tmp_path / ".pip-helper" / "bin" / "python") and commands[3][-1] == "pyradiomics==3.0.1"
    )
    assert {"--no-deps", "--no-binary"} <= set(commands[3]) and not (tmp_path / ".pip-helper").exists()


def test_atomic_write_keeps_the_old_file_when_the_move_fails(tmp_path, monkeypatch):
    target = tmp_path / "dataset.json"
    files.write_bytes_atomic(b"old", target)

    def failing_replace(source, destination):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        files.write_bytes_atomic(b"new", target)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["dataset.json"]


def ar_archive(members: dict[str, bytes]) -> bytes:
    archive = b"!<arch>\n"
    for name, data in members.items():
        archive += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode() + data
        archive += b"\n" if len(data) % 2 else b""
    return archive


def test_colin27_from_a_fake_deb(tmp_path, monkeypatch):
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    atlas = np.zeros((5, 6, 4), np.uint8)
    atlas[1:3, 1:3, 1:3], atlas[3, 4, 2] = 1, 2
    files = {
        "ch2.nii.gz": nifti_gz(np.full((5, 6, 4), 70, np.uint8), affine),
        "aal.nii.gz": nifti_gz(atlas, affine),
        "aal.nii.txt": b"1 Precentral_L 2001\n2 Precentral_R 2002\n",
    }
    tar_buffer = io.BytesIO()
    with tarfile.open(fileobj=tar_buffer, mode="w:xz") as tar:
        contents = {f"./usr/share/mricron/templates/{k}": v for k, v in files.items()}
        contents["./usr/share/doc/mricron-data/copyright"] = b"BSD-3-Clause\n"
        for name, data in contents.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    deb = ar_archive({"debian-binary": b"2.0\n", "control.tar.xz": b"x", "data.tar.xz": tar_buffer.getvalue()})
    pin(monkeypatch, "mricron-data", deb)
    monkeypatch.setattr(example_data, "download_source", CountingDownloader(deb))
    assert example_data.fetch_examples(tmp_path, ["brain_colin27_aal"], log=print) == []
    description = json.loads((tmp_path / "brain_colin27_aal" / "dataset.json").read_text())
    assert description["labels"] == {"0": "background", "1": "Precentral_L", "2": "Precentral_R"}
    assert "label_ids" not in description and description["modality"] == {"0": "MRI-T1"}
    label = nib.load(tmp_path / "brain_colin27_aal" / "labelsTr" / "colin27.nii.gz")
    assert np.array_equal(np.asanyarray(label.dataobj), atlas) and np.allclose(label.affine, affine)
    assert (tmp_path / "brain_colin27_aal" / "LICENSE").read_bytes() == b"BSD-3-Clause\n"
    assert (tmp_path / ".cache" / "debian" / "mricron-data_1.2.20211006+dfsg-4_all.deb").is_file()


def test_cat12_atlas_from_a_fake_wheel_is_renumbered_and_resampled(tmp_path, monkeypatch):
    atlas_affine = np.array([[-1.0, 0, 0, 2.5], [0, 1, 0, -2.5], [0, 0, 1, -2.5], [0, 0, 0, 1]])
    template_affine = np.diag([0.5, 0.5, 0.5, 1.0])
    template_affine[:3, 3] = -5.0
    atlas = np.zeros((6, 6, 6), np.uint8)
    atlas[:3], atlas[3:, :2] = 2, 7  # sparse source ids
    templates = "deepmriprep/data/templates"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        wheel.writestr(
            f"{templates}/Template_05mm_bet.nii.gz", nifti_gz(np.full((21, 21, 21), 100, np.uint8), template_affine)
        )
        wheel.writestr(f"{templates}/ibsr.nii.gz", nifti_gz(atlas, atlas_affine))
        wheel.writestr(f"{templates}/ibsr.csv", "ROIid;ROIabbr;ROIname\n2;lWM;Left WM\n7;rWM;Right WM\n")
        wheel.writestr("deepmriprep-0.3.0.dist-info/LICENSE", "MIT\n")
    pin(monkeypatch, "deepmriprep", buffer.getvalue())
    monkeypatch.setattr(example_data, "download_source", CountingDownloader(buffer.getvalue()))
    assert example_data.fetch_examples(tmp_path, ["brain_cat12_ibsr"], log=print) == []
    description = json.loads((tmp_path / "brain_cat12_ibsr" / "dataset.json").read_text())
    assert description["labels"] == {"0": "background", "1": "Left WM", "2": "Right WM"}
    assert description["label_ids"] == {"1": 2, "2": 7}
    label = np.asanyarray(nib.load(tmp_path / "brain_cat12_ibsr" / "labelsTr" / "cat12_template_ibsr.nii.gz").dataobj)
    assert np.array_equal(label, np.where(atlas == 2, 1, np.where(atlas == 7, 2, 0)))
    image = nib.load(tmp_path / "brain_cat12_ibsr" / "imagesTr" / "cat12_template_ibsr.nii.gz")
    assert image.get_data_dtype() == np.float32 and np.allclose(image.get_fdata(), 100.0)  # inside the template
    assert (tmp_path / "brain_cat12_ibsr" / "LICENSE").read_text() == "MIT\n"


def test_mr_totalseg_reads_the_class_map_without_running_it(tmp_path, monkeypatch):
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    segmentation = np.zeros((4, 4, 3), np.uint8)
    segmentation[0], segmentation[2] = 3, 9
    class_map = 'raise SystemExit("must not run")\nclass_map = {"total_mr": {3: "kidney_left", 9: "liver"}}\n'
    top = "totalsegmentator-2.18.0"
    sdist = tar_gz(
        {
            f"{top}/totalsegmentator/map_to_binary.py": class_map.encode(),
            f"{top}/tests/reference_files/example_mr_sm.nii.gz": nifti_gz(np.ones((4, 4, 3), np.int16), affine),
            f"{top}/tests/reference_files/example_seg_mr.nii.gz": nifti_gz(segmentation, affine),
            f"{top}/LICENSE": b"Apache-2.0\n",
        }
    )
    pin(monkeypatch, "totalsegmentator", sdist)
    monkeypatch.setattr(example_data, "download_source", CountingDownloader(sdist))
    assert example_data.fetch_examples(tmp_path, ["mr_totalseg"], log=print) == []
    description = json.loads((tmp_path / "mr_totalseg" / "dataset.json").read_text())
    assert description["labels"] == {"0": "background", "1": "kidney_left", "2": "liver"}
    assert description["label_ids"] == {"1": 3, "2": 9}
    label = np.asanyarray(nib.load(tmp_path / "mr_totalseg" / "labelsTr" / "ts_mr_abdomen.nii.gz").dataobj)
    assert label[0].max() == 1 and label[2].max() == 2 and label[1].max() == 0 and label.dtype == np.uint8


def test_label_grid_to_embeds_cropped_and_flipped_masks_exactly():
    full_affine = np.diag([1.5, 1.5, 1.5, 1.0])
    crop = np.arange(1, 28, dtype=np.uint8).reshape(3, 3, 3)
    crop_affine = full_affine.copy()
    crop_affine[:3, 3] = np.array([2, 3, 4]) * 1.5
    embedded = label_grid_to(crop, crop_affine, (8, 8, 8), full_affine)
    assert np.array_equal(embedded[2:5, 3:6, 4:7], crop) and embedded.sum() == crop.sum()
    flipped_affine = np.diag([-1.5, 1.5, 1.5, 1.0])
    flipped_affine[0, 3] = 7 * 1.5
    assert np.array_equal(label_grid_to(embedded[::-1], flipped_affine, (8, 8, 8), full_affine), embedded)
    shifted = crop_affine.copy()
    shifted[0, 3] += 0.75  # half a voxel: would need interpolation
    with pytest.raises(ExampleDataError, match="does not share voxels"):
        label_grid_to(crop, shifted, (8, 8, 8), full_affine)


def test_command_line_lists_and_checks_dataset_names(capsys):
    assert example_data.main(["--list"]) == 0
    listing = capsys.readouterr().out
    for name in example_data.DATASETS:
        assert name in listing
    assert "pyradiomics==3.0.1 (PyPI sdist)" in listing and "Apache-2.0" in listing
    with pytest.raises(SystemExit) as exit_info:
        example_data.main(["/tmp/never-written", "--only", "brain_colin27_aal,no_such_set"])
    assert exit_info.value.code == 2 and "unknown dataset(s) no_such_set" in capsys.readouterr().err
    canonical_order = ["brain_colin27_aal", "lesion2d_pyradiomics"]
    assert example_data.dataset_names("lesion2d_pyradiomics, brain_colin27_aal") == canonical_order


def test_script_help_and_refusal_of_a_bad_cached_file(tmp_path):
    script = REPO_ROOT / "scripts" / "fetch_examples.py"
    help_text = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--only DATASET,..." in help_text and "sha256" in help_text and "apt-get update" in help_text
    cached = tmp_path / "cache" / "pypi" / "pyradiomics-3.0.1.tar.gz"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not the sdist")
    command = [sys.executable, str(script), str(tmp_path / "out"), "--cache", str(tmp_path / "cache")]
    result = subprocess.run([*command, "--only", "lesion_pyradiomics"], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: 1 dataset(s) not written; first: lesion_pyradiomics: pyradiomics==3.0.1")
    assert (
        hashlib.sha256(b"not the sdist").hexdigest() in last_line and "pyradiomics-3.0.1.tar.gz.rejected" in last_line
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["summary.tsv"]  # cache elsewhere: nothing else
