"""Networks of the papers, built on MONAI blocks."""

from common.networks.dyn_unet import DeepSupervisionDynUNet
from common.networks.sa_unet import SAUNet
from common.networks.wong_net import GaussianNoise, WongNet3D

__all__ = ["DeepSupervisionDynUNet", "GaussianNoise", "SAUNet", "WongNet3D"]
