"""Labels on each input's own grid from class scores on the network's grid, in memory that does not grow with classes.

MONAI's usual postprocessing (softmax, ``Invertd`` of every class channel, argmax) carries all ``C`` class
probabilities through the inverse resampling: ``C`` float32 copies of the input volume, several times over. Linear
(and area or nearest) resampling treats channels independently, so the same labels come from inverting a few
channels at a time and keeping a running maximum: the peak then holds ``channels_per_step`` input-sized channels
instead of ``C``. The softmax is taken on the network grid with one shared log-sum-exp.

The class scores themselves are ``C`` copies of the network grid. For slice-wise networks on large volumes with
many classes, :class:`SlabLabelInferer` keeps them for a slab of slices at a time and returns the labels of the
network grid; ``InvertedArgmaxd(labels_given=True)`` then brings those labels back by nearest neighbour, in memory
that does not depend on the class count (label borders then follow the network grid).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.transforms import Invertd, InvertibleTransform, MapTransform


def count_non_finite(tensor: torch.Tensor) -> tuple[int, int]:
    """The numbers of NaN and of infinite values in ``tensor``."""
    return int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())


def _source_name(image: Any, default: str = "the image") -> str:
    """The file a (possibly batched) MetaTensor was read from, for error messages."""
    source = getattr(image, "meta", {}).get("filename_or_obj", default)
    return str(source[0] if isinstance(source, (list, tuple)) and source else source)


def _refuse_non_finite(counts: tuple[int, int], image: Any) -> None:
    """Raise naming the image's file when the network output held NaN or infinite values (``counts``)."""
    nan, inf = counts
    if nan or inf:
        raise ValueError(f"{_source_name(image)}: the network output holds {nan} NaN and {inf} infinite values")


class SlabLabelInferer(Inferer):
    """Labels ``(B, 1, *spatial)`` of a slice-wise inferer's class scores, computed a slab of slices at a time.

    A slice-wise network (``monai.inferers.SliceInferer``) treats every slice on its own, so running it on slabs of
    ``slab_slices`` slices gives the scores of the whole volume slab by slab; only one slab's ``C`` score channels
    exist at once, and the argmax of each slab is kept (as float32, the type MONAI's inverse resampling takes).

    Args:
        inferer: the slice-wise inferer (e.g. ``SliceInferer``), applied to each slab.
        spatial_dim: the spatial axis the slices are taken along (``SliceInferer``'s ``spatial_dim``).
        slab_slices: slices per slab.

    Raises:
        ValueError: ``slab_slices`` < 1; from ``__call__``: the scores hold NaN or infinite values (naming the file).
    """

    def __init__(self, inferer: Inferer, spatial_dim: int, slab_slices: int = 8) -> None:
        super().__init__()
        if slab_slices < 1:
            raise ValueError(f"slab_slices must be at least 1, got {slab_slices}")
        self.inferer = inferer
        self.spatial_dim = spatial_dim
        self.slab_slices = slab_slices

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> Any:
        """The label of every voxel of ``inputs`` (B, C_in, *spatial): the argmax over the network's classes."""
        axis = 2 + self.spatial_dim
        labels = None
        for start in range(0, inputs.shape[axis], self.slab_slices):
            slab = inputs.narrow(axis, start, min(self.slab_slices, inputs.shape[axis] - start))
            scores = self.inferer(slab, network, *args, **kwargs)
            _refuse_non_finite(count_non_finite(scores), inputs)
            slab_labels = torch.as_tensor(scores).argmax(1, keepdim=True).to(torch.float32)
            if labels is None:
                shape = list(slab_labels.shape)
                shape[axis] = inputs.shape[axis]
                labels = torch.empty(shape, dtype=torch.float32, device=slab_labels.device)
            labels.narrow(axis, start, slab_labels.shape[axis]).copy_(slab_labels)
            del scores, slab_labels
        return labels


class InvertedArgmaxd(MapTransform):
    """Replace class scores ``(C, *network grid)`` by labels ``(1, *input grid)``, inverting the preprocessing.

    Gives the labels of ``Activationsd(softmax=True)``, ``Invertd(nearest_interp=False)`` and
    ``AsDiscreted(argmax=True)`` in a row (ties go to the lower class, as ``argmax``).

    Args:
        keys: keys of the class scores (logits).
        transform: the preprocessing applied to ``orig_keys`` (e.g. the inference config's ``preprocessing``).
        orig_keys: key of the preprocessed image that carries the applied operations.
        softmax: turn logits into probabilities before the inverse resampling (as the usual pipeline does).
        channels_per_step: class channels inverted together: 1 holds least memory, ``C`` is the usual pipeline.
        argmax_first: take the argmax on the network grid and invert the labels by nearest neighbour: least
            memory and time, but label borders follow the network grid instead of interpolated probabilities.
        labels_given: the values are labels on the network grid already (:class:`SlabLabelInferer`): they are
            inverted by nearest neighbour, like ``argmax_first``.
        allow_missing_keys: don't raise an error for a missing key.

    Raises:
        ValueError: the scores hold NaN or infinite values (e.g. weights spoilt in training), naming the image.
    """

    def __init__(
        self,
        keys: KeysCollection,
        transform: InvertibleTransform,
        orig_keys: str = "image",
        softmax: bool = True,
        channels_per_step: int = 1,
        argmax_first: bool = False,
        labels_given: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if channels_per_step < 1:
            raise ValueError(f"channels_per_step must be at least 1, got {channels_per_step}")
        self.orig_keys = orig_keys
        self.softmax = softmax
        self.channels_per_step = channels_per_step
        self.argmax_first = argmax_first
        self.labels_given = labels_given
        nearest = argmax_first or labels_given
        self.inverter = Invertd("scores", transform, orig_keys=orig_keys, nearest_interp=nearest)

    def _invert(self, scores: torch.Tensor, data: Mapping[Hashable, Any]) -> MetaTensor:
        return self.inverter({"scores": MetaTensor(scores), self.orig_keys: data[self.orig_keys]})["scores"]

    def _chunks(self, scores: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """Views of ``channels_per_step`` channels with the index of their first channel."""
        return [
            (start, scores[start : start + self.channels_per_step])
            for start in range(0, len(scores), self.channels_per_step)
        ]

    def _log_total(self, scores: torch.Tensor) -> torch.Tensor:
        """``logsumexp`` over the channels, without a temporary as large as ``scores``."""
        maximum = scores.amax(0, keepdim=True)
        total = torch.zeros_like(maximum)
        for _, chunk in self._chunks(scores):
            total += torch.exp(chunk - maximum).sum(0, keepdim=True)
        return maximum + torch.log(total)

    def labels(self, scores: torch.Tensor, data: Mapping[Hashable, Any]) -> MetaTensor:
        """Labels ``(1, *input grid)`` for the scores ``(C, *network grid)`` of the image in ``data``."""
        scores = scores.as_tensor() if isinstance(scores, MetaTensor) else scores
        if self.labels_given:
            return self._invert(scores.to(torch.float32), data).round().to(torch.int16)
        counts = [count_non_finite(chunk) for _, chunk in self._chunks(scores)]
        _refuse_non_finite((sum(count[0] for count in counts), sum(count[1] for count in counts)), data[self.orig_keys])
        if self.argmax_first:
            return self._invert(scores.argmax(0, keepdim=True).to(torch.float32), data).round().to(torch.int16)
        log_total = self._log_total(scores) if self.softmax else None
        best_value, best_label, meta = None, None, {}
        for start, chunk in self._chunks(scores):
            inverted = self._invert(torch.exp(chunk - log_total) if self.softmax else chunk, data)
            meta = meta or dict(inverted.meta)  # holds the affine of the input grid
            value, label = inverted.as_tensor().max(0, keepdim=True)
            label = label.to(torch.int16) + start
            if best_value is None:
                best_value, best_label = value, label
            else:
                better = value > best_value  # strict: a tie keeps the lower class, as argmax does
                best_value = torch.where(better, value, best_value)
                best_label = torch.where(better, label, best_label)
            del inverted, value, label
        return MetaTensor(best_label, meta=meta)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Replace the scores of each key by their labels on the input grid."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.labels(d[key], d)
        return d
