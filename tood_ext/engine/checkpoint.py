"""Checkpoints: model, optimizer, scheduler, AMP scaler, epoch, and what rebuilds the model.

A checkpoint is written at the end of an epoch; resuming from it continues with the next epoch
and, as the data order and flips are functions of (seed, epoch), reproduces the uninterrupted run
(bit for bit on CPU: ``tests/test_engine.py``).
"""
from __future__ import annotations

import os
from dataclasses import asdict, is_dataclass

import torch


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: not a torch file (truncated, another format), or
    not a tood_ext checkpoint. The message names the file."""


def _load_file(path: str, map_location="cpu") -> dict:
    """``torch.load`` of a tood_ext checkpoint; CheckpointError naming the file for one that
    does not load (a missing file stays FileNotFoundError) or is not a dict with 'model'."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # unpickling, EOF, zip errors: a corrupt or foreign file
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: expected a dict with 'model' (state dict) and "
                              "'model_config' (written by tood_ext.engine.train) or 'config' "
                              "(TOODConfig as a dict)")
    return state


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DistributedDataParallel / the loss wrapper, if any."""
    while hasattr(model, "module") or hasattr(model, "detector"):
        model = getattr(model, "module", None) or model.detector
    return model


def config_dict(cfg) -> dict:
    if hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    if is_dataclass(cfg):
        return asdict(cfg)
    return dict(cfg)


def save_checkpoint(path: str, model, optimizer=None, scheduler=None, scaler=None, epoch: int = 0,
                    global_iter: int = 0, model_config=None, train_config=None,
                    classes: dict | None = None) -> str:
    """Write atomically (temporary file, then rename). ``epoch`` = epochs completed."""
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "epoch": int(epoch),
        "global_iter": int(global_iter),
        "model_config": config_dict(model_config) if model_config is not None else None,
        "train_config": config_dict(train_config) if train_config is not None else None,
        "classes": classes,
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str, model=None, optimizer=None, scheduler=None, scaler=None,
                    map_location="cpu") -> dict:
    """Load a checkpoint into whichever of the objects are given; returns the raw dict."""
    state = _load_file(path, map_location)
    if model is not None:
        unwrap(model).load_state_dict(state["model"])
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    return state


def model_from_checkpoint(path: str, device="cpu", **overrides):
    """Rebuild the detector a checkpoint was trained with and load its weights: the one
    checkpoint loader (``python -m tood_ext eval|predict|analyze|export``).

    Accepts ``tood_ext.engine`` checkpoints (``{"model_config": ..., "model": state_dict}``)
    and plain ``{"config": TOODConfig as dict, "model": state_dict}`` files. ``overrides``
    replace config fields (e.g. ``score_thr=0.3`` or ``ops="reference"``; None values
    ignored). Configs written before a field existed get its default (e.g. ``min_bbox_size``,
    ``clip_to_image``). Returns (model in eval mode on ``device``, checkpoint dict).
    """
    from ..models import TOODConfig, build_model

    state = _load_file(path)
    cfg_dict = state.get("model_config") or state.get("config")
    if cfg_dict is None:
        raise CheckpointError(f"{path}: expected a dict with 'model' (state dict) and "
                              "'model_config' (written by tood_ext.engine.train) or 'config' "
                              "(TOODConfig as a dict)")
    cfg_dict = dict(cfg_dict)
    cfg_dict.update({k: v for k, v in overrides.items() if v is not None})
    cfg = TOODConfig.from_dict(cfg_dict)
    cfg.weights = None  # the checkpoint holds the backbone weights
    model = build_model(cfg)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:  # missing / unexpected keys, shapes
        raise CheckpointError(f"{path}: the weights do not fit the model of its config: "
                              f"{str(exc).splitlines()[0]}") from exc
    return model.to(device).eval(), state
