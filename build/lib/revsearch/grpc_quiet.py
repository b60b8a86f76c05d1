"""Keep gRPC's C-core log lines (e.g. GOAWAY notices) off the user's terminal.

Imported before anything imports ``grpc``: gRPC reads these variables once, when it starts.
A value the user has set is kept.
"""

import os

os.environ.setdefault("GRPC_VERBOSITY", "NONE")
os.environ.setdefault("GRPC_TRACE", "")
