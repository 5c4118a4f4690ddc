"""The files of a folder inference: inputs found, their mirrored outputs, files left out, and the report.

The rules that protect a user's data live here and in :mod:`common.inference.segmentations`:

- every ``.nii``/``.nii.gz`` file under the input folder (any letter case) is an input, including files inside an
  output folder nested in it, except segmentations this project wrote (marked in their NIfTI header);
- an output never replaces an input file, is never written through a symbolic link and never lands outside the
  output folder; an existing output is replaced only with ``overwrite``;
- every file found and not segmented (hidden, dangling or looping symbolic link, not a regular file, unreadable,
  existing output, output that would replace an input ...) is listed in the report with its reason, and every
  file that is not NIfTI (an Analyze ``.hdr``/``.img`` pair, DICOM, MetaImage ...) at the end with how to convert it.

The plan is made when the workflow runs (:meth:`FolderPlan.make`), not when the config is parsed: a bundle's
inference config initialises with its default folders, which need not exist.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.data.nifti import NIFTI_SUFFIXES
from common.errors import OptionError, OptionValueError
from common.inference.segmentations import is_own_segmentation

# how to convert the image files that are not NIfTI, by suffix; ``{path}``/``{stem}`` are the file without/with
# the suffix removed (a pair's ``.img`` is listed with its ``.hdr``)
NIBABEL_CONVERSION = "python -c \"import nibabel as nib; nib.save(nib.load('{path}'), '{stem}.nii.gz')\""
SIMPLEITK_CONVERSION = (
    "python -c \"import SimpleITK as sitk; sitk.WriteImage(sitk.ReadImage('{path}'), '{stem}.nii.gz')\""
)
CONVERSIONS = {
    ".hdr": ("Analyze/NIfTI .hdr/.img pair", NIBABEL_CONVERSION),
    ".img": ("Analyze/NIfTI .hdr/.img pair", NIBABEL_CONVERSION),
    ".mgz": ("FreeSurfer MGH", NIBABEL_CONVERSION),
    ".mgh": ("FreeSurfer MGH", NIBABEL_CONVERSION),
    ".mha": ("MetaImage", SIMPLEITK_CONVERSION),
    ".mhd": ("MetaImage", SIMPLEITK_CONVERSION),
    ".nrrd": ("NRRD", SIMPLEITK_CONVERSION),
    ".nhdr": ("NRRD", SIMPLEITK_CONVERSION),
    ".dcm": ("DICOM", "dcm2niix -z y -o OUTPUT_FOLDER {folder}"),
}
LISTED_PER_KIND = 10  # files named per kind of non-NIfTI file; the others are counted


def is_nifti(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a NIfTI file (``.nii`` or ``.nii.gz``, any case)."""
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def nifti_suffix(name: str) -> str:
    """The NIfTI extension of ``name`` as written (``.nii.gz``, ``.NII.GZ``, ``.nii`` ...)."""
    length = len(".nii.gz") if name.lower().endswith(".nii.gz") else len(".nii")
    return name[-length:]


def real_path(path: str | os.PathLike) -> Path:
    """The path with every symbolic link resolved; a dangling or looping link resolves as far as it goes."""
    return Path(os.path.realpath(path))


def as_path(value: Any, option: str) -> Path:
    """A folder option as a path; the command line turns ``--output_dir 2024`` into an int, which is a name too.

    Raises:
        OptionError: ``value`` is neither a path nor a number (e.g. None, a list, True), naming ``option``; a
            ``TypeError``.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return Path(str(value))
    if isinstance(value, str | os.PathLike) and os.fspath(value):
        return Path(value)
    raise OptionError(f"--{option}: expected a folder path, got {value!r}")


def check_output_postfix(postfix: Any) -> str:
    """Refuse a file-name postfix that could leave the output folder or hide the file.

    Raises:
        OptionValueError: the postfix holds a path separator, ``..`` or a NUL character, naming
            ``--output_postfix``; a ``ValueError``.
        OptionError: the postfix is not a string; a ``TypeError``.
    """
    if isinstance(postfix, int) and not isinstance(postfix, bool):
        postfix = str(postfix)
    if not isinstance(postfix, str):
        raise OptionError(f"--output_postfix: expected a string, got {postfix!r}")
    separators = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if any(separator in postfix for separator in separators) or ".." in postfix or "\0" in postfix:
        raise OptionValueError(
            f"--output_postfix {postfix!r}: must not contain path separators, '..' or NUL characters "
            "(it is appended to each output file name, e.g. _seg)"
        )
    return postfix


def mirrored_output_path(
    image_path: Path, input_dir: str | os.PathLike, output_dir: str | os.PathLike, postfix: str = ""
) -> Path:
    """Map ``input_dir/a/b/name.nii.gz`` to ``output_dir/a/b/name{postfix}.nii.gz`` (extension kept as written)."""
    relative = Path(image_path).relative_to(input_dir)
    suffix = nifti_suffix(relative.name)
    return Path(output_dir) / relative.parent / f"{relative.name[: -len(suffix)]}{postfix}{suffix}"


@dataclass
class FolderReport:
    """What a folder inference did with each file it found."""

    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    skipped: dict[Path, str] = field(default_factory=dict)
    failures: dict[Path, str] = field(default_factory=dict)
    not_nifti: dict[Path, str] = field(default_factory=dict)  # file -> what it is and how to convert it

    def fail(self, path: str | os.PathLike, reason: str) -> None:
        """Record that ``path`` could not be segmented, and say so at once on stderr."""
        self.failures[Path(path)] = reason
        print(f"FAILED {path}: {reason}", file=sys.stderr, flush=True)

    def summary(self) -> str:
        """Counts, then one line per file found and not segmented, with its reason."""
        lines = [
            f"segmented {len(self.written)} file(s), kept {len(self.kept)} existing output(s), "
            f"{len(self.failures)} failure(s)"
        ]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} file(s) that cannot be segmented:")
        if self.kept:
            lines.append("existing outputs were not replaced (pass --overwrite True to replace them):")
            lines += [f"KEPT {path}" for path in self.kept]
        lines += [f"SKIPPED {path}: {reason}" for path, reason in self.skipped.items()]
        lines += [f"FAILED {path}: {reason}" for path, reason in self.failures.items()]
        return "\n".join(lines + self.not_nifti_lines())

    def not_nifti_lines(self) -> list[str]:
        """One ``not processed: FILE (not NIfTI; convert with ...)`` line per file that is not NIfTI.

        At most :data:`LISTED_PER_KIND` per suffix, then one line counting the others.
        """
        lines, by_suffix = [], {}
        for path, hint in self.not_nifti.items():
            by_suffix.setdefault(path.suffix.lower(), []).append((path, hint))
        for files in by_suffix.values():
            lines += [f"not processed: {path} ({hint})" for path, hint in files[:LISTED_PER_KIND]]
            if len(files) > LISTED_PER_KIND:
                suffix = files[0][0].suffix or "extension-less"
                lines.append(f"not processed: {len(files) - LISTED_PER_KIND} more {suffix} file(s) like these")
        return lines

    def conclude(self, output_dir: str | os.PathLike | int) -> None:
        """Print the summary; exit with status 1 when any file failed (a skipped file is not a failure).

        Raises:
            SystemExit: with status 1 when some file failed.
        """
        print(self.summary())
        print(f"outputs under {as_path(output_dir, 'output_dir').resolve()}", flush=True)
        if self.failures:
            raise SystemExit(1)


def unusable_reason(path: Path) -> str | None:
    """Why a (non-hidden) directory entry named like a NIfTI file cannot be read as one, or None when it can."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return f"dangling symbolic link (its target {os.readlink(path)} does not exist)"
    except OSError as error:  # ELOOP for a symbolic link loop, EACCES for a folder without search permission
        return f"cannot be opened ({error.strerror or error})"
    if not path.is_file():
        return "not a regular file"
    if status.st_size == 0:
        return "empty file"
    if not os.access(path, os.R_OK):
        return "not readable (permission denied)"
    return None


def not_nifti_hint(path: Path) -> str:
    """What a file that is not NIfTI is and how to convert it: ``not NIfTI (...); convert with ...``."""
    suffix = path.suffix.lower()
    kind, command = CONVERSIONS.get(suffix, ("", ""))
    if not command:
        return (
            "not NIfTI; convert it to .nii.gz to segment it (e.g. with dcm2niix for DICOM, SimpleITK for other formats)"
        )
    source = path.with_suffix(".hdr" if path.suffix == ".img" else ".HDR" if path.suffix == ".IMG" else path.suffix)
    text = command.format(path=source, stem=path.with_suffix(""), folder=path.parent)
    return f"not NIfTI: {kind}; convert with {text}"


def pair_header(path: Path, names: set[str]) -> bool:
    """Whether ``path`` is the ``.img`` of an Analyze/NIfTI pair whose ``.hdr`` is among ``names`` (listed once)."""
    return path.suffix.lower() == ".img" and any(f"{path.stem}{suffix}" in names for suffix in (".hdr", ".HDR"))


@dataclass
class FolderPlan:
    """The cases a folder inference segments, decided before any network runs.

    Constructing it checks the options only; :meth:`make` (called when the workflow runs) reads the folders.

    Args:
        input_dir: folder searched recursively (symbolic links to folders are not followed).
        output_dir: root of the outputs; not the input folder itself. It may lie inside the input folder: its own
            earlier segmentations are then recognised and left out, any other file in it is an input.
        postfix: appended to each output file's stem.
        overwrite: replace existing outputs (never an input file).

    Attributes:
        cases: one ``{"image": input path, "source": input path, "output": output path}`` per file to segment,
            filled by :meth:`make` (the list object stays the same, so a dataset built on it sees them).
        report: the files left out so far (skipped, kept, not NIfTI) and, filled later, what was written or failed.

    Raises:
        OptionError: ``overwrite`` is not a bool, a folder option is not a path, the postfix not a string.
        OptionValueError: a postfix that could leave the output folder.
    """

    input_dir: Any
    output_dir: Any
    postfix: Any = ""
    overwrite: bool = False
    cases: list[dict[str, str]] = field(init=False, default_factory=list)
    report: FolderReport = field(init=False, default_factory=FolderReport)
    planned: bool = field(init=False, default=False)
    _protected: set[Path] = field(init=False, repr=False, default_factory=set)  # real paths of the user's files

    def __post_init__(self) -> None:
        if not isinstance(self.overwrite, bool):
            raise OptionError(f"--overwrite: expected True or False, got {self.overwrite!r}")
        self.input_dir = as_path(self.input_dir, "dataset_dir")
        self.output_dir = as_path(self.output_dir, "output_dir")
        self.postfix = check_output_postfix(self.postfix)

    def make(self) -> FolderPlan:
        """Find the inputs and decide their outputs (once; later calls return the plan as it is).

        Returns:
            The plan itself.

        Raises:
            NotADirectoryError: the input folder does not exist, or the output folder is a file.
            OptionValueError: the output folder is the input folder.
            FileNotFoundError: the input folder holds no NIfTI file at all (the message names other files found).
        """
        if self.planned:
            return self
        if not self.input_dir.is_dir():
            raise NotADirectoryError(
                f"--dataset_dir {self.input_dir}: input folder does not exist or is not a folder; give the folder "
                "of the images to segment"
            )
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise NotADirectoryError(f"--output_dir {self.output_dir}: exists and is not a folder")
        if real_path(self.input_dir) == real_path(self.output_dir):
            raise OptionValueError(
                f"--output_dir {self.output_dir}: is the input folder (--dataset_dir); choose another output folder"
            )
        found = self._discover()
        if not (found or self.report.skipped or self.report.failures):
            others = ""
            if self.report.not_nifti:
                path, hint = next(iter(self.report.not_nifti.items()))
                others = f"; {len(self.report.not_nifti)} other file(s), e.g. {path} ({hint})"
            raise FileNotFoundError(
                f"--dataset_dir {self.input_dir}: no .nii or .nii.gz files found (searched recursively){others}"
            )
        self._plan(found)
        self.planned = True
        return self

    def _discover(self) -> list[Path]:
        """Every usable NIfTI input, sorted; the unusable ones go to the report with their reason.

        Every user file named like a NIfTI file (usable or not) is also recorded as protected from writing; the
        other files (hidden ones aside) are listed as not NIfTI.
        """
        output_root = real_path(self.output_dir)
        found = []
        for folder, subfolders, files in os.walk(self.input_dir, followlinks=False):
            folder_path = Path(folder)
            for name in sorted(subfolders):
                if (folder_path / name).is_symlink():
                    self.report.skipped[folder_path / name] = "symbolic link to a folder, not followed"
            subfolders.sort()
            names = set(files)
            for name in sorted(files):
                path = folder_path / name
                if not is_nifti(name):
                    if not name.startswith(".") and not pair_header(path, names):
                        self.report.not_nifti[path] = not_nifti_hint(path)
                    continue
                if real_path(path).is_relative_to(output_root) and is_own_segmentation(path):
                    self.report.skipped[path] = "a segmentation written by folder inference into the output folder"
                    continue
                self._protected.add(real_path(path))
                if name.startswith("."):
                    self.report.skipped[path] = "hidden file (name starts with '.'), not segmented"
                elif (reason := unusable_reason(path)) is not None:
                    self.report.fail(path, reason)
                else:
                    found.append(path)
        return sorted(found)

    def _plan(self, found: list[Path]) -> None:
        """Decide each input's output, refusing any that would replace an input or leave the output folder."""
        output_root = real_path(self.output_dir)
        planned: dict[Path, Path] = {}
        for path in found:
            output = mirrored_output_path(path, self.input_dir, self.output_dir, self.postfix)
            resolved = real_path(output)
            if resolved in self._protected:
                conflict = "would replace an input file; choose an output folder that holds no inputs"
            elif not resolved.is_relative_to(output_root):
                conflict = "leads outside the output folder (through a symbolic link)"
            elif resolved in planned:
                conflict = f"is also the output of {planned[resolved]}"
            elif output.is_symlink():
                conflict = "is a symbolic link; not replaced"
            elif output.exists() and not output.is_file():
                conflict = "exists and is not a file"
            else:
                conflict = None
            if conflict is not None:
                self.report.fail(path, f"its output {output} {conflict}")
            elif output.exists() and not self.overwrite:
                self.report.kept.append(output)
            else:
                planned[resolved] = path
                self.cases.append({"image": os.fspath(path), "source": os.fspath(path), "output": os.fspath(output)})


def discover_images(input_dir: str | os.PathLike, exclude: str | os.PathLike | None = None) -> list[Path]:
    """List the readable NIfTI files under ``input_dir`` recursively, sorted, skipping hidden ones and ``exclude``.

    Raises:
        NotADirectoryError: ``input_dir`` is not a folder.
    """
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise NotADirectoryError(f"{input_dir}: input folder does not exist or is not a folder")
    excluded = real_path(exclude) if exclude is not None else None
    found = []
    for folder, _, files in os.walk(input_dir):
        for name in files:
            path = Path(folder) / name
            if not is_nifti(name) or name.startswith(".") or unusable_reason(path) is not None:
                continue
            if excluded is None or not real_path(path).is_relative_to(excluded):
                found.append(path)
    return sorted(found)
