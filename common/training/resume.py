"""Resumable training: the whole training state saved after every epoch, and per-epoch reseeding for exact resumes.

Files of a training run in ``models/`` besides the final weights (:mod:`common.networks.weights`):

- ``checkpoint.pt``: the whole training state (network, optimiser, LR schedule, loss, trainer), written
  atomically after every epoch by :class:`ResumableTraining` for ``--resume True``.
- ``model_best.pt``: best-by-validation weights, only when a selection split separate from the scored split is
  used (:class:`AtomicCheckpointSaver`).

:class:`ResumableTraining` restarts from ``checkpoint.pt`` and, at every epoch start, reseeds PyTorch, NumPy,
``random`` and the MONAI random transforms of the training data from ``(seed, epoch, rank)``, so an interrupted
and resumed training draws the same batches and reaches the same weights as an uninterrupted one. Every epoch also
starts a new pass of the data loader right after the reseeding, so an epoch's batches depend on ``(seed, epoch)``
alone, also when ``iterations_per_epoch`` is not a multiple of the loader's length (otherwise the pass running at
an epoch's end, whose shuffle was drawn in the previous epoch, would continue into the next one, and a resumed
run would start a fresh pass there instead). A resume asked for fewer epochs than the checkpoint holds is refused.
Epoch-dependent settings that handlers derive from ``engine.state.epoch`` follow from the restored epoch.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.data.utils import set_rnd
from monai.handlers import CheckpointSaver

from common.errors import CheckpointError, UserError
from common.files import atomic_output
from common.networks.weights import is_main_process, load_weights_only, unwrap_module

MAX_SEED = 2**32
# what a refused resume tells the user to do
_FIX_RESUME = "resume with the settings of that run, or start over: --overwrite True, or another --bundle_root"


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class AtomicDiskSaver(DiskSaver):
    """Ignite ``DiskSaver`` writing atomically (temporary file + rename, readable by group and others).

    Args:
        dirname: folder of the checkpoints.
        filename: fixed file name replacing the one ignite builds (as MONAI's ``CheckpointSaver`` does); a fixed
            file is replaced by the atomic rename and never removed first, so it exists at every moment.
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, require_empty=False, atomic=True)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        """Write ``checkpoint`` to the fixed file name, or to ``filename``."""
        super().__call__(checkpoint=checkpoint, filename=self.filename or filename, metadata=metadata)

    def remove(self, filename: str) -> None:
        """Remove an old checkpoint; with a fixed file name the next save replaces it, so nothing is removed."""
        if self.filename is None:
            super().remove(filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """:class:`monai.handlers.CheckpointSaver` with atomic writes and a savable state.

    Takes the arguments of MONAI's saver. Its files (final, best key metric, interval) go through
    :class:`AtomicDiskSaver`. ``state_dict``/``load_state_dict`` carry the record of saved files and their
    scores, so that a resumed training keeps comparing new key metrics with the best one of the earlier part.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in self._checkpoints().values():  # keep the fixed file names of MONAI's savers
            filename = getattr(checkpoint.save_handler, "filename", None)
            checkpoint.save_handler = AtomicDiskSaver(self.save_dir, filename)

    def _checkpoints(self) -> dict[str, Checkpoint]:
        named = {
            "final": self._final_checkpoint,
            "key_metric": self._key_metric_checkpoint,
            "interval": self._interval_checkpoint,
        }
        return {name: checkpoint for name, checkpoint in named.items() if checkpoint is not None}

    def state_dict(self) -> dict[str, Any]:
        """The saved files and their scores, per kind of checkpoint."""
        return {name: dict(checkpoint.state_dict()) for name, checkpoint in self._checkpoints().items()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        for name, checkpoint in self._checkpoints().items():
            if name in state_dict:
                checkpoint.load_state_dict(state_dict[name])


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 32-bit seed for one epoch of one process, a fixed function of ``(seed, epoch, rank)``."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(rank)]).generate_state(1)[0])


def load_checkpoint(filename: str | os.PathLike, load_dict: Mapping[str, Any], map_location: Any = "cpu") -> None:
    """Load a checkpoint written by :class:`ResumableTraining` into the objects of ``load_dict``.

    Loading uses ``torch.load(..., weights_only=True)``: a checkpoint is data, never code.

    Args:
        filename: checkpoint file.
        load_dict: name -> object with ``load_state_dict`` (modules are loaded strictly).
        map_location: where tensors are loaded.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file cannot be read, lacks an entry of ``load_dict``, or does not fit an object (e.g. a
            checkpoint of another network); one line naming the file and the entry. It is a ``ValueError``.
    """
    path = Path(filename)
    state = load_weights_only(path, map_location)
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path}: not a training checkpoint (a {type(state).__name__}, not a dictionary); {_FIX_RESUME}"
        )
    missing = [name for name in load_dict if name not in state]
    if missing:
        raise CheckpointError(
            f"{path}: has no {missing} entries (it holds {sorted(state)}); not this training's checkpoint; "
            f"{_FIX_RESUME}"
        )
    for name, obj in load_dict.items():
        try:
            unwrap_module(obj).load_state_dict(state[name])
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointError(
                f"{path}: its '{name}' does not fit this training ({first_line[:300]}); written with other network "
                f"or optimiser settings (or another data set)? {_FIX_RESUME}"
            ) from error


def _epochs_done(filename: Path, map_location: Any) -> int | None:
    """The number of complete epochs a checkpoint of :class:`ResumableTraining` holds (None if it does not say)."""
    state = load_weights_only(filename, map_location)
    trainer = state.get("trainer") if isinstance(state, dict) else None
    epoch = trainer.get("epoch") if isinstance(trainer, dict) else None
    if epoch is None and isinstance(trainer, dict) and trainer.get("epoch_length"):
        epoch = int(trainer.get("iteration", 0)) // int(trainer["epoch_length"])
    return int(epoch) if isinstance(epoch, int | float) else None


class ResumableTraining:
    """Save the training state after every epoch (atomically, rank 0 only), resume from it, reseed each epoch.

    Attach it after the trainer's other handlers (from the config's ``run`` section), so that its save runs after
    the LR scheduler step and the validation of the epoch.

    Args:
        filename: checkpoint file, e.g. ``models/checkpoint.pt``.
        save_dict: name -> object with ``state_dict``/``load_state_dict`` (network, optimizer, lr_scheduler,
            :class:`AtomicCheckpointSaver`, ...); the trainer itself is added as ``"trainer"``; None entries
            (components disabled in the config) are left out.
        seed: base seed of the per-epoch reseeding.
        resume: at the start, load ``filename`` if it exists (a missing file starts a new training).
        save_interval: save every this many epochs.
        map_location: where tensors of the checkpoint are loaded (the optimiser moves its state to its
            parameters' device).
        name: logger name.
    """

    def __init__(
        self,
        filename: str | os.PathLike,
        save_dict: Mapping[str, Any],
        seed: int = 0,
        resume: bool = False,
        save_interval: int = 1,
        map_location: Any = "cpu",
        name: str | None = None,
    ) -> None:
        if not isinstance(resume, bool):
            raise TypeError(f"resume must be True or False, got {resume!r}")
        if "trainer" in save_dict:
            raise ValueError("save_dict must not name an entry 'trainer': the trainer's state is saved under it")
        if save_interval < 1:
            raise ValueError(f"save_interval must be at least 1, got {save_interval}")
        self.filename = Path(filename)
        self.save_dict = {name: obj for name, obj in save_dict.items() if obj is not None}
        self.seed = int(seed)
        self.resume = resume
        self.save_interval = save_interval
        self.map_location = map_location
        self.logger = logging.getLogger(name or __name__)

    def attach(self, engine: Engine) -> None:
        """Register loading (``STARTED``), reseeding (``EPOCH_STARTED``) and saving (``EPOCH_COMPLETED``)."""
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_STARTED, self.reseed)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save)

    def load(self, engine: Engine) -> None:
        """Restore the state of every object and the trainer's epoch and iteration, keeping its ``max_epochs``.

        Raises:
            UserError: the checkpoint holds more epochs than the run asks for (``--epochs``): resuming would
                replace the final weights of a longer run with those of the checkpoint's last epoch.
            CheckpointError: the checkpoint does not fit (see :func:`load_checkpoint`).
        """
        if not self.filename.is_file():
            self.logger.info(f"{self.filename}: no checkpoint yet, training starts at epoch 1")
            return
        max_epochs = engine.state.max_epochs
        done = _epochs_done(self.filename, self.map_location)
        if done is not None and max_epochs is not None and done > max_epochs:
            raise UserError(
                f"{self.filename}: holds {done} epochs of training, more than the {max_epochs} asked for (--epochs); "
                f"resume with --epochs {done} or more, or start over with --overwrite True or another --bundle_root"
            )
        load_checkpoint(self.filename, {**self.save_dict, "trainer": engine}, self.map_location)
        engine.state.max_epochs = max_epochs
        self.logger.info(f"{self.filename}: resumed after epoch {engine.state.epoch} of {max_epochs}")

    def reseed(self, engine: Engine) -> None:
        """Seed the random generators and the training data's random transforms, then start a new data pass.

        The new pass (a new loader iterator: its shuffle and its workers' seeds drawn from the reseeded generators)
        makes the epoch's batches a function of ``(seed, epoch, rank)`` only, whatever pass the previous epoch
        ended in; a resumed run, which starts a new pass, then draws what an uninterrupted one draws.
        """
        seed = epoch_seed(self.seed, engine.state.epoch, _rank())
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        loader = engine.state.dataloader
        dataset = getattr(loader, "dataset", None)
        if dataset is not None:
            set_rnd(dataset, seed)  # used without workers; workers seed themselves from torch's generator
        if loader is not None:
            engine.set_data(loader)  # a new pass from the epoch's seed (the iterator is created here)

    def save(self, engine: Engine) -> None:
        """Write the state atomically (on rank 0 of a distributed run only)."""
        if not is_main_process():
            return
        state = {name: unwrap_module(obj).state_dict() for name, obj in self.save_dict.items()}
        state["trainer"] = engine.state_dict()
        with atomic_output(self.filename) as tmp_path:
            torch.save(state, tmp_path)
