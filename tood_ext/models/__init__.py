"""The TOOD detector built on tood_ext's ops.

``TOODConfig`` holds every knob, ``build_model(cfg)`` builds the :class:`TOOD` detector
(torchvision ResNet, FPN P3-P7, :class:`TOODHead`), or with ``head="atss"`` the :class:`ATSS`
baseline (same backbone and FPN, ATSS's parallel :class:`ATSSHead`); ``cfg.ops`` switches
every op the model calls between our kernels (``"kernel"``) and the pure-PyTorch references (``"reference"``).
"""
from .assigners import atss_assign, centerness_target
from .atss_head import ATSS, ATSSHead
from .config import HEADS, TOODConfig, build_model
from .detector import TOOD
from .head import TOODHead, TaskDecomposition, grid_priors, sigmoid_geometric_mean
from .losses import focal_loss, quality_focal_loss, reduce_mean

__all__ = ["ATSS", "ATSSHead", "HEADS", "TOOD", "TOODConfig", "TOODHead", "TaskDecomposition",
           "atss_assign", "build_model", "centerness_target", "focal_loss", "grid_priors",
           "quality_focal_loss", "reduce_mean", "sigmoid_geometric_mean"]
