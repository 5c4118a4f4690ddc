"""A whole study in one call: demo data, settings record, runs through the executor, table, and ``--status``.

``OUT/study.json`` records the study, the data set and the bundle settings of the first call; a later call with
other settings or data is refused (its completed runs would be mixed with runs of other settings), while ``--runs``
and ``--only`` may change (more runs are added, complete runs are reused).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.data.settings import check_data_value
from common.evaluation.studies.runs import (
    RunSpec,
    StudyOptions,
    execute,
    make_run_specs,
    run_state,
    runs_per_bundle,
    selected_bundles,
)
from common.evaluation.studies.spec import REPO_ROOT, Study, StudyError
from common.evaluation.studies.table import write_outputs
from common.files import write_text_atomic

DEMO_DATA = "demo_data"


def write_demo_release(study: Study, output_dir: Path) -> Path:
    """Write the study's small synthetic release (its ``demo.data``) under ``OUT/demo_data`` once; reuse it after.

    The project's writers make the release in the study's layout: ``common.data.synthetic_acdc.write_acdc_dataset``
    (ACDC), ``common.data.synthetic_releases.write_fake_brats`` / ``write_fake_kits19`` / ``write_fake_msd``.
    """
    root = output_dir / DEMO_DATA / study.layout
    marker = root / ".complete"
    if marker.is_file():
        return root
    if root.exists():
        raise StudyError(f"{root}: an unfinished demo release is in the way; remove it and call again")
    data = dict(study.demo.get("data") or {})
    seed = int(data.pop("seed", 0))
    if study.layout == "acdc":
        from common.data.synthetic_acdc import write_acdc_dataset

        write_acdc_dataset(
            root,
            num_subjects=int(data.get("subjects", 10)),
            seed=seed,
            shape=tuple(data.get("shape", (64, 64, 8))),
            spacing=tuple(data.get("spacing", (1.25, 1.25, 10.0))),
        )
    else:
        from common.data import synthetic_releases as fake_releases

        shape = tuple(data.get("shape", (16, 16, 8)))
        count = int(data.get("subjects", 8))
        if study.layout == "brats":
            fake_releases.write_fake_brats(root, n_subjects=count, shape=shape, seed=seed)
        elif study.layout == "kits19":
            fake_releases.write_fake_kits19(root, n_cases=count, shape=shape, seed=seed)
        else:
            names = tuple(data.get("label_names", ("background", "structure")))
            fake_releases.write_fake_msd(root, n_cases=count, shape=shape, seed=seed, label_names=names)
    write_text_atomic("demo release written by scripts/run_study.py\n", marker)
    return root


def study_settings(study: Study, options: StudyOptions) -> dict[str, Any]:
    """The bundle settings of every run: the study's, the demo's (with ``--demo``), then ``--set``; all checked."""
    settings = {**study.settings, **(study.demo.get("settings", {}) if options.demo else {}), **options.settings}
    for key, value in settings.items():
        check_data_value(value, f"{study.path} setting {key}" if key not in options.settings else f"--set {key}")
    return settings


def _record(study: Study, options: StudyOptions, dataset_dir: Path, settings: dict[str, Any]) -> None:
    """Write ``OUT/study.json`` on the first call; refuse a later call with another study, data or settings."""
    record = {"study": study.name, "dataset_dir": str(dataset_dir.resolve()), "demo": options.demo}
    record["settings"] = settings
    path = options.output_dir / "study.json"
    if path.is_file():
        earlier = json.loads(path.read_text(encoding="utf-8"))
        for key in ("study", "dataset_dir", "demo", "settings"):
            if earlier.get(key) != json.loads(json.dumps(record[key])):
                raise StudyError(
                    f"{path}: this folder holds runs of {key} {earlier.get(key)!r}, not {record[key]!r}; "
                    "use another --output_dir (or the same options)"
                )
        return
    write_text_atomic(json.dumps(record, indent=2) + "\n", path)


def check_output_dir(options: StudyOptions) -> None:
    """Refuse an OUT inside the repository's bundles (runs must never write into the repository's bundles)."""
    output = options.output_dir.resolve()
    if output == REPO_ROOT or REPO_ROOT / "bundles" in (output, *output.parents):
        raise StudyError(
            f"--output_dir {options.output_dir}: inside the repository's bundles; choose a folder elsewhere"
        )
    if output.exists() and not output.is_dir():
        raise StudyError(f"--output_dir {options.output_dir}: exists and is not a folder")


def _run_dirs(study: Study, options: StudyOptions) -> dict[str, list[Path]]:
    count = runs_per_bundle(study, options)
    base = options.output_dir / "runs"
    return {bundle: [base / bundle / f"run_{index}" for index in range(count)] for bundle in study.bundles}


def status_lines(study: Study, options: StudyOptions) -> list[str]:
    """One line per run of the selected bundles: state, time and detail."""
    lines = []
    submitit_dir = options.output_dir / "submitit" if (options.output_dir / "submitit").is_dir() else None
    total = 0.0
    for bundle in selected_bundles(study, options):
        for directory in _run_dirs(study, options)[bundle]:
            state = run_state(directory, submitit_dir)
            seconds = "" if state.seconds is None else f" {state.seconds:.0f} s"
            total += state.seconds if state.state == "complete" and state.seconds else 0.0
            detail = f" - {state.detail}" if state.detail else ""
            lines.append(f"{bundle}/{directory.name}: {state.state}{seconds}{detail}")
    lines.append(f"complete runs took {total:.0f} s in all (training + evaluation)")
    return lines


def run_study(study: Study, options: StudyOptions, report: Callable[[str], None] = print) -> int:
    """Prepare, run (resuming and retrying what is not complete) and collect a study; the exit status.

    Returns:
        0 when every run is complete and the table is written, 1 when some runs failed (the table holds the others),
        3 when SLURM jobs were submitted without waiting.

    Raises:
        StudyError: a user error (options, data, study file, OUT of another study).
    """
    check_output_dir(options)
    if options.demo == (options.dataset_dir is not None):
        raise StudyError("give either --dataset_dir DIR or --demo")
    if options.max_parallel < 1:
        raise StudyError(f"--max_parallel must be at least 1, got {options.max_parallel}")
    if options.runs is not None and options.runs < 1:
        raise StudyError(f"--runs must be at least 1, got {options.runs}")
    selected_bundles(study, options)
    settings = study_settings(study, options)
    if options.dataset_dir is not None and not options.dataset_dir.is_dir():
        raise StudyError(f"--dataset_dir {options.dataset_dir}: not a folder")
    options.output_dir.mkdir(parents=True, exist_ok=True)
    dataset_dir = write_demo_release(study, options.output_dir) if options.demo else options.dataset_dir
    assert dataset_dir is not None
    _record(study, options, dataset_dir, settings)
    started = time.perf_counter()
    specs: list[RunSpec] = make_run_specs(study, options, dataset_dir, settings)
    outcomes = execute(specs, options, report)
    submitted = [label for label, outcome in outcomes.items() if outcome["state"] == "submitted"]
    if submitted:
        report(f"{len(submitted)} run(s) submitted; call again (same options) to wait and collect, --status to look")
        return 3
    written = write_outputs(study, _run_dirs(study, options), options.output_dir)
    report(f"wrote {', '.join(str(path) for path in written.values())}")
    failed = {label: outcome for label, outcome in outcomes.items() if outcome["state"] == "failed"}
    reused = sum(1 for outcome in outcomes.values() if outcome.get("reused"))
    report(f"{len(specs)} run(s): {reused} reused, {len(failed)} failed, in {time.perf_counter() - started:.0f} s")
    for label, outcome in failed.items():
        report(f"failed {label}: {outcome.get('message')} (log: {outcome.get('log')}); the next call retries it")
    return 1 if failed else 0
