"""The S3-compatible object store behind ``DICOMSVC_BLOB_URL=s3://bucket/prefix`` (issue 13).

The client is obstore (Rust's ``object_store`` crate, maintained by the Apache Arrow project),
chosen by measurement (bench/s3client.py against SeaweedFS 4.48, this machine): import 10 ms and
+8 MiB RSS against boto3's 220-470 ms and +38 MiB (per process: the server and each worker load
it), 0.5 MB put/get 8-13/4-5 ms against 11-13/5-6 ms, 100 MB put/get 1.0/0.2 s against
0.9-2.1/0.3-0.5 s. It is imported only here, and only when S3 is configured.

Names: an object's name is the blob's key under the prefix (``<prefix>/<aa>/<id>.dcm``), so the
key the database records is the same on disk and in the bucket; ``ObjectStore`` takes and
returns keys relative to the prefix.

Writes (Amazon S3 User Guide, "Conditional requests" and "Multipart upload overview"): an object
up to DICOMSVC_S3_MULTIPART_BYTES goes up in one conditional PUT (``If-None-Match: *``: created
whole or not at all, never over an existing object; SeaweedFS honours it); a larger one is
streamed from its file in parts of that size, two at a time (memory bounded by two parts,
whatever the file's size), and appears whole at CompleteMultipartUpload -- under a fresh
``shortuuid`` key nobody else writes, so no temporary key and copy are needed (measured here:
conditional PUT 11.5 ms per 0.5 MB object, plain PUT 14.8 ms, temporary key + copy + delete
21.6 ms). Reads stream to a file. Errors: a missing object is ``FileNotFoundError`` (as a missing
file is); anything else -- refused connection, timeout, 5xx after the retries, credentials
refused -- is ``StorageUnavailable`` (503), naming the error's type only.
"""

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from ..errors import StorageUnavailable

log = logging.getLogger("dicomsvc")
READ_CHUNK = 1 << 20  # bytes per chunk of a streamed GET
PART_CONCURRENCY = 2  # parts of one multipart upload in flight at once
_made: dict[tuple, "ObjectStore"] = {}
_made_lock = threading.Lock()


class BucketMissing(RuntimeError):
    """The bucket of DICOMSVC_BLOB_URL does not exist (start-up stops and says so)."""


@dataclass(frozen=True)
class Listed:
    key: str  # relative to the prefix
    modified: float  # seconds since the epoch
    size: int


class ObjectStore:
    """One bucket and prefix. Picklable (a worker makes its own client on first use: the
    Rust runtime of a parent is not carried across ``fork``)."""

    def __init__(self, url: str, endpoint: str, region: str, multipart_bytes: int, timeout: int) -> None:
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.endpoint, self.region = endpoint, region
        self.multipart_bytes, self.timeout = multipart_bytes, timeout
        self._client = None
        self._pid = 0
        self._lock = threading.Lock()

    @classmethod
    def of(cls, config) -> "ObjectStore | None":
        """The object store of ``config`` (dicomsvc.config.Config); None without DICOMSVC_BLOB_URL."""
        if not config.blob_url:
            return None
        params = (config.blob_url, config.s3_endpoint, config.s3_region, config.s3_multipart_bytes, config.s3_timeout)
        with _made_lock:  # one per process and settings: its client's connections are reused
            if params not in _made:
                _made[params] = cls(*params)
            return _made[params]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_client=None, _pid=0, _lock=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ObjectStore(s3://{self.bucket}/{self.prefix})"

    def _name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _key(self, name: str) -> str:
        return name[len(self.prefix) + 1 :] if self.prefix else name

    def client(self):
        if self._client is None or self._pid != os.getpid():
            with self._lock:
                if self._client is None or self._pid != os.getpid():
                    self._client, self._pid = self._connect(), os.getpid()
        return self._client

    def _connect(self):
        from obstore.store import S3Store

        options: dict = {}
        for option, variable in (("access_key_id", "AWS_ACCESS_KEY_ID"), ("secret_access_key", "AWS_SECRET_ACCESS_KEY"),
                                 ("session_token", "AWS_SESSION_TOKEN")):  # fmt: skip
            if os.environ.get(variable):
                options[option] = os.environ[variable]
        if self.endpoint:
            options["endpoint"] = self.endpoint
            options["virtual_hosted_style_request"] = False  # path-style: what S3-compatible servers take
        return S3Store(
            self.bucket,
            region=self.region,
            client_options={"allow_http": True, "timeout": f"{self.timeout}s", "connect_timeout": "5s"},
            retry_config={"max_retries": 3, "retry_timeout": timedelta(seconds=self.timeout),
                          "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=2)}},
            **options,
        )  # fmt: skip

    def put_file(self, key: str, path: Path) -> None:
        """Upload the file ``path`` as ``key``: one conditional PUT, or a multipart upload
        streamed from the file past DICOMSVC_S3_MULTIPART_BYTES. Visible whole or not at all."""
        import obstore

        size = os.path.getsize(path)
        with _errors(), open(path, "rb") as src:
            if size <= self.multipart_bytes:
                obstore.put(self.client(), self._name(key), src, mode="create", use_multipart=False)
            else:
                obstore.put(self.client(), self._name(key), src, use_multipart=True,
                            chunk_size=self.multipart_bytes, max_concurrency=PART_CONCURRENCY)  # fmt: skip

    def put_bytes(self, key: str, data: bytes) -> None:
        import obstore

        with _errors():
            obstore.put(self.client(), self._name(key), data, use_multipart=False)

    def get_file(self, key: str, out) -> int:
        """Stream ``key`` into the open binary file ``out``; its size. FileNotFoundError if missing."""
        import obstore

        written = 0
        with _errors():
            for chunk in obstore.get(self.client(), self._name(key)).stream(min_chunk_size=READ_CHUNK):
                out.write(chunk)
                written += len(chunk)
        return written

    def exists(self, key: str) -> bool:
        import obstore

        try:
            with _errors():
                obstore.head(self.client(), self._name(key))
        except FileNotFoundError:
            return False
        return True

    def delete(self, *keys: str) -> None:
        """Remove objects (a missing one is no error)."""
        import obstore

        names = [self._name(key) for key in keys if key]
        if names:
            with _errors():
                obstore.delete(self.client(), names)

    def listing(self, under: str = "") -> Iterator[Listed]:
        """Every object under the key prefix ``under`` (relative to the store's prefix)."""
        import obstore

        prefix = self._name(under) if under else (self.prefix + "/" if self.prefix else None)
        with _errors():
            for batch in obstore.list(self.client(), prefix=prefix, chunk_size=1000):
                for meta in batch:
                    modified: datetime = meta["last_modified"]
                    yield Listed(self._key(meta["path"]), modified.timestamp(), meta["size"])

    def delete_under(self, under: str) -> None:
        """Remove every object under the key prefix ``under`` (a rendering folder, a spool)."""
        self.delete(*[entry.key for entry in self.listing(under)])

    def check(self) -> None:
        """One LIST of at most one object: BucketMissing when the bucket does not exist,
        StorageUnavailable when the store cannot be reached or refuses us."""
        import obstore

        try:
            with _errors():
                next(iter(obstore.list(self.client(), prefix=self.prefix or None, chunk_size=1)), None)
        except StorageUnavailable as exc:
            if "NoSuchBucket" in str(exc.__cause__):
                raise BucketMissing(f"the bucket {self.bucket!r} of DICOMSVC_BLOB_URL does not exist: create it first") from None
            raise


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """obstore's errors as ours: NotFoundError is a FileNotFoundError already; the rest 503."""
    from obstore.exceptions import BaseError

    try:
        yield
    except FileNotFoundError:
        raise
    except BaseError as exc:
        log.warning("object store error: %s", type(exc).__name__)
        raise StorageUnavailable(f"the object store is unavailable ({type(exc).__name__}); try again later") from exc
