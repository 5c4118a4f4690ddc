"""Turn a Medical Segmentation Decathlon task folder into a datalist JSON with a seeded 50/50 case-level split.

Usage:
    python scripts/prepare_msd.py TASK_DIR [--output TASK_DIR/datalist.json] [--seed 0]
        [--validation-fraction 0.5] [--overwrite]

TASK_DIR holds ``dataset.json``, ``imagesTr/`` and ``labelsTr/`` (e.g. Task02_Heart). The cases are the
``training`` entries of dataset.json, the classes its ``labels`` and the image channels its ``modality`` entries
(images are 4D, channel last, when there are several). Images in imagesTr that dataset.json does not list are
skipped with a note. Bad cases are listed at the end and make the exit status 1; the good ones are still written.
"""

from __future__ import annotations

import sys

from common.releases import MSD, prepare_release_cli


def main(argv: list[str] | None = None) -> int:
    return prepare_release_cli(MSD, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
