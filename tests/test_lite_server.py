"""A Milvus Lite file served by one background process (shared mode), between real processes:
one server per file, shared by every client, stopped when idle, restarted when killed, and the
same busy error as before when a process that does not serve holds the file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from revsearch import MilvusIndex
from revsearch.errors import IndexMismatchError, IndexNotFoundError
from revsearch.fiftyone_stores import IndexHandle
from revsearch.lite_lock import lock_path
from revsearch.lite_server import IDLE_ENV, MODE_ENV, SERVES, serve_path

ROOT = Path(__file__).parents[1]

_CLIENT = """
import json, sys, time
import numpy as np
from revsearch.errors import LiteFileBusyError, RevsearchError
from revsearch.index_registry import load_index
uri, first, count, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
try:
    index = load_index({"kind": "milvus", "dim": 8, "collection": "t", "uri": uri})
    if count:
        index.add([f"k{i}" for i in range(first, first + count)],
                  np.random.default_rng(first).random((count, 8), dtype=np.float32))
    n = len(index)
except LiteFileBusyError as exc:
    print(json.dumps({"busy": str(exc)}))
else:
    time.sleep(hold)
    print(json.dumps({"len": n, "type": type(index).__name__, "pymilvus": "pymilvus" in sys.modules}))
    index.close()
"""


def _env(**extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), MODE_ENV: "shared", IDLE_ENV: "60", **extra}


def _client(uri: str, first: int = 0, count: int = 0, hold: float = 0, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _CLIENT, uri, str(first), str(count), str(hold)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(**env),
    )


def _result(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _served(db: Path) -> dict | None:
    try:
        return json.loads(serve_path(db).read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def _wait_gone(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        assert time.monotonic() < deadline, f"serving process {pid} did not stop"
        time.sleep(0.05)


@pytest.fixture
def db(tmp_path):
    """A Lite file with 100 vectors (made in own mode, closed), and every serving process stopped after."""
    path = tmp_path / "shared.db"
    index = MilvusIndex(8, collection="t", uri=str(path))
    index.add([f"k{i}" for i in range(100)], np.random.default_rng(0).random((100, 8), dtype=np.float32))
    index.close()
    yield path
    served = _served(path)
    if served and _alive(served["pid"]):
        os.kill(served["pid"], signal.SIGTERM)
        _wait_gone(served["pid"])


def test_clients_share_one_serving_process_and_do_not_import_pymilvus(db):
    first = _result(_client(str(db)))
    served = _served(db)
    assert first == {"len": 100, "type": "ServedIndex", "pymilvus": False}
    assert served and _alive(served["pid"]) and SERVES in lock_path(db).read_text()
    assert oct(serve_path(db).stat().st_mode & 0o777) == "0o600"  # it holds the service's key
    second = _result(_client(str(db), first=100, count=20))
    assert second["len"] == 120 and _served(db)["pid"] == served["pid"]  # the same process served both
    # a process in own mode uses the same server (through pymilvus), sees every write, and leaves it running
    index = MilvusIndex(8, collection="t", uri=str(db), create=False)
    assert len(index) == 120 and index.vectors(["k119"]).shape == (1, 8)
    index.close()
    assert _alive(served["pid"])


def test_concurrent_first_clients_start_one_serving_process_and_lose_no_write(db):
    clients = [_client(str(db), first=1000 * (i + 1), count=50) for i in range(4)]
    results = [_result(c) for c in clients]
    assert all("len" in r for r in results), results
    pid = _served(db)["pid"]
    index = MilvusIndex(8, collection="t", uri=str(db), create=False)
    expected = {f"k{i}" for i in range(100)} | {f"k{1000 * (c + 1) + i}" for c in range(4) for i in range(50)}
    assert set(index.keys()) == expected and len(index) == 300  # each key once
    index.close()
    assert _served(db)["pid"] == pid


def test_serving_process_stops_after_idle_and_waits_while_a_client_is_connected(db):
    holder = _client(str(db), hold=4, **{IDLE_ENV: "1"})
    deadline = time.monotonic() + 60
    while _served(db) is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pid = _served(db)["pid"]
    time.sleep(2.5)
    assert _alive(pid)  # idle time is 1 s, but a client is connected
    assert _result(holder)["len"] == 100
    _wait_gone(pid, timeout=15)  # stopped once the client left
    assert _served(db) is None
    index = MilvusIndex(8, collection="t", uri=str(db), create=False)  # the file is free again, data kept
    assert len(index) == 100
    index.close()


def test_a_killed_serving_process_is_replaced_and_no_data_is_lost(db, monkeypatch):
    monkeypatch.setenv(MODE_ENV, "shared")
    monkeypatch.setenv(IDLE_ENV, "60")
    from revsearch.index_registry import load_index

    index = load_index({"kind": "milvus", "dim": 8, "collection": "t", "uri": str(db)})
    index.add(["new"], np.ones((1, 8), np.float32))
    pid = _served(db)["pid"]
    os.kill(pid, signal.SIGKILL)
    _wait_gone(pid)
    assert len(index) == 101  # the next call starts a new serving process
    assert _served(db)["pid"] != pid
    hits = index.search(np.ones((1, 8), np.float32), 1)
    assert hits[0][0].key == "new"
    index.close()


def test_a_file_held_by_a_process_that_does_not_serve_gives_the_busy_error(db):
    holder = MilvusIndex(8, collection="t", uri=str(db), create=False)  # own mode, no hand-over
    try:
        out = _result(_client(str(db)))
        assert "busy" in out and "one process at a time" in out["busy"] and str(os.getpid()) in out["busy"]
        assert len(holder) == 100  # the holder is unaffected
    finally:
        holder.close()
    assert _result(_client(str(db)))["len"] == 100  # then served


def test_an_app_process_hands_the_file_over_and_then_uses_the_serving_process(db):
    store = IndexHandle({"kind": "milvus", "dim": 8}, {"collection": "t", "uri": str(db)})
    assert len(store) == 100  # own mode: this process runs the server and hands over on request
    out = _result(_client(str(db), first=500, count=10))
    assert out["len"] == 110 and store._index is None  # handed over to the serving process
    assert len(store) == 110  # re-opened, now through the serving process
    pid = _served(db)["pid"]
    assert _result(_client(str(db)))["len"] == 110 and _served(db)["pid"] == pid  # no further hand-over
    store.release()


def test_a_replaced_file_is_not_served_from_the_old_one(db):
    _result(_client(str(db)))
    pid = _served(db)["pid"]
    folder = db.parent
    for path in folder.iterdir():  # the folder deleted and made again, with a new index
        path.unlink()
    index = MilvusIndex(8, collection="t", uri=str(db))  # own mode: nothing serves the new file yet
    index.add(["only"], np.ones((1, 8), np.float32))
    index.close()
    _wait_gone(pid, timeout=15)  # the old serving process saw its file replaced
    out = _result(_client(str(db)))
    assert out["len"] == 1 and _served(db)["pid"] != pid


def test_sigterm_stops_the_serving_process_and_frees_the_file(db):
    _result(_client(str(db)))
    pid = _served(db)["pid"]
    os.kill(pid, signal.SIGTERM)
    _wait_gone(pid)
    assert _served(db) is None
    index = MilvusIndex(8, collection="t", uri=str(db), create=False)
    assert len(index) == 100
    index.close()


def test_the_index_service_gives_the_errors_of_a_direct_open_and_refuses_other_calls(db, monkeypatch):
    monkeypatch.setenv(MODE_ENV, "shared")
    from revsearch.index_registry import load_index

    config = {"kind": "milvus", "dim": 8, "collection": "t", "uri": str(db)}
    with pytest.raises(IndexNotFoundError, match=f"Milvus collection 'missing' does not exist at {str(db)!r}"):
        load_index({**config, "collection": "missing"})
    with pytest.raises(IndexMismatchError, match="holds 8-d vectors, this index produces 16-d vectors"):
        load_index({**config, "dim": 16})
    index = load_index(config)
    try:
        with pytest.raises(ValueError, match="not an index call"):
            index._call("close")
        assert len(index) == 100  # the connection still answers
    finally:
        index.close()


_CLI = """
import json, sys
from revsearch import cli
code = cli.main(sys.argv[1:])
sys.stdout.flush()
print(json.dumps({"code": code, "pymilvus": "pymilvus" in sys.modules}), file=sys.stderr)
"""


def _cli(*args: str, **env: str) -> dict:
    """Run the CLI in a fresh process: its exit code and output, and whether it imported pymilvus."""
    done = subprocess.run(
        [sys.executable, "-c", _CLI, *args], capture_output=True, text=True, timeout=600, env=_env(**env)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {**json.loads(done.stderr.strip().splitlines()[-1]), "out": done.stdout}


def test_cli_query_is_answered_by_the_serving_process_with_the_same_hits(tmp_path, subset_paths):
    folder = tmp_path / "images"
    folder.mkdir()
    for path in subset_paths[:12]:
        (folder / path.name.replace("image", path.parent.name)).symlink_to(path)
    env = {MODE_ENV: ""}  # unset: the CLI default (shared)
    index_dir = str(tmp_path / "idx")
    assert _cli("index", str(folder), "--index-dir", index_dir, "--features", "pixel", **env)["code"] == 0
    db = tmp_path / "idx" / "revsearch.db"
    try:
        pid = _served(db)["pid"]  # the build left the file served
        query = str(sorted(folder.iterdir())[3])
        served = _cli("query", query, "--index-dir", index_dir, "-k", "5", **env)
        assert served["code"] == 0 and not served["pymilvus"] and _served(db)["pid"] == pid
        assert served["out"].splitlines()[0].split()[-1] == query  # the image itself first
        direct = _cli("query", query, "--index-dir", index_dir, "-k", "5", **{MODE_ENV: "own"})
        assert direct["pymilvus"] and direct["out"] == served["out"]  # own mode: pymilvus to the same server
    finally:
        os.kill(_served(db)["pid"], signal.SIGTERM)


_EARLY = """
import json, sys
from revsearch.cli_launch import serve_early
starting = serve_early(sys.argv[1:])
loaded = sorted(m for m in ("revsearch.cli", "revsearch.search_index", "pymilvus", "numpy") if m in sys.modules)
if starting is not None:
    starting.slot()
print(json.dumps({"started": starting is not None, "loaded": loaded}))
"""


def _early(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _EARLY, *args], capture_output=True, text=True, timeout=600, env=_env(**{MODE_ENV: ""})
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_command_starts_serving_a_query_s_lite_file_before_its_own_imports(tmp_path, subset_paths):
    folder = tmp_path / "images"
    folder.mkdir()
    for path in subset_paths[:6]:
        (folder / path.name.replace("image", path.parent.name)).symlink_to(path)
    index_dir = str(tmp_path / "idx")
    assert _cli("index", str(folder), "--index-dir", index_dir, "--features", "pixel", **{MODE_ENV: ""})["code"] == 0
    db = tmp_path / "idx" / "revsearch.db"
    built = _served(db)["pid"]
    os.kill(built, signal.SIGTERM)
    _wait_gone(built)
    query = str(sorted(folder.iterdir())[2])
    assert _early("index", str(folder), "--index-dir", index_dir) == {"started": False, "loaded": []}
    assert _early("query", query, "--index-dir", str(tmp_path / "none"))["started"] is False
    try:
        early = _early("query", query, "-k", "3", f"--index-dir={index_dir}")
        assert early == {"started": True, "loaded": []}  # before the command line's, numpy's, pymilvus's imports
        pid = _served(db)["pid"]
        collection = json.loads((tmp_path / "idx" / "manifest.json").read_text())["backend"]["collection"]
        _wait_loaded(_served(db)["uri"], collection)  # asked for by the serving process itself: nobody opened it
        done = subprocess.run(
            [sys.executable, "-m", "revsearch", "query", query, "--index-dir", index_dir, "-k", "3"],
            capture_output=True,
            text=True,
            timeout=600,
            env=_env(**{MODE_ENV: ""}),
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.splitlines()[0].split()[-1] == query and _served(db)["pid"] == pid
        assert "/scipy/" not in Path(f"/proc/{pid}/maps").read_text()  # searched without pymilvus's scipy check
    finally:
        os.kill(_served(db)["pid"], signal.SIGTERM)


def _wait_loaded(server_uri: str, collection: str, timeout: float = 60) -> None:
    """Wait until the Lite server at ``server_uri`` has ``collection`` loaded (asked through a client
    of its own, which loads nothing)."""
    from pymilvus import MilvusClient
    from pymilvus.client.types import LoadState

    client = MilvusClient(uri=server_uri)
    try:
        deadline = time.monotonic() + timeout
        while (state := client.get_load_state(collection)["state"]) != LoadState.Loaded:
            assert time.monotonic() < deadline, f"{collection} is still {state}"
            time.sleep(0.05)
    finally:
        client.close()


def test_a_serving_process_started_without_preload_leaves_collections_unloaded(db):
    """The check above can fail: a plain start loads nothing until a client opens the collection."""
    from pymilvus import MilvusClient
    from pymilvus.client.types import LoadState

    from revsearch.lite_server import open_lite

    slot = open_lite(db, shared=True)
    try:
        client = MilvusClient(uri=slot.uri)
        time.sleep(1)
        assert client.get_load_state("t")["state"] == LoadState.NotLoad
        client.close()
    finally:
        slot.release()


def test_own_mode_start_loads_the_collection_while_the_caller_goes_on(db, monkeypatch):
    monkeypatch.setenv(MODE_ENV, "own")
    from revsearch.lite_preload import Preload
    from revsearch.lite_server import LiteServerStart

    starting = LiteServerStart.for_uri(str(db), Preload("t"))
    try:
        starting.wait()
        from milvus_lite.server_manager import server_manager_instance

        _wait_loaded(server_manager_instance.start_and_get_uri(str(db)), "t", timeout=0)
    finally:
        starting.release()
