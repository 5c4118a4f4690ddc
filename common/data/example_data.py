"""Real labelled example volumes fetched from package registries (pinned by version and sha256) as MSD-style folders.

Sources (downloaded with the ordinary clients, ``python -m pip download`` and ``apt-get download``, never
installed; each file is checked against the sha256 below before it is read):

    Debian  mricron-data 1.2.20211006+dfsg-4   Colin27 (ch2) T1 + AAL atlas (116 labels)
    PyPI    totalsegmentator==2.18.0 sdist      tests/reference_files: CT/MR with TotalSegmentator labels
    PyPI    pyradiomics==3.0.1 sdist            data/: 5 real lesion cases (NRRD)
    PyPI    deepmriprep==0.3.0 wheel            CAT12 T1 template + IBSR (32) / neuromorphometrics (134) atlases
    PyPI    pydicom==3.0.2 wheel                reader for the TotalSegmentator DICOM example, unpacked into the
                                                cache (CACHE/pylib) and imported from there; never installed

Output (``OUT_DIR``): ``<dataset>/imagesTr/<case>.nii.gz``, ``labelsTr/<case>.nii.gz``, ``dataset.json`` and the
source's licence as ``LICENSE``; ``summary.tsv`` with one row per case of every complete dataset in OUT_DIR. The
download cache defaults to ``OUT_DIR/.cache``. Files are written to a temporary name in their folder and moved into
place, and a dataset's ``.complete.json`` (written last) marks it complete: a later run skips it unless ``force``.
A cached file with another sha256 is renamed ``<file>.rejected`` and refused; the next run downloads it again.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from common.data import example_conversion as conversion
from common.data.example_conversion import DatasetContent, ExampleDataError, Members
from common.files import write_bytes_atomic

MARKER_NAME = ".complete.json"
MARKER_FORMAT = 1
NETWORK_HINT = " (no network or registry unreachable?)"
SUMMARY_COLUMNS = (
    "dataset", "case", "modality", "shape", "spacing_mm", "dtype", "n_label_classes", "n_present", "fg_fraction",
    "min_label_fraction", "max_label_fraction",
)  # fmt: skip


@dataclass(frozen=True)
class Source:
    """One pinned file of a package registry.

    Attributes:
        name: package name.
        version: pinned version.
        kind: ``sdist`` or ``wheel`` (PyPI, ``pip download``) or ``deb`` (Debian, ``apt-get download``).
        filename: the downloaded file's name.
        sha256: its pinned hex digest.
        size: its size in bytes (for ``--list``).
        licence: short licence statement.
        licence_member: archive member copied as each dataset's ``LICENSE``.
        build_requirements: packages that pip needs to prepare an sdist's metadata when it cannot build it in an
            isolated environment (pyradiomics' setup.py imports numpy).
    """

    name: str
    version: str
    kind: str
    filename: str
    sha256: str
    size: int
    licence: str
    licence_member: str = ""
    build_requirements: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """``name==version (registry kind)`` for messages."""
        if self.kind == "deb":
            return f"{self.name} {self.version} (Debian package)"
        return f"{self.name}=={self.version} (PyPI {self.kind})"

    @property
    def cache_folder(self) -> str:
        """Sub-folder of the cache holding the file."""
        return "debian" if self.kind == "deb" else "pypi"


SOURCES = {
    source.name: source
    for source in (
        Source(
            "mricron-data", "1.2.20211006+dfsg-4", "deb", "mricron-data_1.2.20211006+dfsg-4_all.deb",
            "d40aa0ed66cf89bf6cafa049ad3884703c9d975c2ee2737525b7196528df9d6f", 16122652,
            "BSD-3-Clause per debian/copyright; AAL atlas: cite Tzourio-Mazoyer 2002, no commercial use",
            "usr/share/doc/mricron-data/copyright",
        ),
        Source(
            "totalsegmentator", "2.18.0", "sdist", "totalsegmentator-2.18.0.tar.gz",
            "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03", 38049988, "Apache-2.0", "LICENSE",
        ),
        Source(
            "pyradiomics", "3.0.1", "sdist", "pyradiomics-3.0.1.tar.gz",
            "47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5", 34473030, "BSD-3-Clause",
            "LICENSE.txt", ("numpy", "setuptools<72", "wheel"),
        ),
        Source(
            "deepmriprep", "0.3.0", "wheel", "deepmriprep-0.3.0-py3-none-any.whl",
            "00cfaab3e4e1744e7d3844cdad1b096af2c06edbae73d683facc9435b835b8bd", 17842165,
            "MIT (deepmriprep); CAT12 atlases: academic licences, neuromorphometrics no commercial use",
            "deepmriprep-0.3.0.dist-info/LICENSE",
        ),
        Source(
            "pydicom", "3.0.2", "wheel", "pydicom-3.0.2-py3-none-any.whl",
            "abf971a5440f84dbaf42c4b6758e30e62480902584f8b270b9a5d146e278a07b", 2376822, "MIT",
        ),
    )
}  # fmt: skip


@dataclass(frozen=True)
class DatasetSpec:
    """One output dataset: the archive members it reads, its builder and the source whose licence it carries."""

    name: str
    members: dict[str, tuple[str, ...]]
    build: Callable[[Members], DatasetContent]
    licence_source: str
    libraries: tuple[str, ...] = ()

    @property
    def sources(self) -> list[Source]:
        """The pinned files this dataset needs."""
        return [SOURCES[name] for name in (*self.members, *self.libraries)]


TOTALSEG_MEMBERS = {"totalsegmentator": (f"{conversion.TOTALSEG_FILES}/", conversion.TOTALSEG_CLASS_MAP)}
PYRADIOMICS_MEMBERS = {"pyradiomics": (f"{conversion.PYRADIOMICS_DATA}/",)}
CAT12_MEMBERS = {"deepmriprep": (f"{conversion.CAT12_TEMPLATES}/",)}
DATASETS = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "brain_colin27_aal", {"mricron-data": (f"{conversion.MRICRON_TEMPLATES}/",)}, conversion.build_colin27_aal,
            "mricron-data",
        ),
        DatasetSpec("brain_cat12_ibsr", CAT12_MEMBERS, conversion.build_cat12_ibsr, "deepmriprep"),
        DatasetSpec(
            "brain_cat12_neuromorphometrics", CAT12_MEMBERS, conversion.build_cat12_neuromorphometrics, "deepmriprep"
        ),
        DatasetSpec("ct_totalseg", TOTALSEG_MEMBERS, conversion.build_ct_totalseg, "totalsegmentator", ("pydicom",)),
        DatasetSpec("mr_totalseg", TOTALSEG_MEMBERS, conversion.build_mr_totalseg, "totalsegmentator"),
        DatasetSpec(
            "ct_heart_vessels_totalseg",
            TOTALSEG_MEMBERS,
            conversion.build_ct_heart_vessels_totalseg,
            "totalsegmentator",
        ),
        DatasetSpec("lesion_pyradiomics", PYRADIOMICS_MEMBERS, conversion.build_lesion_pyradiomics, "pyradiomics"),
        DatasetSpec("lesion2d_pyradiomics", PYRADIOMICS_MEMBERS, conversion.build_lesion2d_pyradiomics, "pyradiomics"),
    )
}  # fmt: skip
# size of each written dataset folder (measured), for --list
OUTPUT_MEGABYTES = {
    "brain_colin27_aal": 4.3, "brain_cat12_ibsr": 2.6, "brain_cat12_neuromorphometrics": 2.6, "ct_totalseg": 6.3,
    "mr_totalseg": 0.3, "ct_heart_vessels_totalseg": 10.0, "lesion_pyradiomics": 33.0, "lesion2d_pyradiomics": 4.9,
}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------- files
def nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """Gzipped NIfTI-1 bytes (qform and sform = affine, millimetres; gzip mtime 0, so reruns give the same bytes)."""
    image = nib.Nifti1Image(np.ascontiguousarray(array), affine)
    image.set_qform(affine, 1)
    image.set_sform(affine, 1)
    image.header.set_xyzt_units("mm")
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------------ downloads
def short_reason(output: str) -> str:
    """The most telling line of a client's output (its last error line), with a hint for network failures."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("ERROR", "E:"))] or lines or ["no output"]
    reason, lowered = errors[-1], output.lower()
    network_words = ("resolv", "connection", "network", "unreachable", "timed out", "from versions: none")
    if any(word in lowered for word in network_words):
        reason += NETWORK_HINT
    if any(words in lowered for words in ("unable to locate package", "can't select", "was not found")):
        reason += " -- the package lists lack this version: run `sudo apt-get update` and retry (not done here)"
    return reason


def run_client(command: Sequence[str], source: Source, what: str, cwd: Path, environment: dict[str, str]) -> None:
    """Run a download client; a failure becomes an :class:`ExampleDataError` naming the source and the problem."""
    try:
        result = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise ExampleDataError(
            f"{source.label}: {command[0]} not found; put {source.filename} (sha256 {source.sha256}) into the cache "
            "yourself or leave its datasets out with --only"
        ) from None
    if result.returncode != 0:
        raise ExampleDataError(f"{source.label}: {what} failed: {short_reason(result.stdout + result.stderr)}")


def pip_download_command(source: Source, python: str, destination: Path, isolated: bool = True) -> list[str]:
    """``python -m pip download`` of exactly the pinned sdist or wheel, without dependencies or pip's cache."""
    binary_option = "--no-binary" if source.kind == "sdist" else "--only-binary"
    command = [python, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--disable-pip-version-check"]
    command += [binary_option, source.name, "-d", str(destination), f"{source.name}=={source.version}"]
    return command if isolated else [*command[:4], "--no-build-isolation", *command[4:]]


def download_source(source: Source, destination: Path) -> None:
    """Download the pinned file of ``source`` into the empty folder ``destination`` with the registry's client.

    pip's temporary files go to ``destination`` too (TMPDIR), so nothing is written outside the cache. An sdist
    whose metadata pip cannot prepare in an isolated build environment (``build_requirements``: pyradiomics'
    setup.py imports numpy) is downloaded without isolation by this interpreter, and when that fails for another
    reason than the network, by a throw-away venv in ``destination`` that has the requirements.

    Raises:
        ExampleDataError: the client is missing or failed (offline, registry unreachable, unknown version).
    """
    temporary = destination / ".tmp"
    temporary.mkdir(exist_ok=True)
    environment = os.environ | {"TMPDIR": str(temporary), "PIP_NO_INPUT": "1"}
    if source.kind == "deb":
        command = ["apt-get", "download", f"{source.name}={source.version}"]
        run_client(command, source, "apt-get download", destination, environment)
    elif not source.build_requirements:
        run_client(
            pip_download_command(source, sys.executable, destination), source, "pip download", destination, environment
        )
    else:
        command = pip_download_command(source, sys.executable, destination, isolated=False)
        try:
            run_client(command, source, "pip download --no-build-isolation", destination, environment)
        except ExampleDataError as error:
            if NETWORK_HINT in str(error):
                raise
            helper = destination / ".pip-helper"
            helper_python = str(helper / "bin" / "python")
            run_client([sys.executable, "-m", "venv", str(helper)], source, "helper venv", destination, environment)
            install = [helper_python, "-m", "pip", "install", "-q", "--no-cache-dir", *source.build_requirements]
            run_client(install, source, "pip install in the helper venv", destination, environment)
            command = pip_download_command(source, helper_python, destination, isolated=False)
            run_client(command, source, "pip download in the helper venv", destination, environment)
            shutil.rmtree(helper, ignore_errors=True)
    shutil.rmtree(temporary, ignore_errors=True)


def reject(path: Path, source: Source, digest: str) -> ExampleDataError:
    """Move a file with the wrong sha256 aside (``<file>.rejected``) and return the error that refuses it."""
    rejected = path.with_name(path.name + ".rejected")
    os.replace(path, rejected)
    return ExampleDataError(
        f"{source.label}: {path} has sha256 {digest}, expected {source.sha256}; moved aside to {rejected.name}, "
        "run again to download it afresh"
    )


def ensure_source(source: Source, cache: Path, log: Callable[[str], None] = print) -> Path:
    """Return the verified cached file of ``source``, downloading it (into a staging folder) when absent.

    Raises:
        ExampleDataError: the download failed or the file's sha256 differs from the pin (the file is set aside).
    """
    path = cache / source.cache_folder / source.filename
    if path.exists():
        digest = sha256_of(path)
        if digest != source.sha256:
            raise reject(path, source, digest)
        return path
    staging = cache / source.cache_folder / f".download-{source.name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    log(f"downloading {source.label}, {source.size / 1e6:.1f} MB")
    try:
        download_source(source, staging)
        downloaded = [entry for entry in staging.iterdir() if entry.is_file()]
        if len(downloaded) != 1:
            raise ExampleDataError(
                f"{source.label}: expected one downloaded file, found {sorted(p.name for p in downloaded)}"
            )
        os.replace(downloaded[0], path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    digest = sha256_of(path)
    if digest != source.sha256:
        raise reject(path, source, digest)
    return path


def read_members(archive: Path, prefixes: Sequence[str]) -> dict[str, bytes]:
    """Read the members whose path starts with one of ``prefixes`` from a wheel, sdist (top folder dropped) or .deb.

    The ``.deb`` is an ``ar`` archive whose ``data.tar.{xz,gz,bz2}`` holds the files (``./`` dropped).
    """
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as wheel:
            return {name: wheel.read(name) for name in wheel.namelist() if name.startswith(tuple(prefixes))}
    if archive.suffix == ".deb":
        stream, strip = io.BytesIO(deb_data_tar(archive)), "./"
    else:
        stream, strip = open(archive, "rb"), ""  # noqa: SIM115 (closed by the tarfile block below)
    members = {}
    with stream, tarfile.open(fileobj=stream, mode="r:*") as tar:
        for member in tar:
            name = member.name.removeprefix(strip) if strip else member.name.partition("/")[2]
            if member.isfile() and name.startswith(tuple(prefixes)):
                members[name] = tar.extractfile(member).read()
    return members


def deb_data_tar(archive: Path) -> bytes:
    """The (compressed) ``data.tar.*`` member of a Debian package (``ar`` format)."""
    data = archive.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise ExampleDataError(f"{archive}: not a Debian package")
    offset = 8
    while offset + 60 <= len(data):
        name, size = data[offset : offset + 16].decode().strip().rstrip("/"), int(data[offset + 48 : offset + 58])
        if name.startswith("data.tar") and not name.endswith(".zst"):
            return data[offset + 60 : offset + 60 + size]
        offset += 60 + size + size % 2
    raise ExampleDataError(f"{archive}: no data.tar.xz/gz/bz2 member")


def unpack_library(source: Source, wheel: Path, cache: Path) -> Path:
    """Unpack a pure-Python wheel into ``CACHE/pylib/<name>-<version>`` (atomically) and return that folder."""
    folder = cache / "pylib" / f"{source.name}-{source.version}"
    if not folder.is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(staging)
            os.chmod(staging, 0o755)
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder


# -------------------------------------------------------------------------------------------------------- writing
def summary_row(dataset: str, case: conversion.Case, content: DatasetContent) -> list[str]:
    """One summary.tsv row: geometry, label classes present and their voxel fractions."""
    values, counts = np.unique(case.label, return_counts=True)
    fractions = counts / case.label.size
    foreground = fractions[values > 0]
    spacing = np.sqrt((case.affine[:3, : case.image.ndim] ** 2).sum(0))
    return [
        dataset, case.case_id, case.modality or content.modality, "x".join(map(str, case.image.shape)),
        "x".join(f"{value:.3g}" for value in spacing), str(case.image.dtype), str(len(content.labels) - 1),
        str(len(foreground)), f"{foreground.sum():.4f}", f"{foreground.min():.2e}" if len(foreground) else "0",
        f"{foreground.max():.2e}" if len(foreground) else "0",
    ]  # fmt: skip


def write_dataset(folder: Path, content: DatasetContent, licence: bytes, sources: Sequence[Source]) -> list[list[str]]:
    """Write the cases, dataset.json, LICENSE and (last) the completion marker of one dataset.

    Returns:
        The summary.tsv rows of its cases.

    Raises:
        ExampleDataError: a label value outside ``content.labels`` or an image and label of different shapes.
    """
    (folder / MARKER_NAME).unlink(missing_ok=True)  # incomplete until the new marker is written
    label_dtype = np.uint8 if max(content.labels) < 256 else np.uint16
    training, rows, sizes = [], [], {}
    for case in content.cases:
        present = {int(value) for value in np.unique(case.label)}
        if case.image.shape != case.label.shape or not present <= set(content.labels):
            undeclared = sorted(present - set(content.labels))
            raise ExampleDataError(
                f"{folder.name}/{case.case_id}: image/label shapes differ or undeclared labels {undeclared}"
            )
        entry = {"image": f"./imagesTr/{case.case_id}.nii.gz", "label": f"./labelsTr/{case.case_id}.nii.gz"}
        for key, array in (("image", case.image), ("label", case.label.astype(label_dtype))):
            data = nifti_bytes(array, case.affine)
            write_bytes_atomic(data, folder / entry[key])
            sizes[entry[key]] = len(data)
        training.append(entry | ({"modality": case.modality} if case.modality else {}))
        rows.append(summary_row(folder.name, case, content))
    description = {
        "name": folder.name, "description": content.description, "tensorImageSize": f"{content.cases[0].image.ndim}D",
        "modality": {"0": content.modality}, "reference": content.reference, "source": content.source,
        "licence": content.licence, "labels": {str(value): name for value, name in sorted(content.labels.items())},
        "numTraining": len(training), "numTest": 0, "training": training, "test": [],
    }  # fmt: skip
    if content.label_ids:
        description["label_ids"] = {str(value): source_id for value, source_id in content.label_ids.items()}
    write_bytes_atomic((json.dumps(description, indent=1) + "\n").encode(), folder / "dataset.json")
    write_bytes_atomic(licence, folder / "LICENSE")
    marker = {
        "format": MARKER_FORMAT,
        "sources": {s.filename: s.sha256 for s in sources},
        "sizes": sizes,
        "summary": rows,
    }
    write_bytes_atomic((json.dumps(marker, indent=1) + "\n").encode(), folder / MARKER_NAME)
    return rows


def complete_rows(folder: Path, spec: DatasetSpec) -> list[list[str]] | None:
    """The summary rows of a completely written dataset (marker of the same pins, every file of its size), else None."""
    try:
        marker = json.loads((folder / MARKER_NAME).read_text())
        json.loads((folder / "dataset.json").read_text())
    except (OSError, ValueError):
        return None
    pins = {source.filename: source.sha256 for source in spec.sources}
    if marker.get("format") != MARKER_FORMAT or marker.get("sources") != pins or not (folder / "LICENSE").is_file():
        return None
    for relative, size in marker.get("sizes", {}).items():
        path = folder / relative
        if not path.is_file() or path.stat().st_size != size:
            return None
    return marker["summary"]


def write_summary(out_dir: Path) -> int:
    """(Re)write OUT_DIR/summary.tsv from the markers of all complete datasets; returns the number of rows."""
    rows = [row for name, spec in DATASETS.items() for row in complete_rows(out_dir / name, spec) or []]
    text = "\t".join(SUMMARY_COLUMNS) + "\n" + "".join("\t".join(row) + "\n" for row in rows)
    path = out_dir / "summary.tsv"
    if not path.is_file() or path.read_text() != text:
        write_bytes_atomic(text.encode(), path)
    return len(rows)


def fetch_examples(
    out_dir: Path,
    datasets: Sequence[str],
    cache: Path | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Fetch, verify and convert the named datasets into ``out_dir``; complete ones are kept unless ``force``.

    A failing source fails only the datasets that need it (it is tried once per run); the others are written.

    Returns:
        One ``dataset: problem`` line per dataset that could not be written (empty when all were).
    """
    cache = cache or out_dir / ".cache"
    out_dir.mkdir(parents=True, exist_ok=True)
    verified: dict[str, Path | ExampleDataError] = {}
    last_read: tuple[tuple[str, ...], dict[str, bytes]] = ((), {})  # consecutive datasets share an archive's members
    failures = []
    for name in datasets:
        spec, folder = DATASETS[name], out_dir / name
        if not force and complete_rows(folder, spec) is not None:
            log(f"{name}: complete, kept")
            continue
        try:
            for source in spec.sources:
                if source.name not in verified:
                    try:
                        verified[source.name] = ensure_source(source, cache, log)
                    except ExampleDataError as error:
                        verified[source.name] = error
                if isinstance(verified[source.name], ExampleDataError):
                    raise verified[source.name]
            for library in spec.libraries:
                library_path = str(unpack_library(SOURCES[library], verified[library], cache))
                if library_path not in sys.path:
                    sys.path.insert(0, library_path)
            members: dict[str, dict[str, bytes]] = {}
            for source_name, prefixes in spec.members.items():
                wanted = (source_name, *prefixes, SOURCES[source_name].licence_member)
                if last_read[0] != wanted:
                    last_read = (wanted, read_members(verified[source_name], wanted[1:]))
                members[source_name] = last_read[1]
            started = time.monotonic()
            content = spec.build(members)
            licence = members[spec.licence_source][SOURCES[spec.licence_source].licence_member]
            write_dataset(folder, content, licence, spec.sources)
            labels = len(content.labels) - 1
            log(
                f"{name}: {len(content.cases)} case(s), {labels} foreground labels ({time.monotonic() - started:.1f} s)"
            )
        except KeyError as error:  # a pinned archive always has its members; a hand-made one may not
            failures.append(f"{name}: archive member {error} missing")
            log(f"{name}: not written: {failures[-1]}")
        except ExampleDataError as error:
            failures.append(f"{name}: {error}")
            log(f"{name}: not written: {error}")
    rows = write_summary(out_dir)
    log(f"{out_dir / 'summary.tsv'}: {rows} case(s)")
    return failures


# ------------------------------------------------------------------------------------------------------------ CLI
def list_datasets() -> str:
    """The ``--list`` table: dataset, sources, licence, download and output sizes."""
    lines = [f"{'dataset':31} {'download':>8} {'output':>7}  source / licence"]
    for name, spec in DATASETS.items():
        download = sum(source.size for source in spec.sources) / 1e6
        sources = ", ".join(source.label for source in spec.sources)
        lines.append(f"{name:31} {download:5.1f} MB {OUTPUT_MEGABYTES[name]:4.1f} MB  {sources}")
        lines.append(f"{'':50}licence: {SOURCES[spec.licence_source].licence}")
    unique_sources = {source.name: source for spec in DATASETS.values() for source in spec.sources}.values()
    downloaded, written = sum(s.size for s in unique_sources) / 1e6, sum(OUTPUT_MEGABYTES.values())
    lines.append(f"all: {downloaded:.0f} MB downloaded, {written:.0f} MB written")
    return "\n".join(lines)


def dataset_names(text: str) -> list[str]:
    """Parse ``--only``: comma-separated dataset names, kept in the canonical order."""
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = sorted(names - set(DATASETS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown dataset(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(DATASETS)}"
        )
    return [name for name in DATASETS if name in names]


def build_parser(description: str) -> argparse.ArgumentParser:
    """The command-line interface of scripts/fetch_examples.py."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", nargs="?", type=Path, help="output folder (datasets, summary.tsv, .cache/)")
    parser.add_argument(
        "--only",
        type=dataset_names,
        default=list(DATASETS),
        metavar="DATASET,...",
        help="fetch only these datasets (see --list)",
    )
    parser.add_argument(
        "--cache", type=Path, metavar="DIR", help="download cache (default OUT_DIR/.cache); reruns reuse it"
    )
    parser.add_argument("--force", action="store_true", help="rewrite selected datasets even if already complete")
    parser.add_argument("--list", action="store_true", help="list the datasets with source, licence and size, and exit")
    return parser


def main(argv: Sequence[str] | None = None, description: str | None = None) -> int:
    """Run the command line; returns 0, or 2 with a one-line message when something could not be fetched."""
    parser = build_parser(description or __doc__)
    arguments = parser.parse_args(argv)
    if arguments.list:
        print(list_datasets())
        return 0
    if arguments.out_dir is None:
        parser.error("OUT_DIR is required (or --list)")
    try:
        failures = fetch_examples(arguments.out_dir, arguments.only, arguments.cache, arguments.force)
    except (ExampleDataError, OSError) as error:
        failures = [str(error)]
    if failures:
        print(f"error: {len(failures)} dataset(s) not written; first: {failures[0]}", file=sys.stderr)
        return 2
    return 0
