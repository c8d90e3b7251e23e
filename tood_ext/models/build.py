"""``build_model(cfg)``: the detector a :class:`~tood_ext.models.TOODConfig` describes."""
from __future__ import annotations

from .config import HEADS, TOODConfig
from .dense_detector import DenseDetector
from .detector import ATSS, TOOD

__all__ = ["build_model"]

_DETECTORS = {"tood": TOOD, "atss": ATSS}


def build_model(cfg: TOODConfig) -> DenseDetector:
    """The detector described by ``cfg``: :class:`~tood_ext.models.TOOD` (``head="tood"``) or
    :class:`~tood_ext.models.ATSS` (``head="atss"``, same backbone, FPN, losses switch and
    inference, parallel head)."""
    if cfg.head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {cfg.head!r}")
    return _DETECTORS[cfg.head](cfg)
