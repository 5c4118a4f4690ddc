"""Batch preparation of the trainers and evaluators: which keys of a batch are the network input and the target.

Referenced from bundle configs, e.g.::

    prepare_batch: {_target_: common.training.batches.PrepareBatchKeys, image_key: image, target_key: target}
"""

from __future__ import annotations

from typing import Any

import torch
from monai.engines.utils import PrepareBatch


class PrepareBatchKeys(PrepareBatch):
    """Take the network input and the loss target from named keys of a dictionary batch.

    MONAI's default reads ``image`` and ``label``; the RW-loss bundles train against an RW map stored under
    another key (``rw_map``) while keeping the label for cropping and metrics.

    Args:
        image_key: key of the network input.
        target_key: key of the target handed to the loss (and to the metrics).
    """

    def __init__(self, image_key: str = "image", target_key: str = "label") -> None:
        self.image_key = image_key
        self.target_key = target_key

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(input, target)`` moved to ``device``."""
        return tuple(
            batchdata[key].to(device=device, non_blocking=non_blocking, **kwargs)
            for key in (self.image_key, self.target_key)
        )
