"""Benchmarks of tood-ext: ``python -m benchmarks --help``.

Each op family lives in its own module that registers a case generator with
:func:`benchmarks.harness.register_family`; list the module here to include it.
"""

# modules of this package holding @register_family case generators, in report order
FAMILY_MODULES = ("box_ops", "deform_ops", "tal", "compat", "losses", "probiou", "obb")
