"""The evaluation handler: every case of an evaluator scored per structure, the tables written when it completes."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.data import decollate_batch

from common.errors import ensure_absent
from common.evaluation.metrics import StructureResult, evaluate_case, label_map, spacing_from_affine
from common.evaluation.tables import format_summary, summarize, write_results_csv, write_summary_csv

if TYPE_CHECKING:
    from ignite.engine import Engine


logger = logging.getLogger(__name__)


IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".npy", ".npz", ".png")


def _case_source(label: torch.Tensor, fallback: str) -> str:
    """The label MetaTensor's source file (``filename_or_obj``), or ``fallback`` when it has none."""
    meta = getattr(label, "meta", {}) or {}
    return str(meta.get("filename_or_obj") or fallback)


def _strip_image_suffix(name: str) -> str:
    suffix = next((s for s in IMAGE_SUFFIXES if name.lower().endswith(s)), "")
    return name[: len(name) - len(suffix)]


def case_ids(sources: Sequence[str]) -> dict[str, str]:
    """Distinct case ids for source files: the path below the folder that holds them all, image suffix removed.

    File names alone are not enough: ``siteA/patient001/label.nii.gz`` and ``siteB/patient001/label.nii.gz`` must stay
    two cases (``siteA/patient001/label`` and ``siteB/patient001/label``); files of one folder keep their stem.
    Names without an image suffix (not files) are kept as they are; files whose names differ only in the suffix
    keep it.

    Args:
        sources: source file paths (and other names), any order, repeats allowed.

    Returns:
        Mapping of each distinct source to its id.
    """
    files = sorted({source for source in sources if source.lower().endswith(IMAGE_SUFFIXES)})
    ids = {source: source for source in sources}
    if files:
        root = os.path.commonpath([os.path.dirname(os.path.abspath(source)) for source in files])
        relative = {source: Path(os.path.relpath(os.path.abspath(source), root)).as_posix() for source in files}
        stripped = {source: _strip_image_suffix(name) for source, name in relative.items()}
        counts = Counter(stripped.values())  # x.nii and x.nii.gz of one folder keep their suffixes
        ids.update(
            {source: stripped[source] if counts[stripped[source]] == 1 else relative[source] for source in files}
        )
    return ids


def _default_output_transform(output: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(pred, label)`` channel-first pairs from a MONAI evaluator output (decollated list or batched dict)."""
    items = output if isinstance(output, list) else decollate_batch(output)
    return [(item["pred"], item["label"]) for item in items]


class CaseMetricsWriter:
    """Ignite handler that evaluates every case of an evaluator epoch and writes CSV files.

    Attach it to a MONAI `SupervisedEvaluator` (for example from a bundle's ``evaluate.yaml``). After each iteration
    it converts every decollated ``pred``/``label`` pair to label maps (argmax over channels unless there is a single
    channel), reads the spacing from the label MetaTensor's affine and the case name from its ``filename_or_obj``,
    and computes `evaluate_case`. At the end of the epoch the rows of all processes are gathered and rank 0 writes
    ``<output_dir>/<prefix>_per_case.csv`` and ``<output_dir>/<prefix>_summary.csv`` and logs the summary.

    Args:
        output_dir: folder of the CSV files.
        structures: structure name to label values (see `class_structures`, `brats_regions`).
        prefix: file-name prefix.
        output_transform: maps ``engine.state.output`` to a list of ``(pred, label)`` channel-first tensors.
        overwrite: replace existing CSV files; otherwise existing files raise when the run starts.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        structures: Mapping[str, Sequence[int]],
        prefix: str = "metrics",
        output_transform: Callable[[Any], list[tuple[torch.Tensor, torch.Tensor]]] = _default_output_transform,
        overwrite: bool = False,
    ) -> None:
        self.structures = {name: tuple(int(v) for v in values) for name, values in structures.items()}
        self.per_case_path = Path(output_dir) / f"{prefix}_per_case.csv"
        self.summary_path = Path(output_dir) / f"{prefix}_summary.csv"
        self.output_transform = output_transform
        self.overwrite = overwrite
        self.results: list[StructureResult] = []
        self.summary: list[dict[str, Any]] = []
        self._wrote_files = False  # files written by an earlier epoch of this run may be replaced

    def attach(self, engine: Engine) -> None:
        """Register the handler's callbacks on ``engine``."""
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.check_outputs)
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def check_outputs(self, engine: Engine) -> None:
        """Fail before evaluating anything when the output files exist and may not be overwritten."""
        ensure_absent(self.per_case_path, self.summary_path, overwrite=self.overwrite or self._wrote_files)

    def reset(self, engine: Engine) -> None:
        """Forget the results of a previous epoch."""
        self.results = []

    def iteration_completed(self, engine: Engine) -> None:
        """Evaluate the cases of the current iteration."""
        for index, (pred, label) in enumerate(self.output_transform(engine.state.output)):
            affine = getattr(label, "affine", None)
            spatial_dims = label.ndim - 1
            spacing = spacing_from_affine(affine)[:spatial_dims] if affine is not None else None
            case = _case_source(label, fallback=f"iteration{engine.state.iteration}_item{index}")
            self.results.extend(evaluate_case(label_map(pred), label_map(label), self.structures, spacing, case=case))

    def epoch_completed(self, engine: Engine) -> None:
        """Gather the rows of all processes, write the CSV files on rank 0 and log the summary."""
        import ignite.distributed as idist

        serialized = json.dumps([asdict(r) for r in self.results])
        gathered = idist.all_gather(serialized) if idist.get_world_size() > 1 else [serialized]
        rows = [row for part in gathered for row in json.loads(part)]
        ids = case_ids([row["case"] for row in rows])
        self.results = [StructureResult(**{**row, "case": ids[row["case"]]}) for row in rows]
        self.summary = summarize(self.results)
        if idist.get_rank() != 0:
            return
        pairs = Counter((result.case, result.structure) for result in self.results)
        repeated = sorted({case for (case, _), count in pairs.items() if count > 1})
        if repeated:  # the table keeps every row; compare_runs.py refuses it until the datalist is fixed
            logger.warning("case(s) evaluated more than once (listed twice in the datalist?): %s", ", ".join(repeated))
        overwrite = self.overwrite or self._wrote_files
        write_results_csv(self.results, self.per_case_path, overwrite=overwrite)
        write_summary_csv(self.summary, self.summary_path, overwrite=overwrite)
        self._wrote_files = True
        logger.info("Per-case metrics written to %s\n%s", self.per_case_path, format_summary(self.summary))
