"""Server-side bulk import for :class:`~revsearch.index.milvus.MilvusIndex`.

Vectors are written as numpy column files where the server reads them (a :class:`BulkStorage`: a
shared directory, or the server's S3 / MinIO bucket), imported with ``utility.do_bulk_insert`` (no
``MilvusClient`` call yet), then loaded. Support is learnt from the server (Lite: ``UNIMPLEMENTED``).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import grpc
import numpy as np
from pymilvus import BulkInsertState, MilvusClient, MilvusException, PyMilvusDeprecationWarning, connections, utility

from revsearch.errors import BulkImportError, BulkImportUnsupportedError

#: Rows per import task (one ``key.npy`` + ``vector.npy`` pair).
ROWS_PER_FILE = 200_000
#: Seconds to wait for one import task before giving up.
IMPORT_TIMEOUT = 1800.0

#: Turns the names of files written in a batch's local directory into the paths the server reads.
Publish = Callable[[Sequence[str]], list[str]]

_FAILED_STATES = (BulkInsertState.ImportFailed, BulkInsertState.ImportFailedAndCleaned)


class BulkStorage:
    """Where bulk-import files are written, and the names the Milvus server reads them by."""

    @contextlib.contextmanager
    def batch(self) -> Iterator[tuple[Path, Publish]]:
        """Yield ``(local_dir, publish)``: write files into ``local_dir``, then ``publish(names)``
        returns the paths the server reads; everything is removed when the block ends."""
        raise NotImplementedError


class LocalBulkStorage(BulkStorage):
    """A directory shared with the server: ``directory`` as this process sees it, ``server_directory``
    as the server does (default: the same path; for a container, where it is mounted)."""

    def __init__(self, directory: str | Path, server_directory: str | None = None):
        self.directory = Path(directory).expanduser().resolve()
        self.server_directory = server_directory if server_directory is not None else str(self.directory)

    @contextlib.contextmanager
    def batch(self) -> Iterator[tuple[Path, Publish]]:
        name = f"revsearch-bulk-{uuid.uuid4().hex[:12]}"
        local = self.directory / name
        local.mkdir(parents=True)
        try:
            yield local, lambda files: [f"{self.server_directory.rstrip('/')}/{name}/{f}" for f in files]
        finally:
            shutil.rmtree(local, ignore_errors=True)

    def __repr__(self) -> str:
        return f"LocalBulkStorage({str(self.directory)!r}, server_directory={self.server_directory!r})"


class S3BulkStorage(BulkStorage):
    """The S3 / MinIO bucket the Milvus server keeps its data in (``minio.bucketName``, e.g. ``a-bucket``);
    files go under ``prefix`` and are deleted after the import. Needs boto3; keys are never saved."""

    def __init__(
        self,
        bucket: str,
        endpoint_url: str,
        access_key: str,
        secret_key: str,
        prefix: str = "revsearch-bulk",
        region: str = "us-east-1",
    ):
        self.bucket, self.endpoint_url, self.prefix, self.region = bucket, endpoint_url, prefix.strip("/"), region
        self._access_key, self._secret_key = access_key, secret_key

    def client(self):
        """A boto3 S3 client for the endpoint."""
        try:
            import boto3
        except ImportError as exc:
            raise BulkImportError("S3BulkStorage needs boto3: pip install boto3") from exc
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self._access_key,
            aws_secret_access_key=self._secret_key,
            region_name=self.region,
        )

    @contextlib.contextmanager
    def batch(self) -> Iterator[tuple[Path, Publish]]:
        s3 = self.client()
        base = f"{self.prefix}/{uuid.uuid4().hex[:12]}"
        uploaded: list[str] = []

        def publish(files: Sequence[str]) -> list[str]:
            keys = [f"{base}/{f}" for f in files]
            for f, key in zip(files, keys):
                s3.upload_file(str(Path(local) / f), self.bucket, key)
                uploaded.append(key)
            return keys  # object keys in the bucket: what Milvus's Import API expects

        with tempfile.TemporaryDirectory(prefix="revsearch-bulk-") as local:
            try:
                yield Path(local), publish
            finally:
                for key in uploaded:
                    with contextlib.suppress(Exception):
                        s3.delete_object(Bucket=self.bucket, Key=key)

    def __repr__(self) -> str:
        return f"S3BulkStorage(bucket={self.bucket!r}, endpoint_url={self.endpoint_url!r}, prefix={self.prefix!r})"


def _is_unimplemented(exc: Exception) -> bool:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return exc.code() == grpc.StatusCode.UNIMPLEMENTED
    return isinstance(exc, MilvusException) and "unimplemented" in str(exc.message).lower()


@contextlib.contextmanager
def import_connection(uri: str, token: str = "", db_name: str = "") -> Iterator[str]:
    """The alias of a new pymilvus connection to ``uri`` for the ``utility`` bulk-insert calls made in
    the block (their deprecation warning silenced: MilvusClient has no import call yet)."""
    alias = f"revsearch-bulk-{uuid.uuid4().hex[:12]}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PyMilvusDeprecationWarning)
        connections.connect(alias=alias, uri=uri, token=token, db_name=db_name)
        try:
            yield alias
        finally:
            connections.disconnect(alias)


def supports_bulk_import(using: str, collection: str) -> bool:
    """Whether the server on connection ``using`` answers a read-only import call (listing the import
    tasks of ``collection``): False if it says the API is unimplemented (Milvus Lite)."""
    rpc_log = logging.getLogger("pymilvus.decorators")  # pymilvus logs every failed RPC at ERROR
    rpc_log.addFilter(quiet := lambda record: False)
    try:
        utility.list_bulk_insert_tasks(1, collection, using=using)
    except Exception as exc:
        if _is_unimplemented(exc):
            return False
        raise
    finally:
        rpc_log.removeFilter(quiet)
    return True


def write_columns(
    directory: Path, key_field: str, vector_field: str, keys: Sequence[str], vectors: np.ndarray
) -> list[str]:
    """Write Milvus's numpy column files (keys as unicode, vectors as float32) into ``directory``;
    returns their file names."""
    np.save(directory / f"{key_field}.npy", np.asarray(list(keys), dtype=str))
    np.save(directory / f"{vector_field}.npy", np.ascontiguousarray(vectors, dtype=np.float32))
    return [f"{key_field}.npy", f"{vector_field}.npy"]


def run_import(
    using: str,
    collection: str,
    files: list[str],
    expected_rows: int,
    timeout: float = IMPORT_TIMEOUT,
    poll: float = 0.5,
) -> int:
    """Import ``files`` (server paths) on connection ``using`` in one task and wait for it; returns its id.
    :class:`BulkImportError` if it fails, imports other than ``expected_rows`` rows, or outlasts ``timeout``."""
    try:
        task = utility.do_bulk_insert(collection, files, using=using)
    except Exception as exc:
        if _is_unimplemented(exc):
            raise BulkImportUnsupportedError(f"this Milvus does not offer bulk import: {exc}") from exc
        raise BulkImportError(f"Milvus refused the import of {files}: {getattr(exc, 'message', exc)}") from exc
    deadline = time.monotonic() + timeout
    while True:
        state = utility.get_bulk_insert_state(task, using=using)
        if state.state in _FAILED_STATES:
            raise BulkImportError(
                f"Milvus import task {task} of {files} failed: {state.infos.get('failed_reason') or state.state_name}"
            )
        if state.state == BulkInsertState.ImportCompleted:
            if state.row_count != expected_rows:
                raise BulkImportError(
                    f"Milvus import task {task} imported {state.row_count} rows, {expected_rows} were written"
                )
            return task
        if time.monotonic() > deadline:
            raise BulkImportError(
                f"Milvus import task {task} not done after {timeout:.0f} s (state "
                f"{state.state_name}, {state.infos.get('progress_percent', '?')}%); "
                "it may still finish: check it with pymilvus utility.get_bulk_insert_state"
            )
        time.sleep(poll)


def bulk_import(
    client: MilvusClient,
    using: str,
    collection: str,
    storage: BulkStorage,
    key_field: str,
    vector_field: str,
    keys: Sequence[str],
    vectors: np.ndarray,
    before_import: Callable[[Sequence[str]], None] | None = None,
    rows_per_file: int = ROWS_PER_FILE,
    timeout: float = IMPORT_TIMEOUT,
) -> list[int]:
    """Import ``keys`` / ``vectors`` (keys in their stored form, each once) in tasks of ``rows_per_file``
    rows, then reload the collection so searches see them; returns the task ids. Import *inserts*:
    ``before_import(chunk_keys)`` runs before each task (to delete existing rows with those keys)."""
    tasks: list[int] = []
    for start in range(0, len(keys), rows_per_file):
        chunk_keys = keys[start : start + rows_per_file]
        if before_import is not None:
            before_import(chunk_keys)
        with storage.batch() as (local, publish):
            names = write_columns(local, key_field, vector_field, chunk_keys, vectors[start : start + rows_per_file])
            tasks.append(run_import(using, collection, publish(names), len(chunk_keys), timeout))
    if tasks:
        client.refresh_load(collection)  # load the imported segments: searchable when this returns
    return tasks
