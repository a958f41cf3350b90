"""The audit trail: who did what to which instance, study, series or job, and how it ended.

Records are made by the HTTP layer (``dicomsvc.http.audit``: one per request, or one per
instance the request touched) and by the job runner (one per instance a background job
ingested). They are queued in memory and written by one background task in batches: at
most ``DICOMSVC_AUDIT_FLUSH_MS`` after the first one arrives, or at once when
``DICOMSVC_AUDIT_BATCH`` are waiting, in one transaction each -- so a request never waits
for the audit trail, and ingesting 100 instances a second costs ten small transactions a
second, not a hundred. Shutting down writes what is left. A batch the database refuses
(a full disk) is kept and tried again; past ``DICOMSVC_AUDIT_QUEUE_MAX`` waiting records the
oldest are dropped, counted (``dicomsvc_audit_queue``, logs) rather than let memory grow.

With ``DICOMSVC_AUDIT_FILE`` set, each batch is also appended to that file as JSON lines,
after it is committed to the database.

What a record may hold: ids (ours, the UIDs of the request's path), the route template, the
*names* of the query parameters -- never their values (a search's values are patient IDs
and names), nor anything read from a file.
"""

import asyncio
import contextlib
import contextvars
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterable, Sequence
import operator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from . import metrics
from .storage import audit as audit_rows

log = logging.getLogger("dicomsvc.audit")
ACTIONS = ("upload", "view", "download", "anonymize", "delete", "search", "send")  # send: to a destination (POST /dicom/send)
MAX_PARAMS = 50  # parameter names kept per record
_PARAM_NAME = re.compile(r"[A-Za-z0-9_.]{1,64}")  # keywords, tags (00100010), dotted sequence paths


@dataclass(frozen=True)
class Record:
    """One audit record; fields in ``storage.audit.COLUMNS`` order."""

    time: str
    user: str
    role: str
    action: str
    method: str
    route: str | None
    instance: str | None = None
    study: str | None = None
    series: str | None = None
    sop: str | None = None
    job: str | None = None
    params: str | None = None  # query parameter names, sorted, comma-separated
    status: int = 0
    client: str | None = None
    request_id: str | None = None
    dataset: str | None = None  # a clinical dataset's id (/datasets)

    def to_json(self) -> str:
        return json.dumps(dict(zip(audit_rows.COLUMNS, self.row())), ensure_ascii=False)

    def row(self) -> tuple:
        """The values in ``storage.audit.COLUMNS`` order. (Not ``dataclasses.astuple``: it deep-copies
        every field, ~50 us a record, on the event loop; every field here is an immutable scalar.)"""
        return _RECORD_ROW(self)


_RECORD_ROW = operator.attrgetter(*(f.name for f in fields(Record)))


def now() -> str:
    """ISO 8601, UTC, milliseconds: text that sorts in time order."""
    return stamp(time.time_ns())


_second: tuple[int, str] = (-1, "")  # the last whole second ``stamp`` wrote, and its text


def stamp(ns: int) -> str:
    """``ns`` (a ``time.time_ns()``) as ``now`` writes it: ``2026-12-04T01:40:00.123Z`` (the
    milliseconds cut, not rounded, as ``datetime.now().isoformat(timespec="milliseconds")`` does).
    The text of the whole second is kept for the next call: at most one ``strftime`` a second,
    where ``datetime``'s formatting cost 5 us a record on the event loop (issue 12: hot reads)."""
    global _second
    whole, rest = divmod(ns, 1_000_000_000)
    second, text = _second
    if whole != second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second = (whole, text)  # one tuple replaced whole: another thread sees the old or the new
    return f"{text}.{rest // 1_000_000:03d}Z"


def param_names(names: Iterable[str]) -> str | None:
    """Query parameter names as a record keeps them: each a plain name (others dropped),
    unique, sorted, at most ``MAX_PARAMS``. Values are never passed here."""
    kept = sorted({n for n in names if _PARAM_NAME.fullmatch(n)})[:MAX_PARAMS]
    return ",".join(kept) or None


# What a request touched, noted by the code that serves it --------------------------------


@dataclass(frozen=True)
class Touched:
    """One instance (or job) a request touched, with its own outcome when it has one
    (each file of an upload is created, a duplicate or refused)."""

    instance: str | None = None
    job: str | None = None
    status: int | None = None  # None: the request's status
    dataset: str | None = None


@dataclass
class Notes:
    touched: list[Touched] = field(default_factory=list)


_notes: contextvars.ContextVar[Notes | None] = contextvars.ContextVar("dicomsvc_audit_notes", default=None)


def begin_request() -> Notes:
    """Start noting what the current request touches (the HTTP middleware calls this; tasks
    the request starts share the notes)."""
    notes = Notes()
    _notes.set(notes)
    return notes


def note(
    instance: str | None = None, job: str | None = None, status: int | None = None, dataset: str | None = None
) -> None:
    """Note that the current request touched ``instance``, ``job`` or ``dataset`` (or tried to: a
    file of an upload that was refused has a status and no id); nothing outside a request."""
    notes = _notes.get()
    if notes is not None and (instance or job or status or dataset):
        notes.touched.append(Touched(instance, job, status, dataset))


def note_instances(ids: Iterable[str], status: int | None = None) -> None:
    for instance_id in ids:
        note(instance=instance_id, status=status)


def note_results(results: Iterable) -> None:
    """Each file of an upload (``batch.Result``): created, duplicate or refused; skipped files
    (not DICOM: a README in a ZIP) touched no patient data."""
    for result in results:
        if result.status != "skipped":
            note(instance=result.id, status=result_status(result))


# The writer -----------------------------------------------------------------------------------


class Trail:
    """The queue and the background task that writes it (one per running service)."""

    def __init__(self, db, *, flush_ms: int, batch: int, queue_max: int, file: Path | None, io) -> None:
        self.db = db
        self.flush_s = flush_ms / 1000
        self.batch = batch
        self.queue_max = queue_max
        self.file = file
        self.io = io  # runs blocking file writes in a thread
        self.pending: list[Record] = []
        self.dropped = 0
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._writing = asyncio.Lock()  # the background task and GET /audit both flush
        self._stopping = False

    def add(self, records: Sequence[Record]) -> None:
        """Queue ``records`` (never blocks, never raises)."""
        self.pending.extend(records)
        over = len(self.pending) - self.queue_max
        if over > 0:
            del self.pending[:over]
            self.dropped += over
            metrics.AUDIT_DROPPED.inc(over)
            log.error("audit queue over DICOMSVC_AUDIT_QUEUE_MAX: %d oldest record(s) dropped", over)
        metrics.AUDIT_QUEUE.set(len(self.pending))
        if self.pending:
            self._arrived.set()
            if len(self.pending) >= self.batch:
                self._full.set()

    async def run(self) -> None:
        """Write batches as they fill or age, until ``stop``. (Stopped by a flag, not by
        cancelling: Python 3.11's ``wait_for`` can swallow a cancellation that races with
        its wait ending, and the task would then wait forever.)"""
        while not self._stopping:
            await self._arrived.wait()
            if len(self.pending) < self.batch and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.flush_s):
                        await self._full.wait()
            self._arrived.clear()
            self._full.clear()
            if not await self.flush() and not self._stopping:
                with contextlib.suppress(TimeoutError):  # the database refused: try again later
                    async with asyncio.timeout(max(self.flush_s, 1.0)):
                        await self._full.wait()
                self._arrived.set()

    def stop(self) -> None:
        """Make ``run`` return after its current write."""
        self._stopping = True
        self._arrived.set()
        self._full.set()

    async def flush(self) -> bool:
        """Write what is waiting, a batch per transaction; False if a write failed (what
        was not written stays queued)."""
        async with self._writing:
            return await self._flush()

    async def _flush(self) -> bool:
        """Write the records waiting when called, and no more: those that come meanwhile wait for
        the next batch (written every few records otherwise, while requests keep coming: a
        transaction and two thread hops a record, as much CPU as a cached read itself)."""
        left = len(self.pending)
        while left > 0 and self.pending:
            chunk = self.pending[: min(self.batch, left)]
            dropped = self.dropped
            try:
                await audit_rows.append(self.db, [r.row() for r in chunk])
            except Exception as exc:  # a full disk, a locked database: keep them, say so
                metrics.AUDIT_ERRORS.inc()
                log.error("audit records could not be written (%s); %d waiting", type(exc).__name__, len(self.pending))
                return False
            # the oldest records dropped meanwhile (add: the queue over its maximum) were the chunk's first
            del self.pending[: max(0, len(chunk) - (self.dropped - dropped))]
            left -= len(chunk)
            metrics.AUDIT_RECORDS.inc(len(chunk))
            metrics.AUDIT_QUEUE.set(len(self.pending))
            if self.file is not None:
                try:
                    await self.io(_append_lines, self.file, [r.to_json() for r in chunk])
                except OSError as exc:
                    log.error("the audit file could not be written (%s)", type(exc).__name__)
        return True


def _append_lines(path: Path, lines: list[str]) -> None:
    with open(path, "a", encoding="utf-8") as out:
        out.write("".join(line + "\n" for line in lines))


def trail(svc) -> Trail | None:
    """The running service's trail; None when DICOMSVC_AUDIT=false (or not running)."""
    return getattr(svc, "audit_trail", None)


def record(svc, records: Sequence[Record]) -> None:
    found = trail(svc)
    if found is not None and records:
        found.add(records)


@contextlib.asynccontextmanager
async def running(svc) -> AsyncIterator[None]:
    """Write the audit trail in the background for as long as the app runs; what is still
    queued at shutdown is written before the database closes."""
    config = svc.config
    if not config.audit:
        svc.audit_trail = None
        yield
        return
    if config.audit_file is not None:
        config.audit_file.parent.mkdir(parents=True, exist_ok=True)
    writer = await audit_rows.open_writer(config.database)
    svc.audit_trail = found = Trail(
        writer,
        flush_ms=config.audit_flush_ms,
        batch=config.audit_batch,
        queue_max=config.audit_queue_max,
        file=config.audit_file,
        io=svc.io,
    )
    task = asyncio.create_task(found.run(), name="dicomsvc-audit")
    try:
        yield
    finally:
        found.stop()
        with contextlib.suppress(Exception):
            await task
        written = True
        while written and found.pending:  # and what came while the last batch was written
            written = await found.flush()
        if not written:
            log.error("%d audit record(s) could not be written at shutdown", len(found.pending))
        svc.audit_trail = None
        await writer.close()


def job_records(job_id: str, user: str | None, results: Iterable, when: str | None = None) -> list[Record]:
    """Records for what a background job ingested: one per file stored or refused (skipped
    files, not DICOM at all, touch no patient data)."""
    when = when or now()
    base = Record(when, user or "anonymous", "", "upload", "JOB", None, job=job_id)
    return [replace(base, instance=r.id, status=result_status(r)) for r in results if r.status != "skipped"]


def result_status(result) -> int:
    """A batch result's outcome as an HTTP status: 201 created, 200 duplicate, else its error's."""
    if result.status == "created":
        return 201
    if result.status == "duplicate":
        return 200
    return error_status(result.error)


def error_status(code: str | None) -> int:
    from .errors import DicomSvcError

    statuses: dict[str, int] = {}
    todo = [DicomSvcError]
    while todo:
        cls = todo.pop()
        statuses.setdefault(cls.code, cls.status)
        todo += cls.__subclasses__()
    return statuses.get(code or "", 422)
