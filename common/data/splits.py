"""Subject-level splits of prepared cases: the papers' protocols and a seeded random split.

Every split keeps all cases of a subject on one side. The datalist sections are ``training`` (fitted),
``validation`` (scored during and after training; never used to select a model) and, for protocols with a
separate held-out set, ``test``.

Protocols (``--split`` of ``scripts/prepare_*.py``, see :func:`add_split_arguments`):

- ``authors``: the RW paper's split from its authors' ``datasplits/*.py``: train on even, test on odd subjects
  (ACDC patient ids 2, 4, .., 100 vs 1, 3, .., 99; KiTS19 cases 0, 2, .., 208 vs 1, 3, .., 209; BraTS18 HGG only,
  sorted by name, even vs odd positions). Each release's rule is in :mod:`common.data.releases` /
  :mod:`common.data.acdc`.
- ``random``: a seeded shuffle of the subjects (within each stratum such as the ACDC group or BraTS grade), a
  ``--validation-fraction`` of them for validation; ``0`` puts every case in training (train-only, e.g. a
  single-case folder).
- ``explog``: the exponential logarithmic loss paper: 70/30 train/test (the 30 % as ``validation``, the scored
  section), shuffle ``--shuffle K`` of 5 (``K = 0 .. 4``; seeded by ``--seed`` and ``K``): one datalist per shuffle.
- ``sadice``: the SA Dice paper's proportions: "90/10 split with cross-validation" (246 training, 28 test subjects
  of BraTS 2017): by default ``--folds 10`` seeded folds of all subjects, fold ``--fold F`` (10 %) as ``validation``
  (the scored, held-out section; it also paces the plateau learning rate, the paper's validation loss) and the other
  90 % as ``training``. ``--test-fraction T`` first holds out a seeded ``T`` of the subjects as ``test`` and cuts
  the folds inside the rest (training then has ``(1 - T) (1 - 1 / folds)`` of the subjects, fewer than the
  paper's 90 %).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.errors import OptionValueError

Case = dict[str, Any]
SPLITS = ("authors", "random", "explog", "sadice")
EXPLOG_TEST_FRACTION = 0.3
EXPLOG_SHUFFLES = 5
SADICE_TEST_FRACTION = 0.1  # holdout_folds' default; the sadice protocol's default is SADICE_PAPER_TEST_FRACTION
SADICE_FOLDS = 5
SADICE_PAPER_FOLDS = 10  # the paper's 90/10: each fold is 10 % of the subjects
SADICE_PAPER_TEST_FRACTION = 0.0  # no separate test section: the held-out 10 % is the validation fold


@dataclass
class Split:
    """The datalist sections of a split and the record of how they were drawn (written as the datalist's ``split``).

    Attributes:
        sections: ``training``, ``validation`` and optionally ``test`` entries, each in the input order.
        record: protocol, seed and fractions, for the datalist.
        left_out: subject -> why the protocol does not use it (e.g. LGG under the BraTS authors' split).
    """

    sections: dict[str, list[Case]]
    record: dict[str, Any]
    left_out: dict[str, str] = field(default_factory=dict)


def _subjects(cases: Iterable[Case], subject_key: str) -> list[str]:
    return sorted({case[subject_key] for case in cases})


def _select(cases: Sequence[Case], subjects: set[str], subject_key: str) -> list[Case]:
    return [case for case in cases if case[subject_key] in subjects]


def random_split(
    cases: Iterable[Case],
    validation_fraction: float = 0.5,
    seed: int | Sequence[int] = 0,
    subject_key: str = "subject",
    stratify_key: str | None = "group",
) -> tuple[list[Case], list[Case]]:
    """Split cases into training and validation by subject, so that no subject lands in both.

    Subjects are shuffled with ``seed`` within each stratum (e.g. ACDC pathology group), the strata are laid
    end to end, and every subject at which the running count ``floor(i * validation_fraction)`` steps up goes to
    validation: the overall share is exact up to rounding and every stratum is split in the same proportion.

    Args:
        cases: datalist entries.
        validation_fraction: share of subjects used for validation, in [0, 1); 0 puts every case in training.
        seed: seed of the shuffle (an integer or a sequence of integers, as ``numpy.random.default_rng`` takes).
        subject_key: entry key identifying the subject.
        stratify_key: entry key to stratify on, or None.

    Returns:
        The training and the validation entries, each in the input order.

    Raises:
        ValueError: ``validation_fraction`` outside [0, 1), no case, or too few subjects to fill both sides.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must lie in [0, 1), got {validation_fraction}")
    cases = list(cases)
    if not cases:
        raise ValueError("no usable case to split")
    if validation_fraction == 0.0:
        return cases, []
    strata: dict[str, set[str]] = defaultdict(set)
    for case in cases:
        strata[str(case.get(stratify_key, "")) if stratify_key else ""].add(case[subject_key])
    rng = np.random.default_rng(seed)
    ordered: list[str] = []
    for stratum in sorted(strata):
        subjects = sorted(strata[stratum])
        rng.shuffle(subjects)
        ordered.extend(subjects)
    validation_subjects = {
        subject
        for index, subject in enumerate(ordered)
        if np.floor((index + 1) * validation_fraction) > np.floor(index * validation_fraction)
    }
    if not validation_subjects or len(validation_subjects) == len(ordered):
        raise ValueError(
            f"{len(ordered)} subject(s) with validation_fraction={validation_fraction} leave training or "
            "validation empty (use 0 for a train-only datalist)"
        )
    training = [case for case in cases if case[subject_key] not in validation_subjects]
    validation = [case for case in cases if case[subject_key] in validation_subjects]
    return training, validation


def parity_split(
    cases: Sequence[Case], number: Callable[[Case], int], subject_key: str = "subject"
) -> tuple[list[Case], list[Case]]:
    """Training = cases whose subject ``number`` is even, validation = odd (the RW paper's ACDC and KiTS19 split).

    Raises:
        ValueError: one side is empty.
    """
    training = [case for case in cases if number(case) % 2 == 0]
    validation = [case for case in cases if number(case) % 2 == 1]
    if not training or not validation:
        raise ValueError(
            f"the even/odd split of {len(_subjects(cases, subject_key))} subject(s) leaves training or validation "
            "empty; use --split random"
        )
    return training, validation


def position_parity_split(cases: Sequence[Case], subject_key: str = "subject") -> tuple[list[Case], list[Case]]:
    """Subjects sorted by name; even positions (0, 2, ..) train, odd positions validate (the RW paper's BraTS18).

    Raises:
        ValueError: fewer than two subjects.
    """
    position = {subject: index for index, subject in enumerate(_subjects(cases, subject_key))}
    return parity_split(cases, lambda case: position[case[subject_key]], subject_key)


def holdout_folds(
    cases: Sequence[Case],
    fold: int,
    folds: int = SADICE_FOLDS,
    test_fraction: float = SADICE_TEST_FRACTION,
    seed: int = 0,
    subject_key: str = "subject",
) -> tuple[list[Case], list[Case], list[Case]]:
    """A seeded ``test_fraction`` of the subjects as test, the rest cut into ``folds`` cross-validation folds.

    ``test_fraction=0`` gives no test section: the folds cover all subjects (the SA Dice paper's 90/10 with
    ``folds=10``).

    The same ``seed`` gives the same test subjects and folds for every ``fold``, so that the folds are disjoint and
    together cover the non-test subjects.

    Returns:
        Training (the other folds), validation (fold ``fold``) and test entries.

    Raises:
        ValueError: ``fold`` outside ``[0, folds)``, or fewer subjects than ``folds + 1``.
    """
    if not 0 <= fold < folds:
        raise ValueError(f"fold must lie in [0, {folds}), got {fold}")
    subjects = _subjects(cases, subject_key)
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must lie in [0, 1), got {test_fraction}")
    if len(subjects) < folds + (test_fraction > 0):
        raise ValueError(f"{len(subjects)} subject(s) cannot make a test set of {test_fraction} and {folds} folds")
    rng = np.random.default_rng(seed)
    rng.shuffle(subjects)
    test_count = max(1, round(len(subjects) * test_fraction)) if test_fraction > 0 else 0
    test, pool = set(subjects[:test_count]), subjects[test_count:]
    validation = set(pool[fold::folds])
    training = set(pool) - validation
    return (
        _select(cases, training, subject_key),
        _select(cases, validation, subject_key),
        _select(cases, test, subject_key),
    )


def add_split_arguments(parser: argparse.ArgumentParser, default: str = "authors") -> None:
    """Add the split options: ``--split``, ``--seed``, ``--validation-fraction``, ``--shuffle``, ``--fold``, etc.

    ``--folds`` and ``--test-fraction`` choose the sadice folds and its optional held-out test section.
    """
    group = parser.add_argument_group(
        "split",
        "authors: the RW paper's even/odd split (default where the release has one); random: seeded, "
        "--validation-fraction of the subjects (0: train-only); explog: 70/30 training/validation (the scored 30 %), "
        f"shuffle --shuffle K of {EXPLOG_SHUFFLES} (the exp-log paper); sadice: the SA Dice paper's 90/10 with "
        f"cross-validation, fold --fold F of --folds (default {SADICE_PAPER_FOLDS}) as validation, optionally a "
        "--test-fraction held out first. Subjects never straddle sections.",
    )
    group.add_argument("--split", choices=SPLITS, default=default, help=f"protocol (default {default})")
    group.add_argument("--seed", type=int, default=0, help="seed of random, explog and sadice (default 0)")
    group.add_argument(
        "--validation-fraction", type=float, default=0.5, help="random: share of subjects for validation (default 0.5)"
    )
    group.add_argument("--shuffle", type=int, default=0, help=f"explog: shuffle 0..{EXPLOG_SHUFFLES - 1} (default 0)")
    group.add_argument("--fold", type=int, default=0, help="sadice: validation fold (default 0)")
    group.add_argument(
        "--folds", type=int, default=SADICE_PAPER_FOLDS, help=f"sadice: folds (default {SADICE_PAPER_FOLDS}: 90/10)"
    )
    group.add_argument(
        "--test-fraction",
        type=float,
        default=SADICE_PAPER_TEST_FRACTION,
        help="sadice: share of subjects held out as test before the folds (default 0: the paper's 90/10)",
    )


def make_split(
    cases: Sequence[Case],
    args: argparse.Namespace,
    authors: Callable[[Sequence[Case]], Split] | None,
    stratify_key: str | None = "group",
) -> Split:
    """Apply the protocol chosen by :func:`add_split_arguments`.

    Args:
        cases: checked entries with a ``subject``.
        args: parsed arguments.
        authors: the release's authors' split, or None when it has none.
        stratify_key: stratum of the random and explog splits.

    Raises:
        ValueError: the protocol does not apply (no authors' split for this release, bad ``--shuffle``/``--fold``,
            too few subjects).
    """
    if args.split == "authors":
        if authors is None:
            raise ValueError("this data set has no authors' split; choose --split random, explog or sadice")
        return authors(cases)
    if args.split == "random":
        training, validation = random_split(cases, args.validation_fraction, args.seed, stratify_key=stratify_key)
        record = {"protocol": "random", "seed": args.seed, "validation_fraction": args.validation_fraction}
        return Split({"training": training, "validation": validation}, record)
    if args.split == "explog":
        if not 0 <= args.shuffle < EXPLOG_SHUFFLES:
            raise OptionValueError(f"--shuffle must lie in [0, {EXPLOG_SHUFFLES}), got {args.shuffle}")
        training, test = random_split(cases, EXPLOG_TEST_FRACTION, (args.seed, args.shuffle), stratify_key=None)
        record = {"protocol": "explog", "seed": args.seed, "shuffle": args.shuffle, "test_fraction": 0.3}
        return Split({"training": training, "validation": test}, record)
    test_fraction = getattr(args, "test_fraction", SADICE_PAPER_TEST_FRACTION)
    folds = getattr(args, "folds", SADICE_PAPER_FOLDS)
    training, validation, test = holdout_folds(cases, args.fold, folds, test_fraction, seed=args.seed)
    record = {
        "protocol": "sadice",
        "seed": args.seed,
        "fold": args.fold,
        "folds": folds,
        "test_fraction": test_fraction,
    }
    sections = {"training": training, "validation": validation}
    if test_fraction > 0:
        sections["test"] = test
    return Split(sections, record)
