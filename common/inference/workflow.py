"""Folder inference as a standard MONAI inference workflow (the pieces the bundles' ``inference.yaml`` builds).

``inference.yaml`` declares the folder plan (:class:`common.inference.folders.FolderPlan`: every NIfTI file under
``dataset_dir`` and its mirrored output under ``output_dir``), wraps its cases in a :class:`CaseDataset`, and runs a
:class:`FolderEvaluator` (a ``SupervisedEvaluator``), which makes the plan when it runs (so the config initialises
with default folders that do not exist) and whose postprocessing brings the labels back to each input's
grid (:class:`common.inference.inversion.InvertedArgmaxd`) and whose :class:`SegmentationWriter` handler writes
them. A case that fails anywhere (reading, checks, network, inversion, writing) is recorded with its reason and the
run goes on; ``FolderReport.conclude`` prints the summary and exits with status 1 when a case failed.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.data import Dataset
from monai.engines import SupervisedEvaluator

from common.inference.folders import FolderPlan, FolderReport
from common.inference.segmentations import write_segmentation


def failure_reason(error: BaseException, path: str | os.PathLike) -> str:
    """One line for the summary: the innermost cause of ``error`` (MONAI wraps transform errors in RuntimeErrors).

    The file name is dropped when the message starts with it (the summary line names the file already).
    """
    while error.__cause__ is not None and (isinstance(error, RuntimeError) or not str(error)):
        error = error.__cause__
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if message.startswith(f"{os.fspath(path)}: "):
        return message.removeprefix(f"{os.fspath(path)}: ")
    if isinstance(error, ValueError | FileNotFoundError | FileExistsError | OSError) and message:
        return message
    return f"{type(error).__name__}: {message}"


class CaseDataset(Dataset):
    """MONAI ``Dataset`` over the planned cases that turns a case's preprocessing error into a recorded failure.

    An item whose transform fails becomes ``{"source", "output", "error"}`` (the error's one-line reason), so that
    one bad file neither stops the data loader nor the run; :class:`FolderEvaluator` records it.
    """

    def _transform(self, index: int) -> Any:
        try:
            return super()._transform(index)
        except Exception as error:  # any file-specific failure; the reason goes to the summary
            case = self.data[index]
            return {"source": case["source"], "output": case["output"], "error": failure_reason(error, case["source"])}


class FolderEvaluator(SupervisedEvaluator):
    """``SupervisedEvaluator`` over a :class:`CaseDataset` that records a failing case and goes on to the next.

    The folder is planned when the evaluator runs, not when it is built: its data loader's dataset must hold the
    plan's ``cases`` list, which :meth:`FolderPlan.make` fills.

    Args:
        folder: the cases to segment and the report where failures go.
        *args, **kwargs: those of ``SupervisedEvaluator``; the data loader must use batches of one case.
    """

    def __init__(self, folder: FolderPlan, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.folder = folder
        self.report = folder.report

    def run(self) -> None:
        """Plan the folder (user errors in the folder options stop here), then segment the planned cases."""
        self.folder.make()
        self.state.epoch_length = len(self.data_loader)
        if self.state.epoch_length:  # nothing to segment (all kept or left out): the summary says why
            super().run()

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict[str, Any]) -> Any:
        sources = batchdata["source"]
        if "error" in batchdata:
            for source, reason in zip(sources, batchdata["error"], strict=True):
                self.report.fail(source, reason)
            engine.state.batch = engine.state.output = []
            return []
        try:
            return super()._iteration(engine, batchdata)
        except Exception as error:  # network, inversion or label mapping failed for these cases only
            for source in sources:
                self.report.fail(source, failure_reason(error, source))
            engine.state.batch = engine.state.output = []
            return []


class SegmentationWriter:
    """Handler writing each segmented case's labels to its planned output on the input's own geometry.

    Args:
        report: records each written file, or the reason it could not be written.
        overwrite: replace existing outputs (the plan already left out those it may not replace).
        pred_key: key of the labels ``(1, *input grid)`` in the engine output.
    """

    def __init__(self, report: FolderReport, overwrite: bool = False, pred_key: str = "pred") -> None:
        self.report = report
        self.overwrite = overwrite
        self.pred_key = pred_key

    def attach(self, engine: Engine) -> None:
        """Write after every iteration."""
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Write the cases of the iteration that just finished, then release them."""
        batch, output = engine.state.batch or [], engine.state.output or []
        for case, result in zip(batch, output, strict=True):
            try:
                labels = torch.as_tensor(result[self.pred_key]).detach().cpu().numpy()[0]
                written = write_segmentation(labels, case["source"], case["output"], replace=self.overwrite)
            except Exception as error:  # a full disk or lost permissions fail this case only
                self.report.fail(case["source"], failure_reason(error, case["source"]))
                continue
            self.report.written.append(written)
        engine.state.batch = engine.state.output = None  # free this case before the next one is loaded
