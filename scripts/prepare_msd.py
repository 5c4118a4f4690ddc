"""Turn a Medical Segmentation Decathlon-style task folder into a datalist JSON.

Usage:
    python scripts/prepare_msd.py TASK_DIR [--output TASK_DIR/datalist.json] [--split random|explog|sadice]
        [--seed 0] [--validation-fraction 0.5] [--labels LABEL,...] [--merge NAME=LABEL,...] [--overwrite]

TASK_DIR holds ``dataset.json``, ``imagesTr/`` and ``labelsTr/`` (e.g. Task02_Heart). The cases are the
``training`` entries of dataset.json, the classes its ``labels`` (names kept: ``class_names`` in the datalist) and
the image channels its ``modality`` entries (images are 4D, channel last, when there are several). 2D files are
accepted as one-slice cases (for the 2D-network bundles such as msd_rrw).

Classes: by default every label of dataset.json. ``--labels aorta`` keeps only the aorta (every other label
becomes background); ``--merge "white matter=1,19"`` merges labels (values or names) into one class; both repeat
and combine. Every label that neither ``--labels`` nor ``--merge`` names becomes background, also with ``--merge``
alone (which then keeps only the merged classes); the script prints those labels. A name that two labels share
must be given by value (``--labels 3``). Class names may not hold ``|`` or line breaks and must differ (a
``--merge`` NAME included). Every value found in a label file must be one of dataset.json's ``labels``, else the
case fails naming the file and the value. The datalist's ``label_mapping`` takes release values to training
indices and ``inverse_label_mapping`` back (a merged class to the first value of its group), so predictions carry
the data set's label values.

Split (``--split``, subjects never straddle sections): ``random`` (default; seeded, ``--validation-fraction`` of
the cases for validation, ``0`` for a train-only datalist, e.g. a single-case folder: training then validates on
its own cases), ``explog`` (70/30, ``--shuffle K`` of 5), ``sadice`` (90/10: fold ``--fold F`` of ``--folds``,
default 10, validates, the other 90 % train; ``--test-fraction T`` holds out a test section first).

The datalist also records each case's spacing and slice axis (RAS axes, coarsest spacing) and the data set's
``slice_axis``, which the 2D RW bundles slice along. Entries whose paths leave TASK_DIR (``..`` or absolute paths
elsewhere) are refused, an image listed twice is kept once, images in imagesTr that dataset.json does not list are
skipped with a note. Bad cases are listed at the end and make the exit status 1; the good ones are still written.
``--output`` never replaces a file the preparation reads (dataset.json, every image and label) or a folder,
``--overwrite`` or not, and an earlier datalist only with ``--overwrite``; each such refusal is one ``error:`` line
with exit status 2.
"""

from __future__ import annotations

import sys

from common.data.preparation import prepare_release_cli
from common.data.releases import MSD
from common.errors import install_error_hook


def main(argv: list[str] | None = None) -> int:
    return prepare_release_cli(MSD, argv, __doc__)


if __name__ == "__main__":
    install_error_hook()  # anything unexpected still ends with its cause as the last line
    sys.exit(main())
