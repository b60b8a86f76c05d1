"""A Milvus Lite file served by one background process that other processes connect to.

Milvus Lite runs its server as a child of the process that opens the file, so every short-lived
process (a CLI query) paid about a second to start and stop one. In *shared* mode (the CLI's
default; ``REVSEARCH_LITE_SERVER=shared``) the first process to open a file starts
``python -m revsearch.lite_server FILE``, which takes the file's lock (:class:`LiteFileLock`),
starts the Lite server and writes its socket into ``<file>.revsearch.serve``. Every revsearch process
that then opens the file, in either mode, connects to that socket instead of starting a server of
its own: one server per file, so one writer, as with a Milvus server.

Connected processes hold a shared ``flock`` on ``<file>.revsearch.clients``. The serving process
stops after ``REVSEARCH_LITE_IDLE_S`` seconds (default 300) without a client, and removes the serve
file only while it holds that lock exclusively: a client that has read the serve file never meets a
server that is stopping. A serving process that does not let clients in within ``ATTACH_WAIT_S``
gives the same busy error as any other holder.

In *own* mode (the library's default) a process with no serving process to connect to locks the file
and runs its own server, as before (see :mod:`revsearch.lite_lock`).
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

from .errors import LiteFileBusyError, RevsearchError
from .index_lock import read_holder
from .lite_lock import LiteFileLock, lock_path
from .lite_preload import Preload, load_early
from .milvus_uri import check_lite_file_name

#: ``shared`` or ``own`` (see the module docstring); the CLI sets ``shared`` unless it is set.
MODE_ENV = "REVSEARCH_LITE_SERVER"
#: Seconds a serving process waits without a client before it stops.
IDLE_ENV = "REVSEARCH_LITE_IDLE_S"
DEFAULT_IDLE_S = 300.0
#: Written into the lock file by a serving process.
SERVES = "serves it to other processes"
#: How long a process waits for a serving process to come up, or to let it connect.
START_WAIT_S = 30.0
ATTACH_WAIT_S = 10.0
POLL_S = 0.02
#: How often the serving process looks for clients.
IDLE_POLL_S = 0.25
#: Starting a Lite server is retried this often, this many seconds apart (here and in
#: :func:`revsearch.milvus_index.connect`): the server of a process that was just killed may still
#: hold the file (it stops once it sees its parent gone).
START_ATTEMPTS, RETRY_WAIT_S = 5, 2.0
#: Fault injection settings (:mod:`revsearch.crashpoints`) are not passed to a serving process.
CRASH_ENV_PREFIX = "REVSEARCH_CRASH_"

logger = logging.getLogger(__name__)


def serve_path(db_path: str | os.PathLike) -> Path:
    return Path(f"{db_path}.revsearch.serve")


def clients_path(db_path: str | os.PathLike) -> Path:
    return Path(f"{db_path}.revsearch.clients")


def start_path(db_path: str | os.PathLike) -> Path:
    return Path(f"{db_path}.revsearch.start")


def shared_mode() -> bool:
    """Whether a process that opens a Lite file nobody serves starts a serving process for it."""
    return os.environ.get(MODE_ENV, "own") == "shared"


def default_to_shared() -> None:
    """Make shared mode this process's default (the command line's: a Lite file stays served between
    commands); an explicit ``REVSEARCH_LITE_SERVER`` is kept."""
    if not os.environ.get(MODE_ENV):
        os.environ[MODE_ENV] = "shared"


def idle_seconds() -> float:
    return float(os.environ.get(IDLE_ENV, DEFAULT_IDLE_S))


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a killed serving process this process started is a zombie until
    reaped: not alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class OwnLite:
    """This process's lock on a Lite file; ``uri`` is the file (pymilvus starts its server)."""

    def __init__(self, lock: LiteFileLock):
        self.lock, self.uri = lock, lock.db_path

    def alive(self) -> bool:
        return True

    def release(self) -> None:
        self.lock.release()


class SharedLite:
    """A connection slot on the process serving a Lite file: ``uri`` is its Lite server's socket (for
    pymilvus), ``queries`` / ``authkey`` its index service's (see :mod:`revsearch.served_index`)."""

    def __init__(self, fd: int, served: dict):
        self.pid, self.uri = served["pid"], served["uri"]
        self.queries, self.authkey = served["queries"], served["authkey"]
        self._closer = weakref.finalize(self, os.close, fd)  # an index never closed still leaves

    @classmethod
    def attach(cls, db_path: Path) -> SharedLite | None:
        """A slot on the file's serving process, or None when nothing serves it."""
        try:
            fd = os.open(clients_path(db_path), os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:  # a read-only folder: nothing can serve the file there
            return None
        deadline = time.monotonic() + ATTACH_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:  # the serving process is checking for clients, or stopping
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise LiteFileBusyError(
                        f"Milvus Lite file {db_path} is served by {read_holder(lock_path(db_path))}, "
                        f"which did not let this process connect in {ATTACH_WAIT_S:g} s"
                    ) from None
                time.sleep(POLL_S)
        try:
            served = json.loads(serve_path(db_path).read_text())
        except (OSError, ValueError):
            served = None
        if served and _alive(served["pid"]):
            return cls(fd, served)
        os.close(fd)
        return None

    def alive(self) -> bool:
        return _alive(self.pid)

    def release(self) -> None:
        self._closer()  # closes the descriptor (once), which drops the shared lock


def open_lite(db_path: Path, shared: bool | None = None, preload: Preload | None = None) -> OwnLite | SharedLite:
    """Access to the Lite file ``db_path``: a slot on its serving process when one runs; otherwise,
    in shared mode, a serving process started for it (which loads the ``preload`` collection as soon
    as its server runs), or, in own mode, this process's lock."""
    check_lite_file_name(db_path.name)
    shared = (shared_mode() if shared is None else shared) and os.access(db_path.parent, os.W_OK)
    deadline = time.monotonic() + START_WAIT_S
    while True:
        slot = SharedLite.attach(db_path)
        if slot is not None:
            return slot
        if shared:
            return _start_and_attach(db_path, deadline, preload)
        lock = LiteFileLock(db_path)
        try:
            lock.acquire()
            return OwnLite(lock)
        except LiteFileBusyError:
            if SERVES not in read_holder(lock.path) or time.monotonic() > deadline:
                raise
        time.sleep(POLL_S)  # a serving process is starting or stopping


def _start_and_attach(db_path: Path, deadline: float, preload: Preload | None) -> SharedLite:
    """Start a serving process for ``db_path`` and take a slot on it; one process starts at a time
    (``<file>.revsearch.start``), the others wait and take a slot on the one it started."""
    fd = os.open(start_path(db_path), os.O_RDWR | os.O_CREAT, 0o666)
    starter_stderr = tempfile.TemporaryFile()
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LiteFileBusyError(f"Milvus Lite file {db_path}: no serving process started in time") from None
                time.sleep(POLL_S)
        starter = None
        while True:
            slot = SharedLite.attach(db_path)
            if slot is not None:
                return slot
            if starter is None:
                starter = _start_serving(db_path, starter_stderr, preload)
            elif starter.poll() is not None:
                starter_stderr.seek(0)
                message = starter_stderr.read().decode(errors="replace").strip().splitlines()
                if starter.returncode == BUSY_EXIT:
                    raise LiteFileBusyError(message[-1] if message else f"Milvus Lite file {db_path} is busy")
                raise RevsearchError(
                    f"could not serve Milvus Lite file {db_path}: " + (message[-1] if message else "no reason given")
                )
            if time.monotonic() > deadline:
                raise LiteFileBusyError(
                    f"Milvus Lite file {db_path}: its serving process (pid {starter.pid}) did not start in "
                    f"{START_WAIT_S:g} s"
                )
            time.sleep(POLL_S)
    finally:
        os.close(fd)
        starter_stderr.close()


def _start_serving(db_path: Path, stderr, preload: Preload | None) -> subprocess.Popen:
    """Start ``python -m revsearch.lite_server db_path`` in its own session (it outlives this process),
    its standard error into the file ``stderr``."""
    package_root = str(Path(__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith(CRASH_ENV_PREFIX)}  # the caller's, not its
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    args = [sys.executable, "-m", "revsearch.lite_server", str(db_path), "--idle-s", str(idle_seconds())]
    if preload is not None:
        args += ["--preload", preload.collection, "--preload-db-name", preload.db_name]
    return subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        env=env,
        start_new_session=True,
    )


class LiteServerStart:
    """:func:`open_lite` in a background thread while the caller goes on (imports pymilvus, ~1 s, or
    loads its model): in shared mode the slot on the serving process (started if need be), in own
    mode the lock and this process's Lite server (~0.5 s to start), which the caller's own
    :func:`open_lite` and connection then find ready. :meth:`release` drops this reference."""

    def __init__(self, db_path: Path, preload: Preload | None = None):
        self.db_path, self.preload = db_path, preload
        self._access: OwnLite | SharedLite | None = None
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._start, name="revsearch-lite-start", daemon=True)
        self._thread.start()

    @classmethod
    def for_uri(cls, uri: str, preload: Preload | None = None) -> LiteServerStart | None:
        """A start for a Lite file that exists and is opened in place (not for a server URI, nor a
        file in a read-only folder, which is opened from a copy); ``preload``: the collection the
        caller will open, loaded by the server as soon as it runs."""
        from .milvus_uri import is_lite_uri

        if not is_lite_uri(uri):
            return None
        path = Path(uri).expanduser().resolve()
        return cls(path, preload) if path.is_file() and os.access(path.parent, os.W_OK) else None

    def _start(self) -> None:
        try:
            self._access = open_lite(self.db_path, preload=self.preload)
        except Exception as exc:  # raised in the caller's thread by wait()
            self._error = exc
            return
        if isinstance(self._access, OwnLite):
            from milvus_lite.server_manager import server_manager_instance

            try:
                uri = server_manager_instance.start_and_get_uri(self._access.uri)
            except Exception:  # the caller's connection starts it again, with retries and a clear error
                logger.debug("early start of the Lite server for %s failed", self.db_path, exc_info=True)
                return
            if uri is not None and self.preload is not None:  # while the caller imports pymilvus
                load_early(uri, *self.preload)

    def wait(self) -> None:
        """Wait for the start; a file held by another process raises its busy error here."""
        self._thread.join()
        if self._error is not None:
            raise self._error

    def slot(self) -> SharedLite:
        """The slot on the file's serving process (shared mode), once it serves the file."""
        self.wait()
        if not isinstance(self._access, SharedLite):
            raise LiteFileBusyError(f"Milvus Lite file {self.db_path} could not be served to this process")
        return self._access

    def again(self) -> LiteServerStart:
        """A new start, after the serving process stopped (this one is released)."""
        self.release()
        return LiteServerStart(self.db_path, self.preload)

    def release(self) -> None:
        self._thread.join()
        if self._access is not None:
            self._access.release()
            self._access = None


#: Exit status of a serving process refused the file (held by another process).
BUSY_EXIT = 3


def serve(db_path: Path, idle_s: float, preload: Preload | None = None) -> int:
    """Hold ``db_path``, serve it, and stop after ``idle_s`` seconds without a client, on SIGTERM /
    SIGINT, or when the file is deleted or replaced (e.g. its folder deleted and made again).
    ``preload``: a collection loaded as soon as the server runs, while pymilvus is imported."""
    lock = LiteFileLock(db_path, note=SERVES)
    deadline = time.monotonic() + START_WAIT_S
    while True:
        try:
            lock.acquire()
            break
        except LiteFileBusyError as exc:
            if SERVES not in read_holder(lock.path) or time.monotonic() > deadline:
                print(exc, file=sys.stderr)
                return BUSY_EXIT
            time.sleep(POLL_S)  # the previous serving process is stopping
    started: list = []
    starting = threading.Thread(target=_start_server, args=(db_path, started, preload))
    starting.start()
    from . import milvus_index  # noqa: F401  (pymilvus, ~1 s, while the Lite server starts, ~0.5 s)
    from .served_index import IndexService

    _dense_inputs_only()

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    clients = os.open(clients_path(db_path), os.O_RDWR | os.O_CREAT, 0o666)
    service = None
    try:
        starting.join()
        if not started:
            raise RuntimeError(f"could not start a Milvus Lite server for {db_path}")
        service = IndexService(started[0].uds_path)
        served = {
            "pid": os.getpid(),
            "uri": started[0].uds_path,
            "queries": service.address,
            "authkey": service.authkey.hex(),
        }
        _write_atomically(serve_path(db_path), json.dumps(served))
        idle_since = None
        served_file = _identity(db_path)
        while not stop.wait(IDLE_POLL_S) and _identity(db_path) == served_file:  # not deleted nor replaced
            try:
                fcntl.flock(clients, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                idle_since = None
                continue
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since >= idle_s:
                break  # still holding the exclusive lock: no client connects while the server stops
            fcntl.flock(clients, fcntl.LOCK_UN)
    finally:
        _unlink_own_serve_file(db_path)
        if service is not None:
            service.close()
        starting.join()
        for server in started:
            server.stop()
        lock.release()
        os.close(clients)
    return 0


def _dense_inputs_only() -> None:
    """Spare this process pymilvus's scipy check: before its first search or insert pymilvus imports
    scipy.sparse (0.3 s, most of a first query here) to ask whether the data is a sparse matrix.
    This process sends only revsearch's dense vectors, for which the answer is no, so it tells
    pymilvus's ``SciPyHelper`` that the check is done and found no scipy (only here: a user's own
    process may send sparse data). Another pymilvus without that helper keeps its own check."""
    from pymilvus.client import utils

    helper = getattr(utils, "SciPyHelper", None)
    if helper is not None and hasattr(helper, "_checked"):
        helper._checked = True


def _start_server(db_path: Path, started: list, preload: Preload | None) -> None:
    """Start the Lite server for ``db_path``, retried; the running milvus-lite ``Server`` goes into
    ``started``, then ``preload`` is loaded in the background."""
    server_class = lite_server_class()
    for attempt in range(START_ATTEMPTS):
        server = server_class(str(db_path))
        if server.init() and server.start():
            started.append(server)
            if preload is not None:
                threading.Thread(target=load_early, args=(server.uds_path, *preload), daemon=True).start()
            return
        server.stop()
        if attempt < START_ATTEMPTS - 1:
            time.sleep(RETRY_WAIT_S)


def lite_server_class() -> type:
    """milvus-lite's ``Server`` (it runs the Lite server binary for one file), loaded from its module
    file alone: importing it through the ``milvus_lite`` package first runs the package's
    ``__init__``, which imports ``pkg_resources`` (0.15 s) only to read its own version. Any surprise
    (another milvus-lite layout) falls back to the plain import."""
    try:
        package = importlib.util.find_spec("milvus_lite")  # finds the package without running it
        path = Path(package.submodule_search_locations[0]) / "server.py"
        spec = importlib.util.spec_from_file_location("revsearch._milvus_lite_server", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.Server
    except Exception:
        from milvus_lite.server import Server

        return Server


def _unlink_own_serve_file(db_path: Path) -> None:
    """Remove the serve file if this process wrote it (a replaced file may be served by another)."""
    try:
        if json.loads(serve_path(db_path).read_text())["pid"] == os.getpid():
            serve_path(db_path).unlink()
    except (OSError, ValueError, KeyError):
        pass


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (it holds the index service's key)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a Milvus Lite file to other revsearch processes.")
    parser.add_argument("db_path", type=Path)
    parser.add_argument("--idle-s", type=float, default=DEFAULT_IDLE_S, help="stop after this long without a client")
    parser.add_argument("--preload", help="a collection to load as soon as the server runs")
    parser.add_argument("--preload-db-name", default="", help="the database of --preload")
    args = parser.parse_args(argv)
    preload = Preload(args.preload, args.preload_db_name) if args.preload else None
    return serve(args.db_path.expanduser().resolve(), args.idle_s, preload)


if __name__ == "__main__":
    sys.exit(main())
