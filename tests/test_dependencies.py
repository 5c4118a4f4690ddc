"""The lock, pyproject.toml's ranges and every bundle's metadata pins agree, and the repository stands alone."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements" / "lock.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")
METADATA_FILES = sorted(REPO.glob("bundles/*/configs/metadata.json"))


def read_pins(path: Path) -> dict[str, str]:
    """``{canonical name: version}`` of every ``name==version`` line of a requirements file."""
    pins = {}
    for line in path.read_text().splitlines():
        if match := PIN.match(line.strip()):
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = [requirement for group in project["optional-dependencies"].values() for requirement in group]
    return [Requirement(text) for text in [*project["dependencies"], *extras]]


def test_lock_pins_exact_versions_that_satisfy_every_range():
    pins = read_pins(LOCK)
    assert len(pins) > 30  # direct and transitive
    requirements = project_requirements() + [Requirement(line) for line in read_pins(REPO / "requirements/lock.in")]
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} has no pin in {LOCK.name}: run scripts/update_lock.sh"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]}: {requirement}"
    for name, version in pins.items():
        assert Version(version).local is None, f"{name}=={version}: a build label, not a release"
    unpinned = [line for line in LOCK.read_text().splitlines() if line and not line.startswith((" ", "#", "-"))]
    assert not [line for line in unpinned if not PIN.match(line)], "every requirement of the lock is name==version"


@pytest.mark.parametrize("metadata_file", METADATA_FILES, ids=lambda path: path.parents[1].name)
def test_bundle_metadata_pins_the_locked_versions(metadata_file):
    pins = read_pins(LOCK)
    metadata = json.loads(metadata_file.read_text())
    core = {"monai": "monai_version", "torch": "pytorch_version", "numpy": "numpy_version"}
    assert {name: metadata[field] for name, field in core.items()} == {name: pins[name] for name in core}
    required = {canonicalize_name(name): version for name, version in metadata["required_packages_version"].items()}
    assert required == {name: pins[name] for name in required}, f"{metadata_file}: pins differ from {LOCK.name}"
    declared = {canonicalize_name(requirement.name) for requirement in project_requirements()}
    assert set(required) <= declared, "a bundle requires a package the project does not declare"


OUTSIDE_REFERENCES = re.compile(r"\.\./shared\b|(?<![\w.])/(?:work|home|root|Users|mnt|srv)/[\w.-]+")


def test_no_file_names_anything_outside_the_repository():
    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.splitlines()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    offending = []
    for name in listed:
        path = REPO / name
        if not path.is_file() or path.suffix in {".pt", ".gz", ".png", ".zip"}:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        offending += [f"{name}:{number}: {line.strip()}" for number, line in enumerate(text.splitlines(), 1)
                      if OUTSIDE_REFERENCES.search(line) and path.name != Path(__file__).name]  # fmt: skip
    assert not offending, "\n".join(offending)
