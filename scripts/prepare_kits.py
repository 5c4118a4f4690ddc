"""Turn a KiTS19 release into a datalist JSON with a seeded 50/50 case-level split.

Usage:
    python scripts/prepare_kits.py KITS_DIR [--output KITS_DIR/datalist.json] [--seed 0]
        [--validation-fraction 0.5] [--overwrite]

KITS_DIR is the kits19 ``data`` folder holding ``case_XXXXX/imaging.nii.gz`` and ``segmentation.nii.gz``
(0 background, 1 kidney, 2 tumour); each case is one subject. Cases without a segmentation (the test set) are
skipped with a note. Bad cases are listed at the end and make the exit status 1; the good ones are still written.
"""

from __future__ import annotations

import sys

from common.releases import KITS19, prepare_release_cli


def main(argv: list[str] | None = None) -> int:
    return prepare_release_cli(KITS19, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
