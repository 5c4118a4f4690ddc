"""Segmentation losses of the three papers, MONAI-style `_Loss` subclasses."""

from common.losses.region_wise import RegionWiseLoss, RWCombinedLoss, RWWeightedCrossEntropyLoss

__all__ = ["RegionWiseLoss", "RWCombinedLoss", "RWWeightedCrossEntropyLoss"]
