"""Dataset export for ML (POST /datasets/{dataset}/export): a background job writing the matched
studies' instances as files plus ``manifest.csv``; ``GET /jobs/{job}/result`` streams them as a ZIP.

The job is an ordinary ``job`` row with one item, the export's parameters (``{"export": ...}``);
the job runner (``dicomsvc.jobs``) hands such an item to ``run`` instead of the ingest. ``run``
walks the dataset's instances a page at a time (``storage.datasets.export_page``, keyset paging),
each page written by a worker (``exportfiles.export_chunk``) under ``<data>/exports/<job>/files``,
its manifest rows appended to ``manifest.csv`` as they come: memory stays flat in the export's
size. A job run again (its replica died) starts its export again from the start.

The ZIP is made while it is sent (``zip_stream``: stored members, each local header complete,
the central directory spooled to a temporary file; nothing held but the piece being sent):
one folder per study and series,
``<study>/<series>/<sop>.dcm|.npy|.png``, and ``manifest.csv`` (one row per instance; every cell
through ``datasets.escape_formula``, so a spreadsheet opening it evaluates nothing).
"""

import csv
import json
import os
import shutil
import struct
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import shortuuid

from . import tasks
from .config import Config
from .datasets import GEOMETRY, escape_formula, is_identifying
from .errors import BadRequest, DicomSvcError, NotFound
from .service import Service
from .storage import datasets as store
from .storage import jobs as job_rows

KINDS = ("npy", "png", "dicom")
PAGE = 64  # instances per worker task (one trip; well inside DICOMSVC_WORKER_TIMEOUT)
READ = 1 << 20
HEAD = ("path_dicom", "path_npy", "path_png", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
        "Modality", *GEOMETRY, "csv_row", "key")  # fmt: skip


class NotDone(DicomSvcError):
    """The job's result asked for before the job is done."""

    status, code = 409, "not_done"


class Gone(DicomSvcError):
    """The export's result is no longer kept: DICOMSVC_EXPORT_RESULT_SECONDS after its job
    finished, or its dataset deleted (RFC 9110 §15.5.11: gone, and not coming back)."""

    status, code = 410, "gone"


def result_dir(config: Config, job_id: str) -> Path:
    return config.data_dir / "exports" / job_id


def result_prefix(job_id: str) -> str:
    """With S3: where a finished export's files are kept in the bucket, for every replica."""
    return f"exports/{job_id}"


def parse_request(body: Mapping) -> dict:
    """The export's parameters from its JSON body: include, rescale, anonymize, allow_burned_in, filter."""
    unknown = set(body) - {"include", "rescale", "anonymize", "allow_burned_in", "filter"}
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    include = body.get("include", list(KINDS))
    if not isinstance(include, list) or not include or any(k not in KINDS for k in include):
        raise BadRequest(f"include must be a non-empty list of {', '.join(KINDS)}")
    flags = {}
    for name in ("rescale", "anonymize", "allow_burned_in"):
        if not isinstance(body.get(name, False), bool):
            raise BadRequest(f"{name} must be true or false")
        flags[name] = body.get(name, False)
    chosen = body.get("filter", {})
    if not isinstance(chosen, dict) or any(k not in store.EXPORT_FILTERS or not isinstance(v, str) for k, v in chosen.items()):
        raise BadRequest(f"filter must be an object of {', '.join(store.EXPORT_FILTERS)} (text values)")
    return {"include": sorted(set(include)), **flags, "filter": chosen}


async def submit(svc: Service, dataset_id: str, body: Mapping, owner: str | None, user: str | None) -> str:
    """Queue the export of a dataset (``owner``: one of theirs, over their instances): its job id."""
    dataset = await store.get(svc.db, dataset_id, owner)
    if dataset is None:
        raise NotFound("no such dataset")
    spec = parse_request(body)
    columns = dataset["columns"]
    if spec["anonymize"] and not dataset["anonymized"]:  # columns naming patients go, as in an anonymized join
        columns = [name for name in columns if not is_identifying(name)]
    spec |= {"dataset": dataset_id, "owner": owner, "columns": columns, "key_kind": dataset["key"],
             "dataset_anonymized": dataset["anonymized"]}  # fmt: skip
    job_id = shortuuid.uuid()
    await job_rows.insert_job(svc.db, job_id, [(0, json.dumps({"export": spec}), "pending", None)], None, user)
    svc.wakeup.set()
    return job_id


def is_export(item: str) -> bool:
    """Whether a job item (its JSON) is an export's rather than a file to ingest."""
    return item.startswith('{"export"')


async def run(svc: Service, job_id: str, seq: int, item: str) -> None:
    """Write the export of the job's item, then record the item done (under the job's lease)."""
    spec = json.loads(item)["export"]
    folder = result_dir(svc.config, job_id)
    await svc.io(_fresh, folder)
    columns = spec["columns"]
    await svc.io(_append, folder / "manifest.csv", [[escape_formula(c) for c in (*HEAD, *columns)]])
    # anonymize: instances stored as they came are anonymized on the way out (exportfiles)
    secret = svc.config.anon_secret.encode() if spec["anonymize"] else None
    extra = (secret, spec.get("allow_burned_in", False), spec.get("key_kind", "PatientID"))
    exported, failed = 0, Counter()  # instances left out, by error code (burned_in_annotation, not_found...)
    async for page in _pages(svc, spec):
        entries = await svc.cpu(tasks.export_chunk, svc.config, str(folder / "files"), page, spec["include"],
                                spec["rescale"], *extra)  # fmt: skip
        lines = []
        for row, entry in zip(page, entries):
            if "error" in entry:
                failed[entry["error"]] += 1
                continue
            exported += 1
            clinical = json.loads(row["clinical"])
            paths, values = entry["paths"], entry["values"]
            cells = [paths.get("dicom", ""), paths.get("npy", ""), paths.get("png", ""),
                     *(values[name] for name in HEAD[3:7]), *(values[name] for name in GEOMETRY),
                     str(row["row_number"]), values.get("key", row["key_value"]),
                     *(clinical.get(c, "") for c in columns)]  # fmt: skip
            lines.append([escape_formula(c) for c in cells])
        await svc.io(_append, folder / "manifest.csv", lines)
    if svc.blobs.keyring is not None:  # encryption at rest: plaintext only while the export is written
        await svc.io(svc.blobs.seal_folder, folder, result_prefix(job_id))
    if svc.blobs.remote is not None:  # any replica may be asked for the result: kept in the bucket
        await svc.io(svc.blobs.remote.delete_under, result_prefix(job_id) + "/")  # a run before this one's
        await svc.io(svc.blobs.push_folder, folder, result_prefix(job_id))
    result = {"file": "export.zip", "status": "created", "id": job_id,
              "detail": f"{exported} instance(s) exported, {sum(failed.values())} left out"
                        + (f" ({', '.join(f'{code}: {n}' for code, n in sorted(failed.items()))})" if failed else "")}  # fmt: skip
    await job_rows.record_results(svc.db, job_id, [(seq, "created", json.dumps(result))], svc.replica,
                                  svc.config.job_lease_seconds)  # fmt: skip


async def _pages(svc: Service, spec: dict) -> AsyncIterator[list[dict]]:
    """The export's instances a page at a time, each with its dataset row: those of the studies
    the rows link; then, anonymizing an anonymized dataset, those of its studies stored as they
    came (linked by the anonymizer's UID of theirs: ``datasets.original_links``), to be
    anonymized on the way out. Keyset paging by ``dicom.pk`` (memory flat in the export's size)."""
    after = 0
    while page := await store.export_page(svc.db, spec["dataset"], after, PAGE, spec["owner"], spec["filter"]):
        after = page[-1]["pk"]
        yield page
    if not (spec["anonymize"] and spec.get("dataset_anonymized")):
        return
    links = await svc.cpu(tasks.original_links, svc.config, spec["dataset"], spec["owner"])
    originals = sorted(links)
    for start in range(0, len(originals), store.CHUNK):
        chunk = {uid: links[uid] for uid in originals[start : start + store.CHUNK]}
        after = 0
        while page := await store.export_page_of_studies(svc.db, spec["dataset"], chunk, after, PAGE, spec["owner"],
                                                         spec["filter"]):  # fmt: skip
            after = page[-1]["pk"]
            yield page


def _fresh(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "files").mkdir(parents=True)


def _append(path: Path, rows: list[list[str]]) -> None:
    with open(path, "a", newline="", encoding="utf-8") as out:
        csv.writer(out).writerows(rows)


async def result(svc: Service, job_id: str, owner: str | None) -> Path:
    """GET /jobs/{job}/result: the export's folder, once its job is done (``owner``: their job);
    with S3, fetched from the bucket when another replica wrote it. 410 once it expired
    (DICOMSVC_EXPORT_RESULT_SECONDS after the job finished) or its dataset was deleted."""
    job = await job_rows.get_job(svc.db, job_id, owner)
    if job is None or await store.export_item(svc.db, job_id) is None:
        raise NotFound("no export with that job id")
    if job["status"] != "done":
        raise NotDone(f"the export's job is {job['status']}, not done (GET /jobs/{{job}} says how it goes)")
    found = (await store.export_jobs(svc.db, [job_id])).get(job_id)
    if found is None or _expired(found, time.time() - svc.config.export_result_seconds):
        raise Gone(f"the export's result is no longer kept: results are removed {svc.config.export_result_seconds} s "
                   "after their job finished (DICOMSVC_EXPORT_RESULT_SECONDS), and with their dataset")  # fmt: skip
    folder = result_dir(svc.config, job_id)
    if await svc.io((folder / "manifest.csv").exists):
        return folder
    if svc.blobs.remote is not None and await svc.io(svc.blobs.pull_folder, result_prefix(job_id), folder):
        return folder
    raise Gone("the export's result is no longer kept (removed)")


def _expired(job: dict, cutoff: float) -> bool:
    """Whether a finished export's result is past keeping: finished before ``cutoff`` (seconds
    since the epoch), or its dataset deleted. Unfinished jobs' results are still being written."""
    if job["status"] not in ("done", "failed") or not job["finished_at"]:
        return False
    if not job.get("dataset_exists", True):
        return True
    return datetime.fromisoformat(job["finished_at"]).timestamp() < cutoff


async def expire(svc: Service, now: float | None = None) -> int:
    """Remove the results (local folders; with S3 the bucket's objects) of exports past keeping:
    finished more than DICOMSVC_EXPORT_RESULT_SECONDS before ``now``, their dataset deleted, or
    their job gone. How many results were removed."""
    cutoff = (time.time() if now is None else now) - svc.config.export_result_seconds
    root = svc.config.data_dir / "exports"
    local = await svc.io(lambda: [p.name for p in root.iterdir() if p.is_dir()] if root.is_dir() else [])
    remote: list[str] = []
    if svc.blobs.remote is not None:
        remote = await svc.io(_remote_results, svc.blobs)
    ids = sorted(set(local) | set(remote))
    jobs = await store.export_jobs(svc.db, ids)
    gone = [job_id for job_id in ids if job_id not in jobs or _expired(jobs[job_id], cutoff)]
    for job_id in gone:
        await svc.io(shutil.rmtree, result_dir(svc.config, job_id), True)
        if job_id in remote:
            await svc.io(svc.blobs.remote.delete_under, result_prefix(job_id) + "/")
    return len(gone)


def _remote_results(blobs) -> list[str]:
    """The job ids with results in the bucket (``exports/<job>/...``); only names a job id can
    have (shortuuid: letters and digits), so no key can name a folder outside ``exports``."""
    found = {entry.key.split("/")[1] for entry in blobs.remote.listing("exports/") if entry.key.count("/") >= 2}
    return sorted(job_id for job_id in found if job_id.isascii() and job_id.isalnum())


# The ZIP (APPNOTE.TXT 6.3.10, PKWARE), written while it is sent. Members are stored (PNG and
# most pixel data gain little from deflate), each file read twice: once for its CRC-32, once to
# send it, so every local header is complete (no data descriptors: streaming readers cope too).
# The central directory's records go to a temporary file as the members go out and are copied
# after them: memory stays flat however many members (zipfile keeps ~0.8 KB a member in memory).
# ZIP64 (4.5.3) where a size, an offset or the member count needs it.
ZIP64_LIMIT = 0xFFFFFFFF  # sizes and offsets from here on need ZIP64 (a test lowers it)
ZIP64_COUNT = 0xFFFF  # members from here on need the ZIP64 end records
_FULL32, _FULL16 = 0xFFFFFFFF, 0xFFFF  # what a field too small for its value holds (the value: in ZIP64 fields)
_UTF8 = 0x0800  # general purpose bit 11: names are UTF-8


def _dos_time(mtime: float) -> tuple[int, int]:
    t = time.localtime(max(mtime, 315532800))  # DOS dates start in 1980
    return (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2), ((t.tm_year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday


def _crc(src: BinaryIO) -> int:
    crc = 0
    while chunk := src.read(READ):
        crc = zlib.crc32(chunk, crc)
    src.seek(0)
    return crc


def _plain(path: Path) -> tuple[BinaryIO, int]:
    src = open(path, "rb")
    return src, os.fstat(src.fileno()).st_size


def member_opener(svc: Service, job_id: str, folder: Path) -> Callable[[Path], tuple[BinaryIO, int]]:
    """How ``zip_stream`` opens the files of a job's result: decrypting those sealed at rest
    (``BlobStore.seal_folder``; their object id is their key under ``result_prefix``)."""
    prefix = result_prefix(job_id)
    return lambda path: svc.blobs.open_member(path, f"{prefix}/{path.relative_to(folder).as_posix()}")


def zip_stream(folder: Path, opener: Callable[[Path], tuple[BinaryIO, int]] = _plain) -> Iterator[bytes]:
    """The export as a ZIP, made while it is read: ``manifest.csv``, then the files folder by
    folder; ``opener``: a file's readable (seekable) plaintext and its size."""
    offset = count = 0
    pending = bytearray()  # sent in pieces of READ bytes or more: each piece is a hop to a thread
    with tempfile.TemporaryFile(dir=folder) as central:
        for path, name in _members(folder):
            src, size = opener(path)
            with src:
                crc, raw = _crc(src), name.encode("utf-8")
                clock, date = _dos_time(path.stat().st_mtime)
                big = size >= ZIP64_LIMIT
                extra = struct.pack("<HHQQ", 1, 16, size, size) if big else b""
                version = 45 if big else 20
                small = _FULL32 if big else size
                pending += struct.pack("<IHHHHHIIIHH", 0x04034B50, version, _UTF8, 0, clock, date, crc, small, small,
                                       len(raw), len(extra)) + raw + extra  # fmt: skip
                while chunk := src.read(READ):
                    pending += chunk
                    if len(pending) >= READ:
                        yield bytes(pending)
                        pending.clear()
            central.write(_central_record(raw, crc, size, offset, clock, date))
            offset += 30 + len(raw) + len(extra) + size
            count += 1
        central_size = central.tell()
        central.seek(0)
        while chunk := central.read(READ):
            pending += chunk
            if len(pending) >= READ:
                yield bytes(pending)
                pending.clear()
    yield bytes(pending) + _end_records(count, central_size, offset)


def _central_record(raw: bytes, crc: int, size: int, offset: int, clock: int, date: int) -> bytes:
    wide = [v for v in (size, size, offset) if v >= ZIP64_LIMIT]  # uncompressed, compressed, offset: in order
    extra = struct.pack(f"<HH{len(wide)}Q", 1, 8 * len(wide), *wide) if wide else b""
    version = 45 if wide else 20
    sized = _FULL32 if size >= ZIP64_LIMIT else size
    return struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, (3 << 8) | version, version, _UTF8, 0, clock, date, crc,
                       sized, sized, len(raw), len(extra), 0, 0, 0, 0o100644 << 16,
                       _FULL32 if offset >= ZIP64_LIMIT else offset) + raw + extra  # fmt: skip


def _end_records(count: int, size: int, offset: int) -> bytes:
    if count < ZIP64_COUNT and size < ZIP64_LIMIT and offset < ZIP64_LIMIT:
        return struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, size, offset, 0)
    record = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, (3 << 8) | 45, 45, 0, 0, count, count, size, offset)
    locator = struct.pack("<IIQI", 0x07064B50, 0, offset + size, 1)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, _FULL16, _FULL16, _FULL32, _FULL32, 0)
    return record + locator + end


def _members(folder: Path) -> Iterator[tuple[Path, str]]:
    yield folder / "manifest.csv", "manifest.csv"
    files = folder / "files"
    for top, dirs, names in os.walk(files):
        dirs.sort()
        for name in sorted(names):
            path = Path(top) / name
            yield path, path.relative_to(files).as_posix()
