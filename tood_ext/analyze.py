"""``python -m tood_ext analyze``: the CLI loads subcommand plugins as ``tood_ext.<name>``
(``tood_ext/__main__.py``, ``PLUGINS``); the command lives in :mod:`tood_ext.analysis`."""
from .analysis import add_analyze_subparser, cmd_analyze

__all__ = ["add_analyze_subparser", "cmd_analyze"]
