"""Turn a KiTS19 release into a datalist JSON, by default with the RW paper authors' even/odd split.

Usage:
    python scripts/prepare_kits.py KITS_DIR [--output KITS_DIR/datalist.json] [--split authors|random|explog|sadice]
        [--seed 0] [--validation-fraction 0.5] [--labels ...] [--merge ...] [--overwrite]

KITS_DIR is the kits19 ``data`` folder holding ``case_XXXXX/imaging.nii.gz`` and ``segmentation.nii.gz``
(0 background, 1 kidney, 2 tumour); each case is one subject. Cases without a segmentation (the test set) are
skipped with a note. Split: by default as Valverde & Tohka's ``datasplits/kits19.py`` (cases 0, 2, .., 208 train,
1, 3, .., 209 validate), or ``--split random`` (seeded), ``explog`` or ``sadice`` (see ``common.data.splits``).
Bad cases are listed at the end and make the exit status 1; the good ones are still written.
``--labels LABEL,...`` keeps those labels as classes and ``--merge NAME=LABEL,...`` merges labels into one class
(values or names; both repeat and combine): every label that neither names becomes background, also with
``--merge`` alone, and the script prints those labels. ``--output`` never replaces a file of the release or a
folder, ``--overwrite`` or not, and an earlier datalist only with ``--overwrite`` (one ``error:`` line, exit 2).
"""

from __future__ import annotations

import sys

from common.data.preparation import prepare_release_cli
from common.data.releases import KITS19
from common.errors import install_error_hook


def main(argv: list[str] | None = None) -> int:
    return prepare_release_cli(KITS19, argv, __doc__)


if __name__ == "__main__":
    install_error_hook()  # anything unexpected still ends with its cause as the last line
    sys.exit(main())
