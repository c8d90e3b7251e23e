"""Training loop: SGD/AdamW, warm-up + step/cosine schedule, AMP on GPU, gradient clipping,
checkpoint save/resume, a progress bar, and DistributedDataParallel under ``torchrun``.

Single process and ``torchrun --nproc_per_node N`` run the same code: the batch size is per
process, every process reads its own shard of each epoch (DistributedSampler, also used with one
process so the data order is always a function of (seed, epoch)), DDP averages the gradients, and
the model's loss averages its normaliser (sum of t_hat over positives) over processes, as
mmdetection does, so N processes x batch b train like one process with batch N*b.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import time
from dataclasses import asdict, dataclass, field

import torch
from torch.nn.parallel import DistributedDataParallel

from . import dist as D
from .checkpoint import load_checkpoint, save_checkpoint, unwrap
from .progress import progress


@dataclass
class TrainConfig:
    """Every knob of :func:`train`.

    Schedule: the learning rate rises linearly from ``lr * warmup_ratio`` to ``lr`` over the
    first ``warmup_iters`` iterations, then ``step`` multiplies it by ``gamma`` at each epoch in
    ``milestones`` (mmdetection 1x: [8, 11] of 12) or ``cosine`` decays it per iteration to
    ``lr * min_lr_ratio`` at the end of the last epoch.
    """
    epochs: int = 12
    batch_size: int = 2                  # per process
    optimizer: str = "sgd"               # sgd | adamw
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    schedule: str = "step"               # step | cosine
    milestones: list = field(default_factory=lambda: [8, 11])
    gamma: float = 0.1
    min_lr_ratio: float = 0.01
    clip_grad: float | None = 35.0       # max global L2 norm; None: no clipping
    amp: bool = True                     # mixed precision, CUDA only
    amp_dtype: str = "float16"           # float16 (with loss scaling) | bfloat16
    workers: int = 0
    seed: int = 0
    work_dir: str = "runs/train"
    ckpt_interval: int = 1               # epochs between checkpoints (and the last one always)
    keep_ckpts: int = 2                  # epoch_*.pth kept besides latest.pth; 0 keeps all
    eval_interval: int = 0               # epochs between val evaluations; 0: only at the end
    max_iters_per_epoch: int | None = None  # for smoke tests: cut every epoch short
    progress_bar: bool = True
    find_unused_parameters: bool = False


class LossModule(torch.nn.Module):
    """``forward`` = the detector's ``loss``, so DDP (which hooks ``forward``) can wrap it."""

    def __init__(self, detector: torch.nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, images, targets, epoch: int):
        return self.detector.loss(images, targets, epoch)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW; no weight decay on norm layers and biases (1-d parameters)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise ValueError(f"optimizer must be sgd or adamw, got {cfg.optimizer!r}")


def lr_factor(it: int, iters_per_epoch: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rate at (0-based) global iteration ``it``."""
    if cfg.schedule == "step":
        epoch = it // max(iters_per_epoch, 1)
        f = cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    elif cfg.schedule == "cosine":
        total = max(cfg.epochs * iters_per_epoch, 1)
        f = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(it, total) / total))
    else:
        raise ValueError(f"schedule must be step or cosine, got {cfg.schedule!r}")
    if it < cfg.warmup_iters:
        f *= cfg.warmup_ratio + (1 - cfg.warmup_ratio) * it / cfg.warmup_iters
    return f


def _to_device(images, targets, device):
    images = images.to(device, non_blocking=True)
    targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
    return images, targets


def train(model: torch.nn.Module, train_set, cfg: TrainConfig, device="cpu", val_set=None,
          resume: str | None = None, model_config=None, log=print) -> dict:
    """Train ``model`` on ``train_set`` (a :class:`~tood_ext.data.CocoDetection` with
    ``train=True``); returns ``{"history": [per-epoch dict], "metrics": val metrics or None,
    "checkpoint": path of the last checkpoint}``.

    ``resume``: a checkpoint path, or "auto" for ``work_dir/latest.pth`` when it exists. Call
    :func:`tood_ext.engine.dist.init_from_env` first under torchrun (or initialise the group
    yourself); the model is wrapped in DDP when a group with more than one process is up.
    """
    from ..data.loader import make_loader

    if len(train_set) == 0:  # before anything is written
        from ..data.coco import DataError
        why = train_set.describe_filter() if hasattr(train_set, "describe_filter") else ""
        raise DataError(f"no training image{': ' + why if why else ''}; nothing to train on")
    device = torch.device(device)
    torch.manual_seed(cfg.seed)
    main = D.is_main()
    model.to(device)
    use_amp = bool(cfg.amp and device.type == "cuda")
    amp_dtype = getattr(torch, cfg.amp_dtype)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    optimizer = build_optimizer(model, cfg)

    loader = make_loader(train_set, cfg.batch_size, True, cfg.workers, cfg.seed,
                         drop_last=False, num_replicas=D.world_size(), rank=D.rank())
    iters_per_epoch = len(loader)
    if cfg.max_iters_per_epoch:
        iters_per_epoch = min(iters_per_epoch, cfg.max_iters_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, iters_per_epoch, cfg))

    start_epoch, global_iter = 0, 0
    work_dir = cfg.work_dir
    if resume == "auto":
        resume = os.path.join(work_dir, "latest.pth")
        resume = resume if os.path.exists(resume) else None
    if resume:
        state = load_checkpoint(resume, model, optimizer, scheduler, scaler, map_location=device)
        start_epoch, global_iter = state["epoch"], state["global_iter"]
        if main:
            log(f"resumed from {resume}: {start_epoch} epochs done, iteration {global_iter}")

    net = LossModule(model)
    if D.world_size() > 1:
        net = DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.find_unused_parameters)
    params = [p for p in model.parameters() if p.requires_grad]
    # what eval/predict need to read a checkpoint's outputs: class names, COCO ids, input scale
    classes = ({"names": train_set.class_names, "cat_ids": train_set.cat_ids,
                "scale": list(getattr(train_set, "scale", ()))}
               if hasattr(train_set, "class_names") else None)
    if main:
        os.makedirs(work_dir, exist_ok=True)
        if not resume:  # a fresh run starts a fresh log (a resumed one appends to its own)
            open(os.path.join(work_dir, "log.jsonl"), "w").close()
        with open(os.path.join(work_dir, "config.json"), "w") as f:
            json.dump({"train": asdict(cfg), "model": _cfg_dict(model_config),
                       "world_size": D.world_size(), "device": str(device)}, f, indent=1)

    history, ckpt_path, metrics = [], None, None
    iter_losses: list[list[list[float]]] = []  # per epoch, per iteration [loss, cls, bbox]
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        loader.sampler.set_epoch(epoch)
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch)
        bar = progress(iters_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       disable=not (main and cfg.progress_bar))
        sums = {"loss": 0.0, "loss_cls": 0.0, "loss_bbox": 0.0}
        iter_vals: list[list[float]] = []  # [loss, loss_cls, loss_bbox] of every iteration
        n_done, skipped, t0 = 0, 0, time.perf_counter()
        for step, (images, targets, _metas) in enumerate(loader):
            if step >= iters_per_epoch:
                break
            images, targets = _to_device(images, targets, device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                losses = net(images, targets, epoch)
            loss = losses["loss"]
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            # every process must take (or skip) the step alike: agree on finiteness
            finite = torch.isfinite(loss.detach()).float()
            if D.is_dist():
                torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
            if finite.item() > 0:
                if cfg.clip_grad:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
                scaler.step(optimizer)
                scaler.update()
            else:
                skipped += 1
            scheduler.step()
            global_iter += 1
            n_done += 1
            vals = {k: float(losses[k].detach()) for k in sums}
            for k in sums:
                sums[k] += vals[k]
            iter_vals.append([vals[k] for k in sums])
            bar.set_postfix_str(f"loss {vals['loss']:.3f} cls {vals['loss_cls']:.3f} "
                                f"bbox {vals['loss_bbox']:.3f} lr {optimizer.param_groups[0]['lr']:.2e}")
            bar.update(1)
        bar.close()
        elapsed = time.perf_counter() - t0
        record = {"epoch": epoch + 1, **{k: v / max(n_done, 1) for k, v in sums.items()},
                  "lr": optimizer.param_groups[0]["lr"], "iters": n_done,
                  "skipped_nonfinite": skipped, "time_s": round(elapsed, 2),
                  "it_per_s": round(n_done / max(elapsed, 1e-9), 3),
                  "assigner": "atss" if epoch < getattr(model_config, "initial_epoch", 0) else "tal",
                  "loss_digest": loss_digest(iter_vals)}
        history.append(record)
        iter_losses.append(iter_vals)
        last = epoch + 1 == cfg.epochs
        if main:
            log(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in record.items()))
            with open(os.path.join(work_dir, "log.jsonl"), "a") as f:
                f.write(json.dumps({**record, "iter_losses": iter_vals}) + "\n")
            if last or (cfg.ckpt_interval and (epoch + 1) % cfg.ckpt_interval == 0):
                ckpt_path = os.path.join(work_dir, f"epoch_{epoch + 1}.pth")
                save_checkpoint(ckpt_path, model, optimizer, scheduler, scaler, epoch + 1,
                                global_iter, model_config, cfg, classes)
                save_checkpoint(os.path.join(work_dir, "latest.pth"), model, optimizer,
                                scheduler, scaler, epoch + 1, global_iter, model_config, cfg,
                                classes)
                _prune(work_dir, cfg.keep_ckpts)
        if val_set is not None and (last or (cfg.eval_interval and (epoch + 1) % cfg.eval_interval == 0)):
            from .evaluate import evaluate
            metrics = evaluate(unwrap(model), val_set, device=device,
                               batch_size=cfg.batch_size,
                               out_json=os.path.join(work_dir, f"metrics_epoch_{epoch + 1}.json"),
                               log=log)
            history[-1]["val"] = metrics
        D.barrier()
    return {"history": history, "metrics": metrics, "iter_losses": iter_losses,
            "checkpoint": ckpt_path or (resume if resume else None)}


def loss_digest(values) -> str:
    """16 hex digits of the SHA-256 of float64 ``values`` (nested lists, flattened in order):
    two runs' per-iteration losses are bit-identical iff their digests agree (up to collisions)."""
    flat: list[float] = []
    stack = [values]
    while stack:
        v = stack.pop()
        if isinstance(v, (list, tuple)):
            stack.extend(reversed(v))
        else:
            flat.append(float(v))
    return hashlib.sha256(struct.pack(f"<{len(flat)}d", *flat)).hexdigest()[:16]


def state_digest(module: torch.nn.Module) -> str:
    """16 hex digits of the SHA-256 of every tensor of ``module.state_dict()`` (names, dtypes,
    shapes and bytes, in order): equal iff the weights are bit-identical (up to collisions)."""
    h = hashlib.sha256()
    for name, t in unwrap(module).state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _cfg_dict(cfg):
    if cfg is None:
        return None
    from .checkpoint import config_dict
    return config_dict(cfg)


def _prune(work_dir: str, keep: int) -> None:
    if keep <= 0:
        return
    ckpts = sorted((int(f[6:-4]), f) for f in os.listdir(work_dir)
                   if f.startswith("epoch_") and f.endswith(".pth") and f[6:-4].isdigit())
    for _, f in ckpts[:-keep]:
        os.remove(os.path.join(work_dir, f))
