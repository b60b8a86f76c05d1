"""``python -m revsearch`` runs the command line."""

import sys

from .cli_launch import main

sys.exit(main())
