"""``make_loader``: the DataLoader of a detection set (one process's shard of it)."""
from __future__ import annotations

from torch.utils.data import DataLoader, DistributedSampler

from .coco import collate

__all__ = ["make_loader"]


def make_loader(dataset, batch_size: int, shuffle: bool, workers: int, seed: int,
                drop_last: bool = False, num_replicas: int = 1, rank: int = 0) -> DataLoader:
    """A loader over the shard ``rank`` of ``num_replicas`` (the whole set with the defaults;
    the engine passes the process group's world size and rank), batches made by
    :func:`~tood_ext.data.collate`; ``shuffle`` draws the order from ``seed`` (and the epoch,
    ``loader.sampler.set_epoch``)."""
    sampler = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank,
                                 shuffle=shuffle, seed=seed, drop_last=drop_last)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate, drop_last=drop_last, pin_memory=False)
