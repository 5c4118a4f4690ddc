"""Network weights files: the final weights with the network settings they were trained with, saved and loaded.

``models/model.pt`` holds the FINAL weights of the trained network as a bare state dict (what the model zoo's
``ckpt_export``, ``monai.bundle.load`` and MONAI's ``CheckpointLoader`` read), written atomically when training
completes by :class:`FinalWeightsSaver`. It holds every weight of the trained network, deep-supervision heads
included, and the bundles' inference configs build the same network (eval mode returns the main output only), so
that every tool loads it strictly and ``monai.bundle.load`` of either config gets all weights from the file. The
network settings of the run (classes, input channels, filters, patch size, spacing, label values: the config's
``network_settings``) travel inside it in the state dict's ``_metadata`` (PyTorch's own per-state-dict metadata,
kept by ``torch.save``/``torch.load(weights_only=True)`` and ignored by ``load_state_dict``), so the file stays
loadable by every tool; :func:`read_network_settings` reads them and :func:`load_network_weights` refuses weights
whose settings differ from the config's, naming both values. ``models/model_pretrained.pt`` holds weights a bundle
shipped with (``models/model.pt`` of a downloaded bundle), kept by :func:`keep_pretrained_weights` before a training
run replaces ``model.pt``; the run starts from them.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

from common.errors import CheckpointError
from common.files import atomic_output

NETWORK_SETTINGS_KEY = "network_settings"  # entry of the state dict's ``_metadata`` holding the network settings


def is_main_process() -> bool:
    """Whether this is the only process, or rank 0 of a distributed run (the one that writes files)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def unwrap_module(obj: Any) -> Any:
    """The module inside ``DistributedDataParallel``/``DataParallel``, so that checkpoints do not depend on it."""
    return obj.module if isinstance(obj, torch.nn.DataParallel | torch.nn.parallel.DistributedDataParallel) else obj


def _plain(value: Any) -> Any:
    """``value`` as plain JSON data (tuples to lists, tensors and NumPy values to Python numbers)."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, torch.Tensor | np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"network setting {value!r}: not plain data (numbers, strings, lists, mappings)")


# what a refusal of weights from elsewhere (another data set or network) tells the user to do, per use
FIX_EVALUATION = (
    "use the weights of a run trained with these settings and data (its --bundle_root, or --ckpt_path), or train "
    "one first in another --bundle_root"
)
FIX_FINETUNE = (
    "train in another --bundle_root (a new data set), --finetune False to train from scratch, or --overwrite True "
    "to replace the earlier run"
)


def load_weights_only(path: Path, map_location: Any) -> Any:
    """``torch.load(weights_only=True)`` of ``path``: a checkpoint is data, never code.

    Raises:
        FileNotFoundError: no such file (the message names ``--ckpt_path``).
        CheckpointError: a truncated, foreign or not weights-only file (a pickle that would run code); one line
            naming the file. It is a ``ValueError``.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found; train the bundle first or pass --ckpt_path")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for foreign, truncated or malicious files
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"{path}: cannot read as a weights-only PyTorch checkpoint ({type(error).__name__}: {first_line[:300]}); "
            "it is truncated, not a PyTorch file, or holds objects that would run code on loading (refused)"
        ) from error


def read_network_state(checkpoint: str | os.PathLike, map_location: Any = "cpu") -> dict[str, torch.Tensor]:
    """Read the network weights of a checkpoint as a bare state dict (``weights_only`` loading).

    Accepts a bare state dict (``model.pt``) or a training checkpoint holding it under ``"model"``; the
    ``module.`` prefixes of a ``DistributedDataParallel`` network are removed. The state dict's ``_metadata``
    (which carries the network settings, see :func:`read_network_settings`) is kept.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is not a checkpoint holding tensors (the message names it); a ``ValueError``.
    """
    path = Path(checkpoint)
    state = load_weights_only(path, map_location)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors (nor one under 'model'); not network weights")
    if all(key.startswith("module.") for key in state):  # saved from DistributedDataParallel
        metadata = getattr(state, "_metadata", None)
        state = OrderedDict((key.removeprefix("module."), value) for key, value in state.items())
        if metadata is not None:
            state._metadata = metadata  # type: ignore[attr-defined]
    return state


def network_settings_of(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The network settings stored with a state dict by :func:`save_network_weights` (empty if none)."""
    metadata = getattr(state, "_metadata", None) or {}
    settings = metadata.get(NETWORK_SETTINGS_KEY, {})
    return dict(settings) if isinstance(settings, Mapping) else {}


def read_network_settings(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The network settings a weights file was saved with (``{}`` for weights saved without them).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a weights file (the message names it).
    """
    return network_settings_of(read_network_state(checkpoint))


def trained_settings(checkpoint: str | os.PathLike, defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The settings a config should take from its weights: those stored in ``checkpoint`` over ``defaults``.

    Inference configs read their class count, label values and class names from it (``@ckpt_path``), so that a
    trained bundle runs without retyping them; before training (no file yet: model-zoo checks, TorchScript export)
    the config's ``defaults`` apply. A value the user sets instead is checked against the stored one when the
    weights are loaded (:func:`check_network_settings` names both).

    Args:
        checkpoint: weights file, e.g. ``models/model.pt``; it need not exist.
        defaults: the config's values for settings the file does not store (or when there is no file).

    Raises:
        ValueError: the file exists but is not a weights file (the message names it).
    """
    path = Path(checkpoint)
    stored = read_network_settings(path) if path.is_file() else {}
    return {**dict(defaults or {}), **stored}


def save_network_weights(
    network: torch.nn.Module, filename: str | os.PathLike, settings: Mapping[str, Any] | None = None
) -> Path:
    """Write the network's state dict with its settings, atomically (readers never see a partial file).

    Every weight is written, deep-supervision heads included: the bundles' training and inference configs build
    networks with the same weights (the inference network leaves the heads unused), and load the file strictly.

    Args:
        network: the network (``DistributedDataParallel`` unwrapped).
        filename: destination, e.g. ``models/model.pt``; replaced if it exists.
        settings: network settings (plain data: classes, channels, filters, patch size, spacing, label values).

    Returns:
        The file written.
    """
    state = unwrap_module(network).state_dict()
    saved = OrderedDict((key, value.detach().cpu()) for key, value in state.items())
    saved._metadata = OrderedDict(getattr(state, "_metadata", {}))  # type: ignore[attr-defined]
    saved._metadata[NETWORK_SETTINGS_KEY] = _plain(dict(settings or {}))  # type: ignore[attr-defined]
    path = Path(filename)
    with atomic_output(path) as tmp_path:
        torch.save(saved, tmp_path)
    return path


def check_network_settings(
    found: Mapping[str, Any], expected: Mapping[str, Any], source: str | os.PathLike, fix: str | None = None
) -> None:
    """Compare the settings stored with weights to those of the config, on the keys both name.

    Args:
        found: the settings stored with the weights.
        expected: the config's.
        source: the weights file (named in the message).
        fix: what the user can do, for the caller's use of the weights (default: set the checkpoint's values or
            use weights trained with the config's).

    Raises:
        CheckpointError: a setting differs; one line naming the file, both values of every difference and the
            options that fix it. It is a ``ValueError``.
    """
    differences = [
        f"{key}: {_plain(found[key])!r} in the checkpoint, {_plain(expected[key])!r} in the config"
        for key in sorted(set(found) & set(expected))
        if _plain(found[key]) != _plain(expected[key])
    ]
    if differences:
        fix = fix or "set the checkpoint's values (e.g. --num_classes) or use weights trained with the config's"
        raise CheckpointError(
            f"{source}: trained with other network settings than the config ({'; '.join(differences)}); {fix}"
        )


def load_network_weights(
    network: torch.nn.Module,
    checkpoint: str | os.PathLike,
    settings: Mapping[str, Any] | None = None,
    map_location: Any = "cpu",
    fix: str | None = None,
) -> torch.nn.Module:
    """Load a weights file into ``network``, checking the stored network settings first.

    Strict: a key missing on either side (deep-supervision heads included: left at their initialisation they would
    pass unnoticed) or a tensor of another shape is an error naming both values.

    Args:
        network: the network to load (``DistributedDataParallel`` unwrapped).
        checkpoint: ``model.pt`` (bare state dict) or a training checkpoint with a ``"model"`` entry.
        settings: the config's network settings; those the checkpoint also stores must be equal.
        map_location: where tensors are loaded.
        fix: what a refusal tells the user to do (see :func:`check_network_settings`).

    Returns:
        ``network``, loaded.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: unreadable file, other settings, or weights of another network: one line naming the file
            and the keys and shapes that differ. It is a ``ValueError``.
    """
    state = read_network_state(checkpoint, map_location)
    check_network_settings(network_settings_of(state), settings or {}, checkpoint, fix)
    target = unwrap_module(network)
    expected = target.state_dict()
    kinds = {
        "missing in the checkpoint": [key for key in expected if key not in state],
        "in the checkpoint, not in the network": [key for key in state if key not in expected],
        "other shapes": [
            f"{key} {tuple(state[key].shape)} in the checkpoint, {tuple(value.shape)} in the network"
            for key, value in expected.items()
            if key in state and state[key].shape != value.shape
        ],
    }
    problems = [
        f"{kind}: {', '.join(items[:2])}{f' and {len(items) - 2} more' if len(items) > 2 else ''}"
        for kind, items in kinds.items()
        if items
    ]
    if problems:
        raise CheckpointError(
            f"{checkpoint}: does not fit the network {type(target).__name__} ({'; '.join(problems)}); weights of "
            f"another network or network settings; {fix or FIX_EVALUATION}"
        )
    target.load_state_dict(state)
    return network


class FinalWeightsSaver:
    """Write the final network weights with their settings (``models/model.pt``) when training completes.

    A MONAI/ignite handler (``attach``) for the trainer's rank-0 handlers; the file is replaced atomically.

    Args:
        network: the trained network.
        filename: destination, e.g. ``models/model.pt``.
        settings: the config's ``network_settings`` (see :func:`save_network_weights`).
    """

    def __init__(
        self, network: torch.nn.Module, filename: str | os.PathLike, settings: Mapping[str, Any] | None = None
    ) -> None:
        self.network = network
        self.filename = Path(filename)
        self.settings = _plain(dict(settings or {}))
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        """Save at ``Events.COMPLETED`` (after the last epoch's validation)."""
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Write the weights (rank 0 of a distributed run only)."""
        if is_main_process():
            save_network_weights(self.network, self.filename, self.settings)
            self.logger.info(f"{self.filename}: final weights after epoch {engine.state.epoch}")


class NetworkWeightsLoader:
    """Load ``model.pt`` into a network when an evaluator (or trainer) starts, via :func:`load_network_weights`.

    Replaces MONAI's ``CheckpointLoader`` in the bundles: settings stored with the weights must match the config's
    (a mismatch names both values), and a network that does not fit is refused in one line naming the keys.

    Args:
        load_path: weights file.
        network: network to load.
        settings: the config's ``network_settings``.
        map_location: where tensors are loaded.
        fix: what a refusal tells the user to do (default: evaluate the weights of a run trained with these
            settings, :data:`FIX_EVALUATION`).
    """

    def __init__(
        self,
        load_path: str | os.PathLike,
        network: torch.nn.Module,
        settings: Mapping[str, Any] | None = None,
        map_location: Any = "cpu",
        fix: str | None = None,
    ) -> None:
        self.load_path = Path(load_path)
        self.network = network
        self.settings = dict(settings or {})
        self.map_location = map_location
        self.fix = fix or FIX_EVALUATION

    def attach(self, engine: Engine) -> None:
        """Load at ``Events.STARTED``."""
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        """Load the weights."""
        load_network_weights(self.network, self.load_path, self.settings, self.map_location, self.fix)


def keep_pretrained_weights(
    network: torch.nn.Module,
    model_path: str | os.PathLike,
    pretrained_path: str | os.PathLike,
    settings: Mapping[str, Any] | None = None,
    finetune: bool = True,
    overwrite: bool = False,
) -> Path | None:
    """Keep the weights a bundle shipped with and start a training run from them (fine-tuning).

    A training run replaces ``model.pt`` with its final weights. If ``model.pt`` exists when a run starts (a
    downloaded bundle's weights), it is first copied to ``pretrained_path`` (``models/model_pretrained.pt``),
    unless that copy exists already or ``overwrite`` is True (``--overwrite True`` starts over and may replace it).
    With ``finetune`` the network then starts from ``pretrained_path`` when it exists.

    Args:
        network: the training network.
        model_path: ``models/model.pt``.
        pretrained_path: where the shipped weights are kept.
        settings: the config's ``network_settings`` (the shipped weights must fit them).
        finetune: initialise the network from ``pretrained_path``; False trains from scratch (still keeping it).
        overwrite: the run's ``overwrite`` setting.

    Returns:
        The weights the network starts from, or None (random initialisation).

    Raises:
        TypeError: ``finetune`` or ``overwrite`` is not a bool.
        CheckpointError: the kept weights do not fit the network or its settings (another data set in the same
            folder): one line naming the file, the differences and the options that fix it (:data:`FIX_FINETUNE`).
    """
    for name, flag in (("finetune", finetune), ("overwrite", overwrite)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    model_path, pretrained_path = Path(model_path), Path(pretrained_path)
    if not pretrained_path.exists() and model_path.is_file() and not overwrite and is_main_process():
        with atomic_output(pretrained_path) as tmp_path:
            shutil.copyfile(model_path, tmp_path)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # every rank reads the copy rank 0 made
    if not (finetune and pretrained_path.is_file()):
        return None
    load_network_weights(network, pretrained_path, settings, fix=FIX_FINETUNE)
    logging.getLogger(__name__).info(f"{pretrained_path}: training starts from these weights")
    return pretrained_path
