"""Resumable uploads (tus 1.0.0, https://tus.io/protocols/resumable-upload): an upload's state,
its bytes on disk, and what happens when the last byte arrives. No HTTP here
(``dicomsvc.http.tus`` speaks the protocol); the rows are ``storage.resumable``'s.

An upload is a row (``upload``) and a file ``<data>/uploads/<id>``. Each PATCH writes at the
recorded offset, ``fdatasync``s the file, and only then commits the new offset (tus 1.0.0 core
§"PATCH": the offset is what the server has *stored*), so an acknowledged byte survives a
crash; bytes past the recorded offset (written, never acknowledged) are cut off by the next
PATCH. When the offset reaches the length the file is ingested as ``POST /dicom`` would take
its body: a ZIP (by its first bytes) becomes a batch -- a background job past
DICOMSVC_SYNC_LIMIT files or with ``async`` -- anything else one instance. The outcome is kept
in the row (``GET /uploads/{id}``) until the upload expires.

Uploads still receiving expire DICOMSVC_TUS_EXPIRY seconds after their last PATCH (tus
expiration extension); finished ones are forgotten as long after they finished. A sweep at
start and every DICOMSVC_TUS_SWEEP_INTERVAL seconds removes their rows and bytes. Filenames
from Upload-Metadata may be patient data: they are stored, never logged.
"""

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import BinaryIO

from . import audit, batch, jobs, metrics, tasks
from .dicom.files import is_zip
from .errors import DicomSvcError, NotFound
from .options import Options
from .service import Service, in_background
from .storage import resumable as rows
from .storage import spool
from .storage.blobs import start_writeback
from .storage.spool import new_spool, remove_spool

log = logging.getLogger("dicomsvc")
CHECKSUMS = ("sha1", "sha256")  # tus checksum extension: Tus-Checksum-Algorithm
SWEEP_BATCH = 500
COPY_BYTES = 1 << 20  # decrypting an upload's records: read this much at a time
START_MARGIN = 2.0  # seconds: files newer than the start (less this) are never taken for orphans


class TooManyUploads(DicomSvcError):
    """DICOMSVC_TUS_MAX_INCOMPLETE uploads of this user are still receiving (RFC 6585 §4)."""

    status, code = 429, "too_many_uploads"


class OffsetMismatch(DicomSvcError):
    """Upload-Offset is not the server's offset (tus core: 409 Conflict)."""

    status, code = 409, "offset_mismatch"


class ChecksumMismatch(DicomSvcError):
    """Upload-Checksum does not match the chunk (tus checksum extension: 460); the chunk is dropped."""

    status, code = 460, "checksum_mismatch"


class Locked(DicomSvcError):
    """Another request is writing this upload (RFC 4918 §11.3: 423)."""

    status, code = 423, "locked"


@dataclass(frozen=True)
class Upload:
    id: str
    owner: str | None
    length: int
    received: int
    options: dict
    status: str  # receiving | ingesting | done | failed
    result: dict | None
    expires_at: str

    @classmethod
    def of(cls, row: dict) -> "Upload":
        return cls(
            row["id"], row["owner"], row["length"], row["received"], json.loads(row["options"]), row["status"],
            json.loads(row["result"]) if row["result"] else None, row["expires_at"],
        )  # fmt: skip

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed")

    @property
    def expires(self) -> datetime:
        return datetime.fromisoformat(self.expires_at)


def now() -> datetime:
    return datetime.now(timezone.utc)


def stamp(moment: datetime) -> str:
    """ISO 8601, UTC, milliseconds: text that sorts in time order (as the rows compare it)."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def data_path(svc: Service, upload_id: str) -> Path:
    return svc.config.resumable_dir / upload_id


# Per-upload locks: one request at a time writes (or completes, or removes) an upload --------

_locks: dict[str, list] = {}  # upload id -> [asyncio.Lock, users]; ids are random, unique per service


@contextlib.asynccontextmanager
async def locked(upload_id: str, wait: float) -> AsyncIterator[None]:
    """Hold the upload's lock, waiting up to ``wait`` seconds (then ``Locked``, 423): a client
    resuming after a broken connection waits here until the server has recorded what the
    broken PATCH stored."""
    entry = _locks.setdefault(upload_id, [asyncio.Lock(), 0])
    entry[1] += 1
    try:
        try:
            await asyncio.wait_for(entry[0].acquire(), wait)
        except TimeoutError:
            raise Locked("another request is writing this upload; try again") from None
        try:
            yield
        finally:
            entry[0].release()
    finally:
        entry[1] -= 1
        if entry[1] == 0:
            _locks.pop(upload_id, None)


def is_locked(upload_id: str) -> bool:
    entry = _locks.get(upload_id)
    return entry is not None and entry[0].locked()


# Creating, finding, removing ------------------------------------------------------------------


async def create(svc: Service, owner: str | None, length: int, options: dict) -> Upload:
    """A new upload of ``length`` bytes for ``owner``: its (empty, synced) file, then its row."""
    cfg = svc.config
    upload_id = secrets.token_hex(16)  # the URL is what lets a client write: unguessable
    await svc.io(_create_file, cfg.resumable_dir, upload_id)
    row = {
        "id": upload_id, "owner": owner, "length": length, "received": 0, "options": json.dumps(options),
        "status": "receiving", "result": None, "created_at": stamp(now()),
        "expires_at": stamp(now() + timedelta(seconds=cfg.tus_expiry)), "finished_at": None,
    }  # fmt: skip
    try:
        stored = await rows.insert_unless_full(svc.db, row, cfg.tus_max_incomplete)
    except BaseException:
        await svc.io(_remove_file, cfg.resumable_dir / upload_id)
        raise
    if not stored:
        await svc.io(_remove_file, cfg.resumable_dir / upload_id)
        raise TooManyUploads(
            f"{cfg.tus_max_incomplete} uploads of yours are still incomplete (DICOMSVC_TUS_MAX_INCOMPLETE): "
            "finish or DELETE one first"
        )
    return Upload.of(row)


async def find(svc: Service, upload_id: str, user: str | None) -> Upload:
    """The upload, if ``user`` created it and it has not expired; else 404 (tus core allows 404
    or 410 for an expired upload; 404 also hides others' uploads)."""
    row = await rows.get(svc.db, upload_id) if _well_formed(upload_id) else None
    if row is None or row["owner"] != user or datetime.fromisoformat(row["expires_at"]) <= now():
        raise NotFound("no such upload (unknown, someone else's, or expired)")
    return Upload.of(row)


def _well_formed(upload_id: str) -> bool:
    return len(upload_id) == 32 and all(c in "0123456789abcdef" for c in upload_id)


async def remove(svc: Service, upload: Upload) -> None:
    """Terminate an upload (tus termination extension): its bytes, then its row."""
    await svc.io(_remove_file, data_path(svc, upload.id))
    await rows.delete(svc.db, upload.id)


def _create_file(folder: Path, upload_id: str) -> None:
    new_folder = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / upload_id, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    _sync_dir(folder)  # POSIX fsync(2): a new name is durable once its folder is synced
    if new_folder:
        _sync_dir(folder.parent)


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_file(path: Path) -> None:
    path.unlink(missing_ok=True)


# Appending (PATCH) -------------------------------------------------------------------------


class Writer:
    """Appends one PATCH's bytes at the recorded offset (synchronous: call it from I/O threads).

    Opening cuts the file back to ``offset``: bytes past it were written by a request whose
    new offset was never committed, so no client was told they are stored. With encryption at
    rest (``keyring``) the bytes go into one sealed record (``dicomsvc.storage.records``)
    appended after the records holding the first ``offset`` bytes."""

    def __init__(self, path: Path, offset: int, algorithm: str | None, keyring=None) -> None:
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound("the upload's data is gone (it expired or was terminated)") from None
        self.record = None
        try:
            if keyring is None:
                os.ftruncate(self.fd, offset)
                os.lseek(self.fd, offset, os.SEEK_SET)
            else:
                from .storage import records

                self.record = records.Appender(self.fd, records.end_of(self.fd, offset), keyring, f"{path.name}@{offset}")
        except BaseException:
            os.close(self.fd)
            raise
        self.offset = offset
        self.written = 0
        self.digest = hashlib.new(algorithm) if algorithm else None

    def write(self, piece: bytes) -> None:
        if self.record is not None:
            self.record.write(piece)
            self.written += len(piece)
        else:
            view = memoryview(piece)
            while view:
                done = os.write(self.fd, view)
                view = view[done:]
                self.written += done
        start_writeback(self.fd)  # the disk writes while the rest arrives: close's fdatasync finds little left
        if self.digest is not None:
            self.digest.update(piece)

    def close(self, keep: int) -> None:
        """Keep the first ``keep`` bytes written (cut the rest), make them durable, close.
        (A sealed record is kept whole or not at all: ``keep`` is 0 or all that was written.)"""
        try:
            if self.record is not None:
                self.record.finish() if keep else self.record.drop()
            elif keep < self.written:
                os.ftruncate(self.fd, self.offset + keep)
            if keep:
                os.fdatasync(self.fd)  # the data (and the size) on disk before the offset is recorded
        finally:
            os.close(self.fd)


async def advance(svc: Service, upload: Upload, received: int) -> Upload:
    """Record ``received`` bytes as stored (they are synced already); the expiry moves on."""
    expires = stamp(now() + timedelta(seconds=svc.config.tus_expiry))
    await rows.advance(svc.db, upload.id, received, expires)
    return Upload(upload.id, upload.owner, upload.length, received, upload.options, upload.status, None, expires)


# Completing: the file is ingested as POST /dicom would ingest its body -----------------------


async def complete(svc: Service, upload: Upload) -> Upload:
    """Ingest a fully received upload; its outcome is recorded in the row and returned.

    A client's error (422, 413...) is final (``failed``); a server-side one (5xx: busy, a full
    disk) leaves the upload ``ingesting`` with its bytes, and the next PATCH at the end (or the
    next start) tries again. Run again after a crash, an instance comes back a duplicate:
    nothing is stored twice."""
    cfg = svc.config
    if upload.status == "receiving":
        await rows.set_status(svc.db, upload.id, "ingesting", None, upload.expires_at, None)
    options = Options.from_request(upload.options, user=upload.owner)
    try:
        result = await _ingest(svc, upload, options)
    except DicomSvcError as exc:
        metrics.ingested("failed")
        result = {"status": exc.status, **exc.to_json()}
        if exc.status >= 500:
            await rows.set_status(svc.db, upload.id, "ingesting", json.dumps(result), upload.expires_at, None)
            return _with(upload, "ingesting", result)
    status = "done" if result["status"] < 400 else "failed"
    finished = now()
    expires = stamp(finished + timedelta(seconds=cfg.tus_expiry))  # the outcome stays readable this long
    await rows.set_status(svc.db, upload.id, status, json.dumps(result), expires, stamp(finished))
    await svc.io(_remove_file, data_path(svc, upload.id))  # a job holds its own link to a ZIP
    return _with(upload, status, result, expires)


def _with(upload: Upload, status: str, result: dict, expires: str | None = None) -> Upload:
    return Upload(
        upload.id, upload.owner, upload.length, upload.received, upload.options, status, result,
        expires or upload.expires_at,
    )  # fmt: skip


async def _ingest(svc: Service, upload: Upload, options: Options) -> dict:
    cfg, source, keyring = svc.config, data_path(svc, upload.id), svc.blobs.keyring
    name = str(upload.options.get("filename") or "upload")
    head = await svc.io(_head, source, keyring, upload)
    if not is_zip(head):
        if keyring is None:
            temp = svc.blobs.tmp / f"upload-{secrets.token_hex(12)}.dcm"
            await svc.io(os.link, source, temp)  # ingesting moves this name; the upload keeps its own
        else:  # sealed records: the plaintext in blob temp space for the time of its ingest
            temp = await svc.io(_decrypted_temp, svc, source, upload)
        try:
            ingested = await svc.cpu(tasks.ingest_file, cfg, temp, name, options)
        finally:
            await svc.io(svc.blobs.discard, temp)  # gone already if it was stored
        audit.note(instance=ingested.id, status=201 if ingested.created else 200)
        metrics.ingested("created" if ingested.created else "duplicate")
        return {"status": 201 if ingested.created else 200, "id": ingested.id} | (
            {"warnings": ingested.warnings} if ingested.warnings else {}
        )
    folder = await svc.io(new_spool, cfg.spool_dir)
    handed_over = False
    try:
        target = folder / "upload.zip"
        if keyring is None:
            await svc.io(os.link, source, target)
        else:  # the records' plaintext sealed again as one spool file (storage.spool)
            await svc.io(_resealed_spool, source, keyring, upload, target)
        entries = await svc.io(batch.expand_zip, cfg, target, "", options)
        if upload.options.get("async") or len(entries) > cfg.sync_limit:
            job_id = await jobs.submit(svc, entries, folder, upload.owner)
            handed_over = True
            audit.note(job=job_id)  # its files are recorded as the job ingests them
            return {"status": 202, "job": job_id}
        results = await batch.run_entries(svc, entries)
        audit.note_results(results)
        metrics.count_results(results)
        return {"status": 200} | batch.summarize(results)
    finally:
        if not handed_over:
            await svc.io(remove_spool, folder)


def _plaintext(path: Path, keyring, upload: Upload) -> BinaryIO:
    """The upload's bytes to read in order: the file itself, or its sealed records decrypted."""
    raw = open(path, "rb")
    if keyring is None:
        return raw
    from .storage.records import Records

    try:
        return io.BufferedReader(Records(raw, keyring, upload.id, upload.length), COPY_BYTES)
    except BaseException:
        raw.close()
        raise


def _head(path: Path, keyring, upload: Upload) -> bytes:
    with _plaintext(path, keyring, upload) as fh:
        return fh.read(4)


def _decrypted_temp(svc: Service, path: Path, upload: Upload) -> Path:
    with _plaintext(path, svc.blobs.keyring, upload) as src:
        return svc.blobs.spool(src, svc.config.max_upload_bytes)


def _resealed_spool(path: Path, keyring, upload: Upload, target: Path) -> None:
    with _plaintext(path, keyring, upload) as src, spool.create(target, keyring) as out:
        shutil.copyfileobj(src, out, COPY_BYTES)


# Expiry: at start and every DICOMSVC_TUS_SWEEP_INTERVAL seconds ------------------------------


async def sweep(svc: Service) -> int:
    """Remove expired uploads (rows and bytes); how many. One being written now is left for
    the next sweep (its PATCH moves the expiry on)."""
    removed = 0
    while ids := await rows.expired(svc.db, stamp(now()), SWEEP_BATCH):
        busy = 0
        for upload_id in ids:
            if is_locked(upload_id):
                busy += 1
                continue
            async with locked(upload_id, 0.1):
                await svc.io(_remove_file, data_path(svc, upload_id))
                await rows.delete(svc.db, upload_id)
                removed += 1
        if busy == len(ids):
            break
    if removed:
        log.info("removed %d expired resumable upload(s)", removed)
    return removed


async def forget_orphan_files(svc: Service, before: float) -> int:
    """Files of uploads with no row (a crash between creating the file and its row), older
    than ``before``."""
    folder = svc.config.resumable_dir
    names = await svc.io(_old_files, folder, before)
    known = await rows.known_ids(svc.db, names)
    orphans = [n for n in names if n not in known]
    for name in orphans:
        await svc.io(_remove_file, folder / name)
    return len(orphans)


def _old_files(folder: Path, before: float) -> list[str]:
    if not folder.is_dir():
        return []
    return [e.name for e in os.scandir(folder) if e.is_file() and e.stat().st_mtime < before]


async def _resume_ingests(svc: Service) -> None:
    """Uploads whose ingest a stop interrupted (or a 5xx postponed) are ingested again."""
    for upload_id in await rows.in_status(svc.db, "ingesting"):
        row = await rows.get(svc.db, upload_id)
        if row is None:
            continue
        async with locked(upload_id, 3600):
            if not await svc.io(data_path(svc, upload_id).exists):
                continue
            try:
                await complete(svc, Upload.of(row))
            except Exception as exc:  # tried again at the next start, or by the client's next PATCH
                log.error("resumable upload could not be ingested at start: %s", type(exc).__name__)


@contextlib.asynccontextmanager
async def running(svc: Service) -> AsyncIterator[None]:
    """The expiry sweep (and the ingests a stop interrupted) in the background while the app runs."""
    started = time.time() - START_MARGIN
    async with in_background(_run_forever(svc, started), "dicomsvc-resumable"):
        yield


async def _run_forever(svc: Service, started: float) -> None:
    try:
        await forget_orphan_files(svc, started)
        await _resume_ingests(svc)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.error("resumable uploads: the start-up pass failed: %s", type(exc).__name__)
    while True:
        try:
            await sweep(svc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a full disk, say: the next sweep tries again
            log.error("resumable uploads: the sweep failed: %s", type(exc).__name__)
        await asyncio.sleep(svc.config.tus_sweep_interval)
