"""Shared fixtures: small NIfTI data sets written on the fly in the layouts of the public releases."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from common.data.acdc import collect_acdc_cases
from common.data.datalists import make_datalist
from common.data.splits import random_split
from common.data.synthetic_acdc import write_acdc_dataset
from common.files import write_json_atomic

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMA_FILE = REPO_ROOT / "tests" / "data" / "model_zoo" / "meta_schema_20240725.json"  # source: its README.md

# tiny ACDC-like volumes: 32 x 32 pixels, 4 slices, 2 frames (ED, ES) per subject
TINY_ACDC_SHAPE = (32, 32, 4)
TINY_ACDC_SPACING = (2.5, 2.5, 10.0)


@pytest.fixture(scope="session")
def acdc_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic ACDC17 release with four subjects (read-only for the tests: copy before changing it)."""
    root = tmp_path_factory.mktemp("acdc_release")
    write_acdc_dataset(
        root, num_subjects=4, seed=0, shape=TINY_ACDC_SHAPE, spacing=TINY_ACDC_SPACING, num_frames=3, with_cine=True
    )
    return root


@pytest.fixture(scope="session")
def prepared_acdc_release(acdc_release: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ``acdc_release`` with a seeded 50/50 ``datalist.json`` (read-only for the tests)."""
    release = tmp_path_factory.mktemp("acdc_prepared")
    shutil.copytree(acdc_release, release, dirs_exist_ok=True)
    training, validation = random_split(collect_acdc_cases(release).cases, 0.5, seed=0)
    write_json_atomic(make_datalist(training, validation), release / "datalist.json")
    return release


@pytest.fixture
def schema_file() -> Path:
    """The model zoo's metadata schema, kept with the tests (``tests/data/model_zoo``)."""
    return SCHEMA_FILE
