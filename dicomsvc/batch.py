"""Several files in one request: ZIP archives, multipart uploads, folders.

A batch is a list of ``Item``s, each one file to ingest, described by plain
data (so it can be pickled to a worker and stored in a job). ``expand_*``
turn an archive or a folder into items, refusing oversized archives before
anything is stored; ``ingest_items`` (synchronous, in a worker) ingests a
chunk of them and returns one result per item; ``run`` (async, in the
service) spreads the chunks over the workers.

Archive member names are only ever labels: nothing is written to disk under a
name taken from an archive, so ``../../x`` and absolute names are harmless.
"""

import asyncio
import json
import os
import posixpath
import struct
import threading
import zipfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Union

from . import paths
from .config import Config
from .dicom.files import ZIP_MAGIC, skip_reason
from .errors import BadRequest, DicomSvcError, NotDicom, TooLarge
from .results import Ingested
from .options import PLAIN, Options
from .service import Service
from .storage import spool
from .storage.blobs import BlobStore

# Items per trip to a worker (``chunk_size``). A chunk's rows commit in one transaction (one WAL
# sync, one fsync per blob folder) and its results are recorded in its job in one more, so each
# chunk costs its worker and the server a fixed amount besides its files. Small batches keep
# CHUNK_MIN so that every worker gets several chunks; large ones grow to CHUNK_MAX (issue 12: a
# folder of 500 CTs, 6 rounds in rotated order: 453 vs 434 inst/s, the server tree's CPU 3.50 vs
# 3.67 ms per instance, its server process's 0.11 vs 0.19; 64 was no better than 32).
CHUNK_MIN, CHUNK_MAX = 8, 32
CHUNKS_PER_WORKER = 4  # at least this many chunks each, while chunks can stay at CHUNK_MIN or above
# A chunk's staged instances hold their tag rows and DICOM JSON until they commit: past this many
# characters of DICOM JSON the ones staged so far commit first, so a chunk of files with large
# text values never holds more than about this much (plus one file) in the worker.
STAGED_MAX = 32 << 20
# Archives and members expanding to no more than this are not held to DICOMSVC_MAX_ZIP_RATIO
# (a few blank frames compress beyond any sane ratio, and cannot amount to much).
RATIO_FLOOR = 1 << 20


@dataclass(frozen=True)
class Item:
    file: str  # the name the client knows: in the archive, the request or the folder
    kind: str  # "spooled": a file we own | "import": under the import root | "member": of a ZIP we own
    path: str  # the spooled file, the path relative to the import root, or the ZIP
    member: str | None = None  # the member's name in the ZIP
    anonymize: bool = False
    allow_burned_in: bool = False
    user: str | None = None  # who asked: the owner of what is stored (Options.user)
    # a JPEG or PNG to make a Secondary Capture instance of first: the request's attributes
    # (dicomsvc.photos.capture, plain JSON data); None: a DICOM file
    capture: dict | None = None

    @classmethod
    def of(cls, file: str, kind: str, path: str, options: Options, member: str | None = None) -> "Item":
        return cls(file, kind, path, member, options.anonymize, options.allow_burned_in, options.user)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Item":
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Result:
    """What became of one file of a batch."""

    file: str  # the name the client knows
    status: str  # created | duplicate | failed | skipped
    id: str | None = None
    error: str | None = None  # an error code, for failed files
    detail: str | None = None
    warnings: tuple[str, ...] = ()
    # Not part of the public answer; STOW-RS references the instance with them (PS3.18 Table I.1-1)
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None

    @property
    def stored(self) -> bool:
        return self.status in ("created", "duplicate")

    def public(self) -> dict:
        """The result as clients see it (in a batch answer and in ``GET /jobs/{id}``)."""
        shown = {"file": self.file, "id": self.id, "status": self.status, "error": self.error, "detail": self.detail}
        return {k: v for k, v in shown.items() if v is not None} | (
            {"warnings": list(self.warnings)} if self.warnings else {}
        )


def failed(name: str, code: str, detail: str, uids: tuple[str | None, str | None] = (None, None)) -> Result:
    return Result(name, "failed", error=code, detail=detail, sop_class_uid=uids[0], sop_instance_uid=uids[1])


def skipped(name: str, detail: str) -> Result:
    return Result(name, "skipped", detail=detail)


def created_or_duplicate(name: str, ingested: Ingested) -> Result:
    return Result(
        name,
        "created" if ingested.created else "duplicate",
        id=ingested.id,
        warnings=tuple(ingested.warnings),
        sop_class_uid=ingested.sop_class_uid,
        sop_instance_uid=ingested.sop_instance_uid,
    )


Entry = Union[Item, Result]  # a file to ingest, or a result decided without ingesting it


async def run_entries(svc: Service, entries: Sequence[Entry], study_uid: str | None = None) -> list[Result]:
    """Results for every entry, in order: ingest the items, keep the decided ones."""
    items = [e for e in entries if isinstance(e, Item)]
    done = iter(await run(svc, items, study_uid=study_uid))
    return [next(done) if isinstance(e, Item) else e for e in entries]


def summarize(results: Sequence[Result]) -> dict:
    """The batch answer: counts by status, then every file's result in request order."""
    counts = {"created": 0, "duplicates": 0, "failed": 0, "skipped": 0}
    for result in results:
        counts["duplicates" if result.status == "duplicate" else result.status] += 1
    return counts | {"results": [r.public() for r in results]}


# Expanding requests into items ------------------------------------------------------------


def expand_zip(config: Config, zip_path: Path, label: str = "", options: Options = PLAIN) -> list[Entry]:
    """An entry per archive member, in archive order; or TooLarge.

    Checks the central directory against the limits before anything is extracted:
    the number of files, their total size, the compression ratio of each member and
    of the archive as a whole, and that no two members share bytes (``_check_spans``).
    """
    try:
        with spool.open_spooled(zip_path, spool.keyring_of(config)) as raw, zipfile.ZipFile(raw) as archive:
            members = [info for info in archive.infolist() if not info.is_dir()]
            if len(members) > config.max_archive_files:
                raise TooLarge(f"the archive holds {len(members)} files; the limit is {config.max_archive_files}")
            _check_spans(archive, members)
    except (zipfile.BadZipFile, OSError, ValueError, struct.error) as exc:
        raise BadRequest(f"{label or 'the body'} is not a readable ZIP archive ({type(exc).__name__})") from None
    total = sum(info.file_size for info in members)
    if total > config.max_archive_bytes:
        raise TooLarge(f"the archive expands to {total} bytes; the limit is {config.max_archive_bytes}")
    # The ratio over the whole archive too: many members just under RATIO_FLOOR each add up.
    packed = sum(info.compress_size for info in members)
    if total > RATIO_FLOOR and total > config.max_zip_ratio * max(packed, 1):
        raise TooLarge(f"the archive expands {total // max(packed, 1)} times; the limit is {config.max_zip_ratio}")
    for info in members:
        if info.file_size > RATIO_FLOOR and info.file_size > config.max_zip_ratio * max(info.compress_size, 1):
            raise TooLarge(f"member {info.filename!r} expands {info.file_size // max(info.compress_size, 1)} times")
    entries: list[Entry] = []
    for info in members:
        name = posixpath.join(label, info.filename) if label else info.filename
        if info.flag_bits & 0x1:
            entries.append(failed(name, "encrypted", "encrypted archive members are not supported"))
        elif skip_reason(info.filename):
            entries.append(skipped(name, skip_reason(info.filename)))
        else:
            entries.append(Item.of(name, "member", str(zip_path), options, info.filename))
    return entries


def _check_spans(archive: zipfile.ZipFile, members: list[zipfile.ZipInfo]) -> None:
    """Refuse members whose bytes overlap (TooLarge): each member's local file header
    and data (APPNOTE 4.3.7: a 30-byte header, its name and extra field, then
    ``compress_size`` bytes) must end before the next member's header begins, and
    the last before the central directory. Otherwise one stored member can be named
    by any number of central directory entries, or one member's data can hold the
    next one's header ("overlapping" ZIP bombs), and a small archive extracts to
    far more than its limits were checked against.
    """
    spans = []
    for info in members:
        archive.fp.seek(info.header_offset)
        head = archive.fp.read(30)
        if len(head) < 30 or head[:4] != ZIP_MAGIC:
            raise zipfile.BadZipFile("a central directory entry points at no local file header")
        name_length, extra_length = struct.unpack("<HH", head[26:30])
        spans.append((info.header_offset, info.header_offset + 30 + name_length + extra_length + info.compress_size))
    spans.sort()
    end_of_data = getattr(archive, "start_dir", None)  # where the central directory begins
    for (_, end), (next_start, _) in zip(spans, spans[1:] + [(end_of_data, 0)]):
        if next_start is not None and next_start < end:
            raise TooLarge("archive members overlap: entries share compressed data (a ZIP bomb?)")


def expand_directory(config: Config, real: Path, options: Options = PLAIN) -> list[Entry]:
    """Items for every file below a folder of the import root.

    The folder and each one below it are opened beneath the root (``paths.walk_files``:
    links to folders are not followed), and each file is opened beneath the root again
    when it is ingested, so a folder swapped for a link meanwhile never leads outside.
    """
    root = config.import_root
    folder = str(real.relative_to(root))
    prefix = "" if folder == "." else folder + "/"
    # relative paths may hold surrogate escapes (names that are not UTF-8): names, not text
    return [
        Item.of(paths.label(relative[len(prefix) :]), "import", relative, options)
        for relative in paths.walk_files(root, folder)
    ]


# Ingesting items (synchronous, in a worker) --------------------------------------------------


def ingest_items(config: Config, items: Sequence[Item], study_uid: str | None = None) -> list[Result]:
    """Ingest each item; one result each, in order. One bad file never spoils the others.

    Group commit: each file is staged (its blobs written), then the blobs are synced and
    placed together, their folders synced once each, and all rows commit in one
    transaction (``ingest.commit_staged``), so a chunk costs one WAL sync instead of one
    per file (more transactions only when its DICOM JSON passes STAGED_MAX). A full disk
    at a commit fails every file staged for it (their blobs removed)."""
    # the pipeline (pydicom, numpy) imported here, in the worker: the server imports this
    # module for Item, Result, expand_* and run, and never loads pydicom (dicomsvc.tasks)
    from .ingest import Staged

    blobs = BlobStore.of(config)
    results: list[Result | None] = [None] * len(items)
    staged: list[tuple[int, Staged]] = []
    held = 0  # characters of DICOM JSON staged
    try:
        for i, item in enumerate(items):
            outcome = _stage_item(config, blobs, item, study_uid)
            if not isinstance(outcome, Staged):
                results[i] = outcome
                continue
            staged.append((i, outcome))
            held += len(outcome.metadata or "")
            if held > STAGED_MAX:
                group, staged, held = staged, [], 0
                _commit(config, blobs, items, group, results)
    except BaseException:  # not a client's fault (a bug): the staged blobs must not stay
        for _, s in staged:
            blobs.remove(s.record["dcm_blob"], s.record["png_blob"])
        raise
    if staged:
        _commit(config, blobs, items, staged, results)
    return [r for r in results if r is not None]


def _commit(config: Config, blobs: BlobStore, items: Sequence[Item], staged: list, results: list) -> None:
    """Commit ``staged`` ((index, Staged) pairs) in one transaction; each one's result into
    ``results``. ``commit_staged`` removes their blobs when it fails."""
    from .ingest import commit_staged  # in the worker only: see ingest_items

    try:
        done: list = commit_staged(config, blobs, [s for _, s in staged])
    except DicomSvcError as exc:
        done = [exc] * len(staged)
    for (i, s), one in zip(staged, done):
        if isinstance(one, DicomSvcError):
            uids = (s.uids["sop_class_uid"], s.uids["sop_instance_uid"])
            results[i] = failed(items[i].file, one.code, one.detail, uids)
        else:
            results[i] = created_or_duplicate(items[i].file, one)


_archives = threading.local()


def _archive(path: str, keyring) -> zipfile.ZipFile:
    """This thread's open handle on a spooled archive (decrypting when it was sealed).

    Reading the central directory of a 20,000-member ZIP takes ~0.1 s, so a worker
    keeps the last archive it read open across chunks; one whose file is gone (its
    job is done) is closed at the next call, so its disk space is freed.
    """
    cached = getattr(_archives, "open", None)
    if cached is not None:
        cached_path, archive, raw = cached
        if cached_path == path and os.path.exists(path):
            return archive
        archive.close()
        raw.close()
        _archives.open = None
    sealed = spool.open_if_sealed(path, keyring)
    if sealed is None:
        raw = archive = zipfile.ZipFile(path)  # the archive owns its file
    else:
        raw = sealed  # closed with the archive, or (silently) when collected
        try:
            archive = zipfile.ZipFile(sealed)
        except BaseException:
            sealed.close()
            raise
    _archives.open = (path, archive, raw)
    return archive


def _stage_item(config: Config, blobs: BlobStore, item: Item, study_uid: str | None) -> "Result | Staged":
    from .ingest import stage_capture, stage_file, stage_import  # in the worker only: see ingest_items

    reason = skip_reason(item.file)
    if reason:
        return skipped(item.file, reason)
    options = Options(
        anonymize=item.anonymize, allow_burned_in=item.allow_burned_in, study_uid=study_uid, user=item.user
    )
    try:
        if item.kind == "import":
            outcome = stage_import(config, item.path, options, blobs)
        else:
            temp = _member_to_temp(config, blobs, item) if item.kind == "member" else _link(config, blobs, item)
            if item.capture is not None:
                outcome = stage_capture(config, temp, item.file, options, blobs, item.capture)
            else:
                outcome = stage_file(config, temp, item.file, options, blobs)
    except NotDicom as exc:  # a README, a nested ZIP, a DICOMDIR...
        return skipped(item.file, exc.detail)
    except DicomSvcError as exc:
        return failed(item.file, exc.code, exc.detail, exc.instance)
    return created_or_duplicate(item.file, outcome) if isinstance(outcome, Ingested) else outcome


def _link(config: Config, blobs: BlobStore, item: Item) -> Path:
    """A second name for a spooled part in blob temp space: ingesting moves that name, so
    the part itself stays until its job is done (and can be ingested again after a crash).
    A sealed part (encryption at rest) is decrypted into blob temp space instead, for the
    time of its ingest."""
    sealed = spool.open_if_sealed(item.path, blobs.keyring)
    if sealed is not None:
        with sealed:
            return blobs.spool(sealed, config.max_upload_bytes)
    temp = blobs.temp_path(".dcm")
    os.link(item.path, temp)
    return temp


def _member_to_temp(config: Config, blobs: BlobStore, item: Item) -> Path:
    """Extract one member, streaming, never past the size its header declares."""
    try:
        info = (archive := _archive(item.path, blobs.keyring)).getinfo(item.member)
        with archive.open(info) as src:
            return blobs.spool(src, min(info.file_size, config.max_upload_bytes))
    except TooLarge:
        raise TooLarge("the member is larger than its header says or than the file size limit") from None
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise BadRequest(f"the archive member could not be extracted ({type(exc).__name__})") from None


# Running a batch (async, in the service) ------------------------------------------------------


async def run(
    svc: Service,
    items: Sequence[Item],
    on_done: Callable[[int, list[Result]], Awaitable[None]] | None = None,
    study_uid: str | None = None,
) -> list[Result]:
    """Ingest ``items`` on the workers, a chunk at a time, a few chunks in flight.

    ``on_done(start, results)`` is awaited as each chunk finishes (jobs record
    progress with it). Results come back in the order of ``items``.
    """
    results: list[Result | None] = [None] * len(items)
    limit = asyncio.Semaphore(max(svc.config.workers, 1) * 2)
    size = chunk_size(len(items), svc.config.workers)

    async def one_chunk(start: int) -> None:
        async with limit:
            done = await _ingest_chunk(svc, list(items[start : start + size]), study_uid)
            results[start : start + len(done)] = done
            if on_done is not None:
                await on_done(start, done)

    await asyncio.gather(*(one_chunk(start) for start in range(0, len(items), size)))
    return [r for r in results if r is not None]


def chunk_size(items: int, workers: int) -> int:
    """Items per chunk for a batch of ``items`` on ``workers`` workers: CHUNKS_PER_WORKER
    chunks each, within CHUNK_MIN..CHUNK_MAX."""
    return max(CHUNK_MIN, min(CHUNK_MAX, -(-items // (max(workers, 1) * CHUNKS_PER_WORKER))))


async def _ingest_chunk(svc: Service, chunk: list[Item], study_uid: str | None) -> list[Result]:
    """One trip to a worker; if the worker dies on the chunk, each file alone finds the culprit."""
    try:
        return await svc.cpu(ingest_items, svc.config, chunk, study_uid)
    except DicomSvcError as exc:  # the file crashed a worker (twice): only that one fails
        if len(chunk) == 1:
            return [failed(chunk[0].file, exc.code, exc.detail)]
        return [r for item in chunk for r in await _ingest_chunk(svc, [item], study_uid)]
