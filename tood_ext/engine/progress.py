"""A progress bar: tqdm when installed, else a plain line every few seconds (same interface)."""
from __future__ import annotations

import sys
import time

try:
    from tqdm import tqdm as _tqdm
except ImportError:  # pragma: no cover - depends on the environment
    _tqdm = None


class _PlainBar:
    def __init__(self, total: int, desc: str = "", disable: bool = False, interval: float = 5.0):
        self.total, self.desc, self.disable, self.interval = total, desc, disable, interval
        self.n, self.start, self.last, self.postfix = 0, time.perf_counter(), 0.0, ""

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        self.postfix = s

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if not self.disable and (now - self.last >= self.interval or self.n == self.total):
            self.last = now
            rate = self.n / max(now - self.start, 1e-9)
            print(f"{self.desc} {self.n}/{self.total} [{now - self.start:.0f}s, {rate:.2f}it/s] "
                  f"{self.postfix}", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def progress(total: int, desc: str = "", disable: bool = False):
    """A bar with ``update``, ``set_postfix_str`` and ``close``; tqdm shows it/s itself."""
    if _tqdm is not None:
        return _tqdm(total=total, desc=desc, disable=disable, dynamic_ncols=True, leave=True,
                     mininterval=1.0)
    return _PlainBar(total, desc, disable)
