"""revsearch FiftyOne plugin entry point: registers the operators defined in ``operators/``.

When the ``revsearch`` package is not installed, the copy next to this file is used.
"""

import os
import sys

try:
    import revsearch  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from .operators import OPERATORS


def register(plugin):
    """Called by FiftyOne when it loads the plugin."""
    for operator in OPERATORS:
        plugin.register(operator)
