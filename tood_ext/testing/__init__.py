"""Helpers for testing and benchmarking tood_ext and code built on it (used by tests/ and
benchmarks/; nothing else in the package imports them):

* :mod:`tood_ext.testing.memory`: ``peak_extra_memory(fn, device)``, the peak extra memory of
  one call (CPU: the c10 allocator's events under torch.profiler; CUDA: the allocator's peak);
* :mod:`tood_ext.testing.ultralytics`: synthetic inputs of ultralytics' ``v8DetectionLoss``
  (``tiny_v8_model``, ``random_v8_batch``, ``random_v8_preds``; ultralytics is not imported),
  to check a patched loss (:mod:`tood_ext.compat.ultralytics`) in your own setup.

Import the submodule you need.
"""

__all__ = ["memory", "ultralytics"]
