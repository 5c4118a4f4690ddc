"""Study runs: their folders, splits, states and commands, and their execution through submitit executors.

Each run is one bundle trained and evaluated by the bundle's own ``python -m monai.bundle run`` (train, then
``['train.yaml','evaluate.yaml']``) with ``--bundle_root OUT/runs/BUNDLE/run_K``, so that nothing is written into
the repository. A run's folder records its state in small JSON files written atomically:

- ``running.json``: host, process id and start time of the attempt in progress;
- ``done.json``: written after the evaluation; a run with it is never trained again;
- ``failed.json``: the last attempt's error and log; the run is tried again on the next call;
- ``submitted.json``: the SLURM job id, so that a later call neither submits the run again while it is queued
  nor loses track of it.

Training always passes ``--resume True``: without ``models/checkpoint.pt`` the bundle starts a new training, with
one it continues the interrupted run from its last complete epoch. A run whose ``models/model.pt`` exists (training
ended) is only evaluated.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.data.settings import as_bundle_flag
from common.evaluation.studies.spec import LAYOUTS, REPO_ROOT, Study, StudyError
from common.files import write_text_atomic

PER_CASE_CSV = Path("eval") / "evaluation" / "case_metrics_per_case.csv"
VALIDATION_CSV = Path("eval") / "validation_metrics.csv"
SLURM_ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING", "READY"}
LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # submitit's default (5 min) would kill real runs
# settings the study sets for every run (locations, split, resume): a --set must not move or replace them
STUDY_KEYS = frozenset(
    {
        "bundle_root",
        "ckpt_dir",
        "ckpt_path",
        "output_dir",
        "dataset_dir",
        "datalist",
        "seed",
        "resume",
        "resume_checkpoint",
        "overwrite",
        "pretrained_ckpt",
        "finetune",
        "evaluation_dir",
        "keep_earlier_results",
        "imports",
        "initialize",
        "run",
        "finalize",
    }
)
STUDY_KEY_SUFFIXES = ("_dir", "_path", "_file", "_ckpt", "_checkpoint", "_csv", "filename")


def is_study_key(key: str) -> bool:
    """Whether the study sets ``key`` (or a location below it) itself, so that a ``--set`` may not."""
    parts = key.split("#")
    return parts[0] in STUDY_KEYS or any(part.endswith(STUDY_KEY_SUFFIXES) for part in parts)


@dataclass(frozen=True)
class StudyOptions:
    """How to run a study (the command line of ``scripts/run_study.py``).

    Attributes:
        output_dir: OUT; everything is written under it.
        dataset_dir: the release folder in the study's layout (None with ``demo``).
        demo: write a synthetic release under OUT and use the study's tiny ``demo`` settings.
        executor: ``local``, ``slurm`` or ``debug``.
        max_parallel: runs at once (local: processes; slurm: the job array's parallelism).
        runs: runs per bundle (default: the study's, or its demo's).
        only: bundles to run (default: all of the study's).
        settings: bundle settings for every run (checked data, ``common.data.settings``).
        gpus_per_run: GPUs of each run; more than one trains with torchrun and ``configs/multi_gpu_train.yaml``.
        partition, time_min, mem, cpus_per_run, slurm_extra, slurm_setup: SLURM job options.
        wait: wait for SLURM jobs and collect (False: submit and return; a later call collects).
        extra_train_configs: config files appended to every training (tests: e.g. a kill overlay).
    """

    output_dir: Path
    dataset_dir: Path | None = None
    demo: bool = False
    executor: str = "local"
    max_parallel: int = 1
    runs: int | None = None
    only: tuple[str, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)
    gpus_per_run: int = 0
    partition: str | None = None
    time_min: int | None = None
    mem: str | None = None
    cpus_per_run: int | None = None
    slurm_extra: dict[str, str] = field(default_factory=dict)
    slurm_setup: tuple[str, ...] = ()
    wait: bool = True
    extra_train_configs: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunSpec:
    """Everything one run needs; picklable, so that submitit can carry it to another process or node."""

    bundle: str
    index: int
    run_dir: str
    bundle_dir: str
    dataset_dir: str
    datalist: str
    seed: int
    settings: dict[str, Any]
    gpus: int = 0
    extra_train_configs: tuple[str, ...] = ()
    python: str = sys.executable

    @property
    def label(self) -> str:
        """``BUNDLE/run_K``."""
        return f"{self.bundle}/run_{self.index}"


@dataclass(frozen=True)
class RunState:
    """A run's state for ``--status``.

    ``complete``, ``running``, ``queued``, ``failed``, ``interrupted`` or ``pending``, its time in seconds (training +
    evaluation, or elapsed) and a detail (log path, job id).
    """

    state: str
    seconds: float | None = None
    detail: str = ""


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_json(data: dict[str, Any], path: Path) -> None:
    write_text_atomic(json.dumps(data, indent=2, sort_keys=True) + "\n", path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def runs_per_bundle(study: Study, options: StudyOptions) -> int:
    """``--runs``, else the demo's count with ``--demo``, else the study's (the paper's)."""
    if options.runs is not None:
        return options.runs
    return int(study.demo.get("runs", study.runs)) if options.demo else study.runs


def selected_bundles(study: Study, options: StudyOptions) -> list[str]:
    """The study's bundles, or those of ``--only`` (which must belong to the study)."""
    if not options.only:
        return study.bundles
    unknown = [bundle for bundle in options.only if bundle not in study.bundles]
    if unknown:
        raise StudyError(f"--only: {', '.join(unknown)} not in study {study.name} (its bundles: {study.bundles})")
    return [bundle for bundle in study.bundles if bundle in options.only]


def split_arguments(study: Study, index: int) -> tuple[str, list[str]]:
    """The split of run ``index``: a file name and the preparation script's split options."""
    if study.vary == "shuffle":
        return f"explog_shuffle{index}", ["--split", "explog", "--shuffle", str(index)]
    if study.vary == "fold":
        return f"sadice_fold{index}", ["--split", "sadice", "--fold", str(index)]
    return "split", []  # seeds: one split (the preparation script's default, e.g. the RW authors')


def prepare_split(study: Study, dataset_dir: Path, output_dir: Path, index: int) -> Path:
    """Write run ``index``'s datalist under ``OUT/splits/`` with the project's preparation script (once).

    Raises:
        StudyError: the script wrote no datalist (its last line names the cause).
    """
    name, arguments = split_arguments(study, index)
    datalist = output_dir / "splits" / f"{name}.json"
    if datalist.is_file():
        return datalist
    datalist.parent.mkdir(parents=True, exist_ok=True)
    script = REPO_ROOT / "scripts" / LAYOUTS[study.layout]
    command = [sys.executable, str(script), str(dataset_dir), "--output", str(datalist), *arguments]
    command += list(study.prepare_args)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    log = output_dir / "splits" / f"{name}.log"
    write_text_atomic(" ".join(command) + "\n" + result.stdout + result.stderr, log)
    if not datalist.is_file():
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise StudyError(f"{dataset_dir}: preparing the {name} datalist failed: {last[0]} (see {log})")
    return datalist


def make_run_specs(study: Study, options: StudyOptions, dataset_dir: Path, settings: dict[str, Any]) -> list[RunSpec]:
    """Prepare the splits and describe every run of the selected bundles (seeds, shuffles or folds per study)."""
    count = runs_per_bundle(study, options)
    datalists = {index: prepare_split(study, dataset_dir, options.output_dir, index) for index in range(count)}
    specs = []
    for bundle in selected_bundles(study, options):
        extra = study.demo.get("bundle_settings", {}).get(bundle, {}) if options.demo else {}
        bundle_settings = {**settings, **extra}
        for key in [key for key, value in extra.items() if value is None]:  # null: leave the bundle's own value
            bundle_settings.pop(key)
        for index in range(count):
            specs.append(
                RunSpec(
                    bundle=bundle,
                    index=index,
                    run_dir=str((options.output_dir / "runs" / bundle / f"run_{index}").resolve()),
                    bundle_dir=str(REPO_ROOT / "bundles" / bundle),
                    dataset_dir=str(dataset_dir.resolve()),
                    datalist=str(datalists[index].resolve()),
                    seed=index if study.vary == "seed" else 0,
                    settings=bundle_settings,
                    gpus=options.gpus_per_run,
                    extra_train_configs=options.extra_train_configs,
                )
            )
    return specs


def bundle_command(spec: RunSpec, configs: list[str], torchrun: bool = False) -> list[str]:
    """``python -m monai.bundle run`` (or ``torchrun``) of ``configs`` with the run's locations and settings."""
    bundle = Path(spec.bundle_dir)
    config_files = [str(bundle / "configs" / name) if "/" not in name else name for name in configs]
    if torchrun:
        command = [spec.python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={spec.gpus}"]
        command += ["-m", "monai.bundle", "run"]
    else:
        command = [spec.python, "-m", "monai.bundle", "run"]
    command += ["--config_file", repr(config_files) if len(config_files) > 1 else config_files[0]]
    command += ["--logging_file", str(bundle / "configs" / "logging.conf")]
    command += ["--bundle_root", spec.run_dir, "--dataset_dir", spec.dataset_dir, "--datalist", spec.datalist]
    for key, value in spec.settings.items():
        command += [f"--{key}", as_bundle_flag(value)]
    return command


def training_command(spec: RunSpec) -> list[str]:
    """Train (or resume) the run; several GPUs: torchrun with the bundle's ``multi_gpu_train.yaml``."""
    configs = ["train.yaml", *(["multi_gpu_train.yaml"] if spec.gpus > 1 else []), *spec.extra_train_configs]
    return [*bundle_command(spec, configs, torchrun=spec.gpus > 1), "--seed", str(spec.seed), "--resume", "True"]


def evaluation_command(spec: RunSpec, overwrite: bool) -> list[str]:
    """Score the final model on the scored set (the datalist's ``validation``): per-case CSV under ``eval/``."""
    return [*bundle_command(spec, ["train.yaml", "evaluate.yaml"]), "--overwrite", str(overwrite)]


def _run_logged(command: list[str], log_path: Path, cwd: str) -> int:
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        return subprocess.run(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, check=False).returncode


def _failure(run_dir: Path, step: str, code: int, log_path: Path, started: float) -> dict[str, Any]:
    lines = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    cause = lines[-1] if lines else "no output"
    message = f"{step} failed (exit status {code}): {cause}"
    record = {"state": "failed", "message": message, "log": str(log_path), "seconds": time.time() - started}
    _write_json(record, run_dir / "failed.json")
    return record


def execute_run(spec: RunSpec) -> dict[str, Any]:
    """Train (or resume) and evaluate one run, unless it is complete; the job function of every executor.

    Returns:
        ``done.json``'s content, or ``{"state": "failed", "message", "log"}`` (also written as ``failed.json``).
    """
    run_dir = Path(spec.run_dir)
    done = _read_json(run_dir / "done.json")
    if done is not None:
        return done
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "failed.json").unlink(missing_ok=True)
    started = time.time()
    _write_json({"host": socket.gethostname(), "pid": os.getpid(), "started": started}, run_dir / "running.json")
    _write_json(asdict(spec), run_dir / "run.json")
    try:
        train_seconds = 0.0
        if not (run_dir / "models" / "model.pt").is_file():
            log_path = run_dir / "train.log"
            code = _run_logged(training_command(spec), log_path, spec.bundle_dir)
            if code != 0 or not (run_dir / "models" / "model.pt").is_file():
                return _failure(run_dir, "training", code, log_path, started)
            train_seconds = time.time() - started
        evaluation_started = time.time()
        log_path = run_dir / "evaluate.log"
        code = _run_logged(evaluation_command(spec, (run_dir / PER_CASE_CSV).exists()), log_path, spec.bundle_dir)
        if code != 0 or not (run_dir / PER_CASE_CSV).is_file():
            return _failure(run_dir, "evaluation", code, log_path, started)
        record = {
            "state": "complete",
            "bundle": spec.bundle,
            "run": spec.index,
            "seed": spec.seed,
            "datalist": spec.datalist,
            "train_seconds": round(train_seconds, 3),
            "evaluate_seconds": round(time.time() - evaluation_started, 3),
            "finished": time.time(),
        }
        _write_json(record, run_dir / "done.json")  # the completion marker, after the evaluation
        return record
    finally:
        (run_dir / "running.json").unlink(missing_ok=True)


def _slurm_state(job_id: str, folder: Path) -> str:
    import submitit

    try:
        return str(submitit.SlurmJob(folder=folder, job_id=job_id).state)
    except Exception:  # noqa: BLE001 - sacct unavailable: treat as unknown, never as finished
        return "UNKNOWN"


def run_state(run_dir: Path, submitit_dir: Path | None = None) -> RunState:
    """The state of a run from its folder (see the module docstring); ``submitit_dir`` to ask SLURM."""
    done = _read_json(run_dir / "done.json")
    if done is not None:
        return RunState("complete", done.get("train_seconds", 0.0) + done.get("evaluate_seconds", 0.0))
    running = _read_json(run_dir / "running.json")
    if running is not None and running.get("host") == socket.gethostname() and _pid_alive(int(running["pid"])):
        return RunState("running", time.time() - float(running["started"]), f"pid {running['pid']}")
    submitted = _read_json(run_dir / "submitted.json")
    if submitted is not None and submitit_dir is not None:
        state = _slurm_state(str(submitted["job_id"]), submitit_dir)
        if state in SLURM_ACTIVE or state == "UNKNOWN":
            return RunState("queued" if state == "PENDING" else "running", None, f"slurm job {submitted['job_id']}")
    failed = _read_json(run_dir / "failed.json")
    if failed is not None:
        return RunState("failed", failed.get("seconds"), f"{failed.get('message')} (log: {failed.get('log')})")
    if running is not None or (run_dir / "models" / "checkpoint.pt").exists():
        epochs = 0
        if (run_dir / VALIDATION_CSV).is_file():
            epochs = max(0, len((run_dir / VALIDATION_CSV).read_text(encoding="utf-8").strip().splitlines()) - 1)
        return RunState("interrupted", None, f"resumes from its last complete epoch ({epochs} validated)")
    return RunState("pending")


def make_executor(options: StudyOptions, folder: Path) -> Any:
    """A submitit executor for ``options.executor`` with the run resources (GPUs, time, memory, SLURM lines)."""
    import submitit

    executor = submitit.AutoExecutor(folder=folder, cluster=options.executor)
    parameters: dict[str, Any] = {"name": "study", "tasks_per_node": 1, "nodes": 1}
    parameters["timeout_min"] = options.time_min or LOCAL_TIMEOUT_MIN
    if options.gpus_per_run:
        parameters["gpus_per_node"] = options.gpus_per_run
    if options.cpus_per_run:
        parameters["cpus_per_task"] = options.cpus_per_run
    if options.executor == "slurm":
        parameters["slurm_array_parallelism"] = options.max_parallel
        if options.partition:
            parameters["slurm_partition"] = options.partition
        if options.mem:
            parameters["slurm_mem"] = options.mem
        if options.slurm_extra:
            parameters["slurm_additional_parameters"] = dict(options.slurm_extra)
        setup = [f"cd {REPO_ROOT}", *options.slurm_setup]
        parameters["slurm_setup"] = setup
    executor.update_parameters(**parameters)
    return executor


def _outcome(spec: RunSpec, job: Any) -> dict[str, Any]:
    try:
        return job.result()
    except Exception as error:  # noqa: BLE001 - a crashed job is a failed run, reported with its submitit log
        paths = getattr(job, "paths", None)
        log = str(paths.stderr) if paths is not None else ""
        message = f"job failed: {str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__}"
        record = {"state": "failed", "message": message, "log": log}
        _write_json(record, Path(spec.run_dir) / "failed.json")
        return record


def execute(specs: list[RunSpec], options: StudyOptions, report: Any = print) -> dict[str, dict[str, Any]]:
    """Run the runs that are not complete, queued or running, through the chosen submitit executor.

    ``local``: one process per run, at most ``max_parallel`` submitted and unfinished at once; ``debug``: in this
    process, one after the other; ``slurm``: one job per run, submitted as one array limited to ``max_parallel``
    running tasks, then (with ``wait``) waited for.

    Returns:
        Run label -> outcome (``done.json``/``failed.json`` content, or ``{"state": "submitted", "job_id"}``).
    """
    folder = options.output_dir / "submitit"
    submitit_dir = folder if options.executor == "slurm" else None
    todo, outcomes = [], {}
    for spec in specs:
        state = run_state(Path(spec.run_dir), submitit_dir)
        if state.state == "complete":
            outcomes[spec.label] = {"state": "complete", "reused": True}
        elif state.state in ("running", "queued"):
            outcomes[spec.label] = {"state": state.state, "detail": state.detail}
            report(f"{spec.label}: {state.state} ({state.detail}); not started again")
        else:
            todo.append(spec)
    if not todo:
        return outcomes
    executor = make_executor(options, folder)
    if options.executor == "slurm":
        with executor.batch():
            jobs = [executor.submit(execute_run, spec) for spec in todo]
        for spec, job in zip(todo, jobs, strict=True):
            _write_json({"job_id": str(job.job_id), "submitted": time.time()}, Path(spec.run_dir) / "submitted.json")
            report(f"{spec.label}: submitted as slurm job {job.job_id}")
        if not options.wait:
            return {
                **outcomes,
                **{
                    spec.label: {"state": "submitted", "job_id": job.job_id}
                    for spec, job in zip(todo, jobs, strict=True)
                },
            }
        for spec, job in zip(todo, jobs, strict=True):
            outcomes[spec.label] = _outcome(spec, job)
            report(f"{spec.label}: {outcomes[spec.label]['state']}")
        return outcomes
    pending, active = list(todo), []
    while pending or active:
        while pending and len(active) < max(1, options.max_parallel):
            spec = pending.pop(0)
            report(f"{spec.label}: started")
            active.append((spec, executor.submit(execute_run, spec)))
        finished = [(spec, job) for spec, job in active if options.executor == "debug" or job.done()]
        if not finished:
            time.sleep(0.5)
            continue
        for spec, job in finished:
            active.remove((spec, job))
            outcomes[spec.label] = _outcome(spec, job)
            outcome = outcomes[spec.label]
            detail = f": {outcome['message']} (log: {outcome['log']})" if outcome["state"] == "failed" else ""
            report(f"{spec.label}: {outcome['state']}{detail}")
    return outcomes
