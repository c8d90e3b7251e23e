"""The TOOD detector built on tood_ext's ops.

``TOODConfig`` (config.py) holds every knob, ``build_model(cfg)`` (build.py) builds the
:class:`TOOD` detector (torchvision ResNet, FPN P3-P7, :class:`TOODHead`), or with
``head="atss"`` the :class:`ATSS` baseline (same backbone and FPN, ATSS's parallel
:class:`ATSSHead`); ``cfg.ops`` switches every op the model calls between our kernels
(``"kernel"``) and the pure-PyTorch references (``"reference"``).

The two detectors (detector.py) are siblings on :class:`DenseDetector` (dense_detector.py:
backbone, FPN, the ATSS-then-TAL assignment, inference), and so are the two heads
(tood_head.py, atss_head.py) on :class:`DenseHead` (dense_head.py: priors, box decoding, the
shared building blocks).
"""
from .assigners import atss_assign, centerness_target
from .atss_head import ATSSHead
from .build import build_model
from .config import HEADS, TOODConfig
from .dense_detector import DenseDetector
from .dense_head import DenseHead, grid_priors
from .detector import ATSS, TOOD
from .losses import focal_loss, quality_focal_loss, reduce_mean
from .tood_head import TOODHead, TaskDecomposition, sigmoid_geometric_mean

__all__ = ["ATSS", "ATSSHead", "DenseDetector", "DenseHead", "HEADS", "TOOD", "TOODConfig",
           "TOODHead", "TaskDecomposition", "atss_assign", "build_model", "centerness_target",
           "focal_loss", "grid_priors", "quality_focal_loss", "reduce_mean",
           "sigmoid_geometric_mean"]
