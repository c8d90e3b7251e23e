"""Peak extra memory of one call, for the benchmarks and the memory tests.

CPU: the highest running sum of the c10 CPU allocator's allocation/free events that
torch.profiler(profile_memory=True) records during the call: every CPU tensor the call creates,
its outputs included. Memory taken outside c10 (std::vector scratch, thread stacks) is not seen.
CUDA: torch.cuda.max_memory_allocated() during the call minus what was allocated before it.
"""
from __future__ import annotations

from typing import Any, Callable

import torch


def cpu_peak_extra_memory(fn: Callable[[], Any]) -> int:
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    del out
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        ev = stack.pop()
        if ev.tag == _EventType.Allocation:
            info = ev.typed[1]
            if info.device.type == "cpu":
                events.append((ev.start_time_ns, int(info.alloc_size)))  # negative: a free
        stack.extend(ev.children)
    events.sort(key=lambda e: e[0])
    current = peak = 0
    for _, size in events:
        current += size
        peak = max(peak, current)
    return peak


def cuda_peak_extra_memory(fn: Callable[[], Any]) -> int:
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del out
    return int(peak)


def peak_extra_memory(fn: Callable[[], Any], device: str | torch.device) -> int:
    """Bytes of the peak extra memory of ``fn()`` on ``device`` (see the module docstring)."""
    if torch.device(device).type == "cuda":
        return cuda_peak_extra_memory(fn)
    return cpu_peak_extra_memory(fn)
