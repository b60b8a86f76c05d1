"""``python -m revsearch`` runs the command line."""

import sys

from revsearch.cli.main import main

sys.exit(main())
