"""Bulk importer: the client side of ``POST /dicom`` uploads (``dicomsvc import``).

Walks files, folders (recursively) and ZIP archives, uploads each file as
``POST {url}/dicom`` (``application/dicom``, or ``application/zip`` for
``*.zip``) streamed from disk over ``jobs`` parallel connections -- files over
``resumable_over`` bytes as resumable tus 1.0.0 uploads to ``{url}/uploads/`` in
chunks, so a broken connection costs the chunk in flight, not the file -- follows
``202`` archive jobs at ``GET {url}/jobs/<id>`` until they finish, and adds
up what the server answered into an :class:`ImportSummary`.

The server decides what is DICOM; only names that are obviously not (hidden
files such as ``.DS_Store``, ``__MACOSX/`` folders, ``Thumbs.db``) and
non-regular files (FIFOs, sockets, devices) are passed over locally while
walking. Nothing read from a file is ever printed or logged: only paths and
the server's error codes and details.

Public API: :func:`collect`, :func:`import_paths`, :func:`format_summary`,
:class:`ImportSummary`, :class:`Failure`, :class:`Warned`, :class:`Upload`.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal, TextIO
from urllib.parse import urljoin

import httpx

from ..dicom.files import HEAD_BYTES, skip_reason, sniff

DEFAULT_URL = "http://localhost:8001"
DEFAULT_JOBS = 4
CHUNK_SIZE = 64 * 1024
RESUMABLE_OVER = 64 * 1024**2  # files larger than this go as tus uploads (--resumable-over)
RESUMABLE_CHUNK = 32 * 1024**2  # bytes per PATCH of a tus upload
RESUMABLE_RETRIES = 5  # broken connections in a row on one upload before it is given up
TUS = {"Tus-Resumable": "1.0.0"}
# A ``/jobs/<id>`` answer in one of these states is still going.
JOB_RUNNING = frozenset({"queued", "running"})

Kind = Literal["dicom", "zip"]
CONTENT_TYPES: dict[str, str] = {"dicom": "application/dicom", "zip": "application/zip"}


@dataclass(frozen=True)
class Upload:
    """One file to post: a DICOM candidate or a ZIP archive."""

    path: Path
    kind: Kind
    size: int


@dataclass(frozen=True)
class Failure:
    """A file that did not make it: where, the server's (or our) error code, and why.

    ``file`` is the path on disk; for a member of an archive it is
    ``<archive>!<member>`` with the member name as the server reported it.
    """

    file: str
    error: str
    detail: str


@dataclass(frozen=True)
class Warned:
    """A file that was stored, with the server's warnings (say, pixel data it could not decode).

    ``file`` is named as in :class:`Failure`.
    """

    file: str
    warnings: tuple[str, ...]


@dataclass
class ImportSummary:
    """What a run did. Counts are instances (files), not requests."""

    created: int = 0
    duplicates: int = 0
    skipped: int = 0  # the server's "skipped" (archive members it passed over)
    failed: int = 0
    warnings: int = 0  # stored, with warnings (e.g. pixel data that could not be decoded)
    ignored: int = 0  # passed over locally while walking (hidden, system, non-regular, not DICOM)
    uploads: int = 0  # requests answered (one per file or archive)
    not_sent: int = 0  # left out because the server became unreachable
    bytes_sent: int = 0
    seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    warned: list[Warned] = field(default_factory=list)  # the files counted in ``warnings``
    unreachable: str | None = None  # set when the server could not be reached: the run stopped

    @property
    def exit_code(self) -> int:
        """2 when the server could not be reached, 1 when anything failed, else 0."""
        if self.unreachable is not None:
            return 2
        return 1 if self.failed else 0

    def add(self, other: _Outcome) -> None:
        self.created += other.created
        self.duplicates += other.duplicates
        self.skipped += other.skipped
        self.failed += other.failed
        self.warnings += other.warnings
        self.uploads += other.uploads
        self.not_sent += other.not_sent
        self.failures.extend(other.failures)
        self.warned.extend(other.warned)
        if other.unreachable is not None and self.unreachable is None:
            self.unreachable = other.unreachable


@dataclass
class _Outcome:
    """What one upload came to; merged into the summary by the main thread."""

    created: int = 0
    duplicates: int = 0
    skipped: int = 0
    failed: int = 0
    warnings: int = 0
    uploads: int = 0
    not_sent: int = 0
    failures: list[Failure] = field(default_factory=list)
    warned: list[Warned] = field(default_factory=list)
    unreachable: str | None = None

    @classmethod
    def failure(cls, file: str, error: str, detail: str, *, answered: bool = False) -> _Outcome:
        return cls(failed=1, uploads=int(answered), failures=[Failure(file, error, detail)])


# Walking ----------------------------------------------------------------------


def _may_be_dicom(path: Path) -> bool:
    """The server's own first-bytes test (a file named on the command line is always sent)."""
    with open(path, "rb") as fh:
        return sniff(fh.read(HEAD_BYTES)) is None


def _kind(path: Path) -> Kind:
    return "zip" if path.suffix.lower() == ".zip" else "dicom"


def _walk(folder: Path, uploads: list[Upload], failures: list[Failure]) -> int:
    """Add the regular files under ``folder`` (sorted, depth first); returns how many were ignored."""
    ignored = 0
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        failures.append(Failure(str(folder), "unreadable", exc.strerror or type(exc).__name__))
        return 0
    for entry in entries:
        if skip_reason(entry.name):  # the server's own rule (a name given on the command line is always sent)
            ignored += 1
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                ignored += _walk(Path(entry.path), uploads, failures)
            elif entry.is_file():  # follows symlinks; False for FIFOs, sockets, devices, dangling links
                path = Path(entry.path)
                if _kind(path) == "dicom" and not _may_be_dicom(path):
                    ignored += 1  # a README or a thumbnail in the folder: not an import failure
                    continue
                uploads.append(Upload(path, _kind(path), entry.stat().st_size))
            else:
                ignored += 1
        except OSError as exc:
            failures.append(Failure(entry.path, "unreadable", exc.strerror or type(exc).__name__))
    return ignored


def collect(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[Upload], int, list[Failure]]:
    """Expand command-line paths into uploads.

    Returns ``(uploads, ignored, failures)``: the files to post (each file once,
    in command-line order, folders walked in name order), how many names were
    passed over while walking, and the paths that could not be used at all
    (missing, unreadable, not a regular file).
    """
    uploads: list[Upload] = []
    failures: list[Failure] = []
    ignored = 0
    for raw in paths:
        path = Path(raw)
        try:
            st = path.stat()
        except FileNotFoundError:
            failures.append(Failure(str(path), "not_found", "no such file or directory"))
            continue
        except OSError as exc:
            failures.append(Failure(str(path), "unreadable", exc.strerror or type(exc).__name__))
            continue
        if stat.S_ISDIR(st.st_mode):
            ignored += _walk(path, uploads, failures)
        elif stat.S_ISREG(st.st_mode):
            uploads.append(Upload(path, _kind(path), st.st_size))
        else:
            failures.append(Failure(str(path), "not_a_file", "not a regular file or folder"))
    seen: set[Path] = set()
    unique: list[Upload] = []
    for upload in uploads:
        key = upload.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(upload)
    return unique, ignored, failures


# Progress ---------------------------------------------------------------------


class _Meter:
    """Bytes sent and archive-job progress, updated by the upload threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bytes = 0
        self._jobs: dict[str, tuple[int, int]] = {}

    def sent(self, n: int) -> None:
        with self._lock:
            self._bytes += n

    def job(self, key: str, processed: int | None, total: int | None) -> None:
        with self._lock:
            if processed is None or total is None:
                self._jobs.pop(key, None)
            else:
                self._jobs[key] = (processed, total)

    def snapshot(self) -> tuple[int, tuple[int, int] | None]:
        """Bytes sent so far, and (processed, total) summed over archives being processed."""
        with self._lock:
            jobs = None
            if self._jobs:
                jobs = (sum(p for p, _ in self._jobs.values()), sum(t for _, t in self._jobs.values()))
            return self._bytes, jobs


class _ProgressLine:
    """One status line on ``stream``: redrawn in place with ``\\r`` on a TTY, plain lines otherwise."""

    def __init__(self, stream: TextIO | None, total_uploads: int, total_bytes: int, interval: float | None) -> None:
        self._stream = stream
        self._tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self._interval = interval if interval is not None else (0.2 if self._tty else 5.0)
        self._total_uploads = total_uploads
        self._total_mb = total_bytes / 1e6
        self._started = time.monotonic()
        self._last = self._started
        self._width = 0

    @property
    def tick(self) -> float:
        return self._interval

    def _line(self, summary: ImportSummary, done: int, meter: _Meter) -> str:
        sent, jobs = meter.snapshot()
        elapsed = max(time.monotonic() - self._started, 1e-9)
        parts = [
            f"{done}/{self._total_uploads} uploads",
            f"{sent / 1e6:.1f}/{self._total_mb:.1f} MB",
            f"{sent / 1e6 / elapsed:.1f} MB/s",
            f"created {summary.created}",
            f"duplicates {summary.duplicates}",
            f"failed {summary.failed}",
        ]
        if jobs is not None:
            parts.append(f"archives {jobs[0]}/{jobs[1]}")
        return "import: " + ", ".join(parts)

    def update(self, summary: ImportSummary, done: int, meter: _Meter, *, final: bool = False) -> None:
        if self._stream is None:
            return
        now = time.monotonic()
        if not final and now - self._last < self._interval:
            return
        self._last = now
        line = self._line(summary, done, meter)
        if self._tty:
            pad = " " * max(self._width - len(line), 0)
            self._width = len(line)
            self._stream.write("\r" + line + pad + ("\n" if final else ""))
        else:
            self._stream.write(line + "\n")
        self._stream.flush()


# Uploading --------------------------------------------------------------------


class _FileBody:
    """A request body read from an open file in ``CHUNK_SIZE`` pieces (never whole)."""

    def __init__(self, file: BinaryIO, meter: _Meter) -> None:
        self._file = file
        self._meter = meter

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self._file.read(CHUNK_SIZE):
            self._meter.sent(len(chunk))
            yield chunk


class _SliceBody:
    """The next ``size`` bytes of an open file, in ``CHUNK_SIZE`` pieces (one tus PATCH)."""

    def __init__(self, file: BinaryIO, size: int, meter: _Meter) -> None:
        self._file, self._left, self._meter = file, size, meter

    def __iter__(self) -> Iterator[bytes]:
        while self._left > 0 and (chunk := self._file.read(min(CHUNK_SIZE, self._left))):
            self._left -= len(chunk)
            self._meter.sent(len(chunk))
            yield chunk


def _metadata(values: dict[str, str]) -> str:
    """tus Upload-Metadata: ``key base64(value)`` pairs, comma-separated."""
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode('ascii')}" for k, v in values.items())


def _disposition(name: str) -> bytes:
    """``attachment; filename="<name>"`` (UTF-8; quotes, backslashes and controls replaced)."""
    safe = "".join("_" if c in '"\\' or ord(c) < 32 or ord(c) == 127 else c for c in name)
    return f'attachment; filename="{safe}"'.encode()


def _json(response: httpx.Response) -> dict | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _error_of(response: httpx.Response) -> tuple[str, str]:
    """The server's ``{"error", "detail"}``, or the status when the body is not that shape."""
    body = _json(response) or {}
    error = body.get("error")
    detail = body.get("detail")
    return (
        error if isinstance(error, str) and error else f"http_{response.status_code}",
        detail if isinstance(detail, str) else (response.reason_phrase or ""),
    )


def _warnings(body: dict) -> tuple[str, ...]:
    """The ``warnings`` of a stored instance's answer (a list of messages), as strings."""
    warnings = body.get("warnings")
    if not warnings:
        return ()
    if not isinstance(warnings, list):
        warnings = [warnings]
    return tuple(str(w) for w in warnings)


def _count(body: dict, key: str, default: int) -> int:
    value = body.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _batch(archive: str, body: dict) -> _Outcome:
    """Counts and failures from a ZIP answer (``200`` batch or a finished job)."""
    results = body.get("results")
    results = [r for r in results if isinstance(r, dict)] if isinstance(results, list) else []

    def n(status: str) -> int:
        return sum(1 for r in results if r.get("status") == status)

    out = _Outcome(
        created=_count(body, "created", n("created")),
        duplicates=_count(body, "duplicates", n("duplicate")),
        skipped=_count(body, "skipped", n("skipped")),
        failed=_count(body, "failed", n("failed")),
        uploads=1,
    )
    for r in results:
        if r.get("status") == "failed":
            out.failures.append(
                Failure(f"{archive}!{r.get('file', '?')}", str(r.get("error") or "failed"), str(r.get("detail") or ""))
            )
        elif warnings := _warnings(r):
            out.warnings += 1
            out.warned.append(Warned(f"{archive}!{r.get('file', '?')}", warnings))
    if body.get("status") == "failed":  # the job itself failed (say, a corrupt archive)
        error = body.get("error")
        error = error if isinstance(error, str) and error else "job_failed"
        out.failures.append(Failure(archive, error, str(body.get("detail") or "archive job failed")))
        out.failed += 1
    elif out.failed > len(out.failures):  # counted, but not itemised: still name the archive
        out.failures.append(Failure(archive, "failed", f"{out.failed - len(out.failures)} member(s) failed"))
    return out


@dataclass(frozen=True)
class _Run:
    """What every upload thread shares for one run (the client is thread-safe)."""

    client: httpx.Client
    base_url: str
    jobs: int
    params: dict[str, str]
    meter: _Meter
    server_down: threading.Event
    stop: threading.Event
    poll_interval: float
    resumable_over: int | None = RESUMABLE_OVER  # None: never resumable
    resumable_chunk: int = RESUMABLE_CHUNK
    retry_delay: float = 1.0  # seconds before resuming after a broken connection (times the attempt)

    def unreachable(self, exc: httpx.TransportError) -> _Outcome:
        self.server_down.set()
        return _Outcome(not_sent=1, unreachable=_unreachable(self.base_url, exc))

    def poll(self, archive: str, job: str) -> _Outcome:
        """Follow ``GET /jobs/<job>`` until it is no longer queued or running: each answer held by
        the server until the job ends or ``poll_interval`` is over (``?wait=``), so its end is seen
        as it comes; a server that answers sooner is asked again after the rest of the interval."""
        url = f"{self.base_url}/jobs/{job}"
        try:
            while True:
                asked = time.monotonic()
                response = self.client.get(url, params={"wait": self.poll_interval})
                if response.status_code != 200:
                    return _Outcome.failure(archive, *_error_of(response), answered=True)
                body = _json(response)
                if body is None or not isinstance(body.get("status"), str):
                    detail = "job status is not a JSON object with a status"
                    return _Outcome.failure(archive, "bad_response", detail, answered=True)
                if body["status"] not in JOB_RUNNING:
                    return _batch(archive, body)
                self.meter.job(archive, _count(body, "processed", 0), _count(body, "total", 0))
                if self.stop.wait(max(0.0, self.poll_interval - (time.monotonic() - asked))):
                    return _Outcome.failure(archive, "interrupted", f"stopped while job {job} was {body['status']}")
        finally:
            self.meter.job(archive, None, None)

    def answer(self, upload: Upload, response: httpx.Response) -> _Outcome:
        """Turn the server's answer to one upload into counts."""
        name = str(upload.path)
        if response.status_code >= 300:
            return _Outcome.failure(name, *_error_of(response), answered=True)
        body = _json(response)
        if body is None:
            detail = f"HTTP {response.status_code} without a JSON object"
            return _Outcome.failure(name, "bad_response", detail, answered=True)
        if isinstance(body.get("job"), str):
            return self.poll(name, body["job"])
        if "results" in body or isinstance(body.get("created"), int):
            return _batch(name, body)
        if isinstance(body.get("id"), str):
            created = response.status_code == 201
            warnings = _warnings(body)
            return _Outcome(
                created=int(created),
                duplicates=int(not created),
                warnings=int(bool(warnings)),
                warned=[Warned(name, warnings)] if warnings else [],
                uploads=1,
            )
        return _Outcome.failure(name, "bad_response", f"HTTP {response.status_code} without an id", answered=True)

    def upload(self, upload: Upload) -> _Outcome:
        """Post one file (streamed) and follow its answer. Never raises for a per-file problem."""
        if self.server_down.is_set() or self.stop.is_set():
            return _Outcome(not_sent=1)
        name = str(upload.path)
        try:
            if self.resumable_over is not None and upload.size > self.resumable_over:
                outcome = self.upload_resumable(upload)
                if outcome is not None:
                    return outcome  # None: the server speaks no tus; posted whole below
            with upload.path.open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                headers = {"Content-Type": CONTENT_TYPES[upload.kind], "Content-Length": str(size)}
                if upload.kind == "dicom":  # the server records the name as the instance's source
                    headers["Content-Disposition"] = _disposition(upload.path.name)
                response = self.client.post(
                    f"{self.base_url}/dicom", params=self.params, headers=headers, content=_FileBody(f, self.meter)
                )
            return self.answer(upload, response)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            return self.unreachable(exc)
        except httpx.TimeoutException as exc:
            return _Outcome.failure(name, "timeout", type(exc).__name__)
        except httpx.TransportError as exc:
            return _Outcome.failure(name, "connection_error", f"{type(exc).__name__}: {exc}")
        except OSError as exc:  # opening or reading the file
            return _Outcome.failure(name, "unreadable", exc.strerror or type(exc).__name__)
        except Exception as exc:  # a bug here must not stop the other files
            return _Outcome.failure(name, "client_error", type(exc).__name__)

    def upload_resumable(self, upload: Upload) -> _Outcome | None:
        """A tus 1.0.0 upload (``/uploads/``) in ``resumable_chunk`` PATCHes; after a broken
        connection, resume at the offset HEAD says the server stored. None when the server has
        no ``/uploads/`` (an older one): the caller posts the file whole."""
        name = str(upload.path)
        values = {"filename": upload.path.name} | ({"anonymize": "true"} if self.params.get("anonymize") else {})
        headers = TUS | {"Upload-Length": str(upload.size), "Upload-Metadata": _metadata(values)}
        for attempt in range(1, RESUMABLE_RETRIES + 1):
            try:
                created = self.client.post(f"{self.base_url}/uploads/", headers=headers)
                break
            except (httpx.ConnectError, httpx.ConnectTimeout):
                raise  # nobody there: the run stops
            except httpx.TransportError:  # a broken connection: an upload it made (if any) expires unused
                if attempt == RESUMABLE_RETRIES or self.stop.wait(self.retry_delay * attempt):
                    raise
        if created.status_code in (404, 405):
            return None
        if created.status_code != 201 or "location" not in created.headers:
            return _Outcome.failure(name, *_error_of(created), answered=True)
        url = urljoin(f"{self.base_url}/", created.headers["location"])
        offset, broken = 0, 0
        with upload.path.open("rb") as f:
            while True:
                if self.stop.is_set():
                    return _Outcome.failure(name, "interrupted", f"stopped at byte {offset} of a resumable upload")
                size = min(self.resumable_chunk, upload.size - offset)
                f.seek(offset)
                headers = TUS | {"Content-Type": "application/offset+octet-stream", "Upload-Offset": str(offset),
                                 "Content-Length": str(size)}  # fmt: skip
                try:
                    answer = self.client.patch(url, headers=headers, content=_SliceBody(f, size, self.meter))
                except httpx.TransportError as exc:  # the connection broke: resume where the server is
                    broken += 1
                    if broken > RESUMABLE_RETRIES:
                        raise
                    offset = self._resume_at(url, broken, exc)
                    continue
                if answer.status_code in (409, 423):  # another offset, or a broken PATCH still being recorded
                    broken += 1
                    if broken > RESUMABLE_RETRIES:
                        return _Outcome.failure(name, *_error_of(answer), answered=True)
                    offset = self._resume_at(url, broken, None)
                    continue
                if "upload-result" in answer.headers:  # the last PATCH: the file was ingested (or refused)
                    return self._resumable_result(upload, url, answer)
                if answer.status_code != 204:
                    return _Outcome.failure(name, *_error_of(answer), answered=True)
                offset, broken = int(answer.headers["upload-offset"]), 0

    def _resume_at(self, url: str, attempt: int, exc: Exception | None) -> int:
        """The offset the server stored (tus HEAD), after a pause growing with ``attempt``."""
        for _ in range(RESUMABLE_RETRIES):
            if self.stop.wait(min(self.retry_delay * attempt, 10.0)):
                break
            try:
                head = self.client.head(url, headers=TUS)
            except httpx.TransportError as again:
                exc, attempt = again, attempt + 1
                continue
            if head.status_code == 200 and "upload-offset" in head.headers:
                return int(head.headers["upload-offset"])
            raise httpx.TransportError(f"HEAD of the upload answered {head.status_code}")
        raise exc if exc is not None else httpx.TransportError("the upload could not be resumed")

    def _resumable_result(self, upload: Upload, url: str, answer: httpx.Response) -> _Outcome:
        """Counts from a completed tus upload's Upload-Result (a batch's files: GET the upload)."""
        name = str(upload.path)
        try:
            result = json.loads(answer.headers["upload-result"])
        except ValueError:
            result = None
        if not isinstance(result, dict) or not isinstance(result.get("status"), int):
            return _Outcome.failure(name, "bad_response", "Upload-Result is not a JSON object", answered=True)
        if result["status"] >= 300:
            return _Outcome.failure(name, str(result.get("error") or f"http_{result['status']}"),
                                    str(result.get("detail") or ""), answered=True)  # fmt: skip
        if isinstance(result.get("job"), str):
            return self.poll(name, result["job"])
        if isinstance(result.get("id"), str):
            return _Outcome(created=int(result["status"] == 201), duplicates=int(result["status"] != 201), uploads=1)
        whole = _json(self.client.get(url)) or {}
        return _batch(name, whole.get("result") if isinstance(whole.get("result"), dict) else result)


def _unreachable(base_url: str, exc: Exception) -> str:
    return f"cannot reach the server at {base_url}: {str(exc) or type(exc).__name__}"


def _client(
    transport: httpx.BaseTransport | None, jobs: int, timeout: float | None, token: str | None = None
) -> httpx.Client:
    return httpx.Client(
        transport=transport,
        # every request, uploads and job polls alike (RFC 6750 §2.1); never printed
        headers={"Authorization": f"Bearer {token}"} if token else None,
        limits=httpx.Limits(max_connections=jobs, max_keepalive_connections=jobs),
        timeout=httpx.Timeout(timeout, connect=10.0, pool=None),
        follow_redirects=False,
    )


def import_paths(
    paths: Sequence[str | os.PathLike[str]],
    base_url: str = DEFAULT_URL,
    *,
    jobs: int = DEFAULT_JOBS,
    anonymize: bool = False,
    transport: httpx.BaseTransport | None = None,
    progress: TextIO | None = None,
    progress_interval: float | None = None,
    poll_interval: float = 0.5,
    timeout: float | None = 600.0,
    token: str | None = None,
    resumable_over: int | None = RESUMABLE_OVER,
    resumable_chunk: int = RESUMABLE_CHUNK,
    retry_delay: float = 1.0,
) -> ImportSummary:
    """Upload everything under ``paths`` to the service at ``base_url``.

    ``jobs`` uploads run at once (one connection each). ``transport`` replaces
    the network (tests pass an ``httpx.MockTransport``). ``progress``, when
    given, receives a status line every ``progress_interval`` seconds (0.2 on
    a TTY, where it is redrawn in place, else 5). ``timeout`` bounds each read
    and write (a ZIP answered synchronously can take a while). A file that
    fails never stops the others; a server that cannot be reached stops the
    run (``summary.unreachable`` says why, ``exit_code`` is 2). ``token`` is sent as
    ``Authorization: Bearer`` on every request (``--token``, ``DICOMSVC_TOKEN``). Files over
    ``resumable_over`` bytes (``--resumable-over``; None: none) go as tus uploads in
    ``resumable_chunk``-byte PATCHes, resumed ``retry_delay`` seconds (times the attempt) after
    a broken connection, up to RESUMABLE_RETRIES times in a row.
    """
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    started = time.monotonic()
    base_url = base_url.rstrip("/")
    uploads, ignored, local_failures = collect(paths)
    summary = ImportSummary(ignored=ignored, failed=len(local_failures), failures=list(local_failures))
    meter = _Meter()
    line = _ProgressLine(progress, len(uploads), sum(u.size for u in uploads), progress_interval)
    done = 0
    if uploads:
        with _client(transport, jobs, timeout, token) as client:
            run = _Run(
                client=client,
                base_url=base_url,
                jobs=jobs,
                params={"anonymize": "true"} if anonymize else {},
                meter=meter,
                server_down=threading.Event(),
                stop=threading.Event(),
                poll_interval=poll_interval,
                resumable_over=resumable_over,
                resumable_chunk=resumable_chunk,
                retry_delay=retry_delay,
            )
            try:
                client.get(f"{base_url}/healthz")  # any answer will do: is anyone there?
            except httpx.TransportError as exc:
                summary.unreachable = _unreachable(base_url, exc)
                summary.not_sent = len(uploads)
            else:
                done = _upload_all(run, uploads, summary, line)
    summary.failures.sort(key=lambda f: f.file)  # completion order is arbitrary
    summary.warned.sort(key=lambda w: w.file)
    summary.bytes_sent, _ = meter.snapshot()
    summary.seconds = time.monotonic() - started
    line.update(summary, done, meter, final=True)
    return summary


def _upload_all(run: _Run, uploads: list[Upload], summary: ImportSummary, line: _ProgressLine) -> int:
    """Run the uploads on ``run.jobs`` threads, merging outcomes as they finish; returns how many finished."""
    done = 0
    with ThreadPoolExecutor(max_workers=run.jobs, thread_name_prefix="dicomsvc-import") as pool:
        pending: set[Future[_Outcome]] = {pool.submit(run.upload, u) for u in uploads}
        try:
            while pending:
                finished, pending = wait(pending, timeout=line.tick, return_when=FIRST_COMPLETED)
                for future in finished:
                    summary.add(future.result())
                    done += 1
                line.update(summary, done, run.meter)
        except BaseException:  # Ctrl-C: finish what is in flight, start nothing new
            run.stop.set()
            for future in pending:
                future.cancel()
            raise
    return done


def format_summary(summary: ImportSummary, max_failures: int = 10, max_warned: int = 10) -> str:
    """The end-of-run report: counts, volume, time, the first ``max_failures`` failures and
    the first ``max_warned`` files stored with warnings (each with its warnings)."""
    mb = summary.bytes_sent / 1e6
    rate = mb / summary.seconds if summary.seconds > 0 else 0.0
    lines = [
        f"created {summary.created}, duplicates {summary.duplicates}, skipped {summary.skipped}, "
        f"failed {summary.failed}",
        f"{summary.uploads} uploads, {mb:.1f} MB in {summary.seconds:.1f} s ({rate:.1f} MB/s)",
    ]
    if summary.warnings:
        lines.append(f"{summary.warnings} stored with warnings")
    if summary.ignored:
        lines.append(f"{summary.ignored} hidden, system, non-regular or non-DICOM files passed over")
    if summary.not_sent:
        lines.append(f"{summary.not_sent} not sent: the server could not be reached")
    if summary.failures and max_failures > 0:
        shown = summary.failures[:max_failures]
        more = len(summary.failures) - len(shown)
        lines.append(f"failures{f' (first {len(shown)} of {len(summary.failures)})' if more else ''}:")
        lines.extend(f"  {f.file}: {f.error}" + (f" ({f.detail})" if f.detail else "") for f in shown)
    if summary.warned and max_warned > 0:
        shown_warned = summary.warned[:max_warned]
        more = len(summary.warned) - len(shown_warned)
        lines.append(
            f"stored with warnings{f' (first {len(shown_warned)} of {len(summary.warned)})' if more else ''}:"
        )
        lines.extend(f"  {w.file}: {'; '.join(w.warnings)}" for w in shown_warned)
        if more:
            lines.append(f"  ... and {more} more")
    return "\n".join(lines)
