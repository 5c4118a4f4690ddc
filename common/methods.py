"""The losses each paper compares, selected by name from a bundle config (``--method NAME`` on the command line).

Every bundle trains its paper's proposal by default and the paper's baselines with one override, without
another bundle: the name picks the loss, the training target it reads and, for the RW paper, the RW map.

- RW paper (:data:`RW_METHODS`): ``rw`` (RW loss on RRW maps, the proposal), ``boundary`` (Dice + RW-Boundary with
  the gradual alpha schedule), ``dice``, ``focal`` (gamma 2, no alpha) and ``rrw_ce`` (CE weighted by the RRW map).
- Exponential logarithmic paper (:data:`EXP_LOG_METHODS`): ``exp_log`` (with ``gamma``), ``log_dice``,
  ``linear_dice`` and ``weighted_ce``.
- SA Dice paper (:data:`SA_DICE_METHODS`): ``sa_dice``, ``sa_dice_wmla`` (alpha 1, 0.1, 0.01) and
  ``sa_dice_wmla_trainable``.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.losses import DiceLoss, FocalLoss
from torch.nn.modules.loss import _Loss

from common.losses import (
    ExpLogLoss,
    MultiResolutionLoss,
    RegionWiseLoss,
    RWCombinedLoss,
    RWWeightedCrossEntropyLoss,
    SADiceLoss,
)

# method -> (batch key the loss reads as its target, RW map the target needs or None)
RW_METHODS: dict[str, tuple[str, str | None]] = {
    "rw": ("rw_map", "rrw"),
    "boundary": ("target", "boundary"),
    "dice": ("label", None),
    "focal": ("label", None),
    "rrw_ce": ("target", "rrw"),
}
EXP_LOG_METHODS = ("exp_log", "log_dice", "linear_dice", "weighted_ce")
SA_DICE_METHODS = ("sa_dice", "sa_dice_wmla", "sa_dice_wmla_trainable")


def _check(method: str, known: Sequence[str], paper: str) -> None:
    if method not in known:
        raise ValueError(f"unknown {paper} method {method!r}; choose one of {list(known)}")


def rw_target_key(method: str) -> str:
    """Batch key holding the target of an RW-paper method: ``rw_map``, ``label`` or ``target`` (label + map)."""
    _check(method, RW_METHODS, "RW-paper")
    return RW_METHODS[method][0]


def rw_map_type(method: str) -> str:
    """RW map a method trains with (``rrw`` for methods that need none, so that the map key always exists)."""
    _check(method, RW_METHODS, "RW-paper")
    return RW_METHODS[method][1] or "rrw"


def rw_loss(method: str = "rw") -> _Loss:
    """Loss of one output for an RW-paper method (wrap it for deep supervision).

    Args:
        method: ``rw``, ``boundary``, ``dice``, ``focal`` or ``rrw_ce``.

    Returns:
        The loss; ``boundary`` returns an :class:`RWCombinedLoss` whose ``set_epoch`` the bundle's
        ``AlphaScheduleHandler`` calls.

    Raises:
        ValueError: an unknown method.
    """
    _check(method, RW_METHODS, "RW-paper")
    if method == "rw":
        return RegionWiseLoss(include_background=True, softmax=True)
    if method == "boundary":
        return RWCombinedLoss(region="dice", schedule="gradual")
    if method == "dice":
        return DiceLoss(include_background=True, to_onehot_y=True, softmax=True)
    if method == "focal":
        return FocalLoss(include_background=True, to_onehot_y=True, use_softmax=True, gamma=2.0)
    return RWWeightedCrossEntropyLoss()


def exp_log_loss(
    method: str = "exp_log", gamma: float = 0.3, label_weights: Sequence[float] | None = None
) -> ExpLogLoss:
    """Loss of one output for the exponential logarithmic paper's methods (all are :class:`ExpLogLoss` forms).

    Args:
        method: ``exp_log`` (``0.8 * Dice term + 0.2 * weighted CE term``, both with ``gamma``), ``log_dice``,
            ``linear_dice`` or ``weighted_ce``.
        gamma: exponent of ``exp_log`` (0.3 best; 1 and 2 studied); the other methods use 1.
        label_weights: ``w_l`` of the cross-entropy term (:func:`common.losses.label_weights_from_datalist`).

    Raises:
        ValueError: an unknown method.
    """
    _check(method, EXP_LOG_METHODS, "exponential logarithmic")
    target = {"to_onehot_y": True, "softmax": True}
    if method == "exp_log":
        return ExpLogLoss(w_dice=0.8, w_cross=0.2, gamma=gamma, label_weights=label_weights, **target)
    if method == "weighted_ce":
        return ExpLogLoss(w_dice=0.0, w_cross=1.0, gamma=1.0, label_weights=label_weights, **target)
    return ExpLogLoss(w_dice=1.0, w_cross=0.0, gamma=1.0, dice_form=method.removesuffix("_dice"), **target)


def sa_dice_loss(method: str = "sa_dice_wmla", alpha: Sequence[float] = (1.0, 0.1, 0.01)) -> MultiResolutionLoss:
    """SA Dice over the network's multi-resolution outputs for the SA Dice paper's methods.

    Args:
        method: ``sa_dice`` (main output only: the coarser outputs get weight 0), ``sa_dice_wmla`` (fixed
            ``alpha``) or ``sa_dice_wmla_trainable`` (``alpha[1:]`` learnt; give ``loss.parameters()`` to the
            optimiser).
        alpha: WMLA weights from full resolution down, ``alpha[0] = 1``.

    Raises:
        ValueError: an unknown method.
    """
    _check(method, SA_DICE_METHODS, "SA Dice")
    dice = SADiceLoss(include_background=True, to_onehot_y=True, softmax=True)
    if method == "sa_dice":
        return MultiResolutionLoss(dice, alpha=[1.0] + [0.0] * (len(alpha) - 1))
    return MultiResolutionLoss(dice, alpha=alpha, trainable=method == "sa_dice_wmla_trainable")
