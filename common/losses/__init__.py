"""Segmentation losses of the three papers, MONAI-style `_Loss` subclasses."""

from common.losses.deep_supervision import NNUNetDeepSupervisionLoss, nnunet_deep_supervision_weights
from common.losses.exp_log import ExpLogLoss, label_weights_from_datalist, label_weights_from_frequencies
from common.losses.multi_resolution import MultiResolutionLoss
from common.losses.region_wise import RegionWiseLoss, RWCombinedLoss, RWWeightedCrossEntropyLoss
from common.losses.sa_dice import SADiceCELoss, SADiceLoss

__all__ = [
    "ExpLogLoss",
    "MultiResolutionLoss",
    "NNUNetDeepSupervisionLoss",
    "RWCombinedLoss",
    "RWWeightedCrossEntropyLoss",
    "RegionWiseLoss",
    "SADiceCELoss",
    "SADiceLoss",
    "label_weights_from_datalist",
    "label_weights_from_frequencies",
    "nnunet_deep_supervision_weights",
]
