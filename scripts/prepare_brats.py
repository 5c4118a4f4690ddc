"""Turn a BraTS 2017/2018 training release into a datalist JSON, by default with the RW paper authors' split.

Usage:
    python scripts/prepare_brats.py BRATS_DIR [--output BRATS_DIR/datalist.json] [--split authors|random|explog|sadice]
        [--seed 0] [--validation-fraction 0.5] [--labels ...] [--merge ...] [--overwrite]

BRATS_DIR holds HGG/ and LGG/ (MICCAI_BraTS_2018_Data_Training, or Brats17TrainingData for 2017). Every subject
folder's four modalities and ``_seg`` label are checked (readable 3D NIfTI on one grid, labels in 0/1/2/4) and
the subjects are split: by default as Valverde & Tohka's ``datasplits/brats18.py`` (HGG only, sorted by name,
even positions train, odd validate; LGG subjects are left out with a note), or ``--split random`` (seeded, stratified
by grade), ``explog`` or ``sadice`` (see ``common.data.splits``). Each entry's image is the list of modality paths
in the order t1, t1ce, t2, flair, relative to BRATS_DIR. Labels stay 0/1/2/4 on disk; the datalist records the
mapping to training indices 0..3 (4 -> 3) and its inverse for writing predictions back. Bad subjects are listed
at the end and make the exit status 1; the good ones are still written.
``--labels LABEL,...`` keeps those labels as classes and ``--merge NAME=LABEL,...`` merges labels into one class
(values or names; both repeat and combine): every label that neither names becomes background, also with
``--merge`` alone, and the script prints those labels. ``--output`` never replaces a file of the release or a
folder, ``--overwrite`` or not, and an earlier datalist only with ``--overwrite`` (one ``error:`` line, exit 2).
"""

from __future__ import annotations

import sys

from common.data.preparation import prepare_release_cli
from common.data.releases import BRATS
from common.errors import install_error_hook


def main(argv: list[str] | None = None) -> int:
    return prepare_release_cli(BRATS, argv, __doc__)


if __name__ == "__main__":
    install_error_hook()  # anything unexpected still ends with its cause as the last line
    sys.exit(main())
