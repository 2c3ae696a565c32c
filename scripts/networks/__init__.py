"""Networks: the paper's EAS U-Net and thin wrappers that make MONAI's baselines usable by the same configs."""

from .eas_unet import EAS, ECA, PAPER_FEATURES, DSConv, EASUNet, default_dilations, eca_kernel_size
from .folding import fold_batch_norms
from .shifted import ShiftedDepthwiseConv, use_shifted_depthwise
from .wrappers import FirstOutput

__all__ = [
    "EAS",
    "ECA",
    "PAPER_FEATURES",
    "ShiftedDepthwiseConv",
    "DSConv",
    "EASUNet",
    "FirstOutput",
    "default_dilations",
    "eca_kernel_size",
    "fold_batch_norms",
    "use_shifted_depthwise",
]
