"""Run the RW bundles while interfaces of parallel work are absent (compact maps, loading without heads).

The bundles are written for compact RRW maps (``RWMapd(compact=True)``, ``RegionWiseLoss(compact=True)``,
target ``[label, map]``). Where the installed ``common`` predates that interface, :func:`dense_overrides` gives the
config overrides that train the same bundle on dense maps: ``compact`` dropped, and ``RegionWiseLoss`` reading the
dense map alone as its target. Once the interface exists they are empty and the tests run the bundles as shipped.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

from common import checkpoint
from common.losses import RegionWiseLoss

COMPACT_MAPS = "compact" in inspect.signature(RegionWiseLoss.__init__).parameters


def _without_compact(component: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in component.items() if key != "compact"}


def dense_overrides(train_config: str | Path) -> dict[str, Any]:
    """Overrides of ``train_config`` for dense maps; empty when the losses take ``compact``."""
    if COMPACT_MAPS:
        return {}
    parser = ConfigParser()
    parser.read_config(str(train_config))
    inner_loss = parser["loss"].get("loss") if isinstance(parser["loss"], dict) else None
    if not isinstance(inner_loss, dict) or "_target_" not in inner_loss:  # not an RW-family bundle
        return {}
    overrides: dict[str, Any] = {"loss#loss": _without_compact(inner_loss)}
    if isinstance(parser["train"].get("rw_map"), dict):  # Dice and Focal pairings define no map
        overrides["train#rw_map"] = _without_compact(parser["train"]["rw_map"])
    if inner_loss["_target_"] == "common.losses.RegionWiseLoss":
        overrides["label_keys"] = ["rw_map"]  # the dense map alone is the target (the crop still reads `label`)
    return overrides


def heads_overrides(inference_config: str | Path) -> dict[str, Any]:
    """Inference overrides that load training weights with deep-supervision heads where no loader drops them.

    The RW bundles' inference network has no heads; ``common.checkpoint.load_network_weights`` drops the heads'
    weights when loading. Where it is absent, the inference network is built with the training network's heads
    (evaluation mode returns the same single output).
    """
    if hasattr(checkpoint, "load_network_weights"):
        return {}
    parser = ConfigParser()
    parser.read_config(str(inference_config))
    if parser["network_def"].get("_target_") != "DynUNet":
        return {}
    return {
        "network_def#_target_": "common.networks.DeepSupervisionDynUNet",
        "network_def#deep_supervision": True,
        "network_def#deep_supr_num": 3,
    }
