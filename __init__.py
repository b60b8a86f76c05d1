"""revsearch FiftyOne plugin entry point: registers the operators defined in ``operators/``.

When the ``revsearch`` package is not installed, the copy next to this file is used.
"""

import os
import sys

try:
    import revsearch  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def register(plugin):
    """Called by FiftyOne when it loads the plugin (as a package, so the relative import works).

    The import is here rather than at module level so that tools importing this file as a plain
    module (pytest does, when the checkout's folder name is not a valid package name) don't fail.
    """
    from .operators import OPERATORS

    for operator in OPERATORS:
        plugin.register(operator)
