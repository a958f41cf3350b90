"""The ingest pipeline: spool → parse → duplicate? → flatten + render → blobs → row.

``prepare_import`` and ``prepare_file`` are plain synchronous code with plain,
picklable inputs and outputs: the service runs them in worker processes (so
parsing and rendering use every core), and tests and tools can call them
directly. They write the blobs to temporary names and never touch the
database except to read. ``ingest_path`` then, in the service, renames the
blobs into place and commits the row; a failed or duplicate ingest removes
what it wrote, so a crash leaves a whole record or nothing anything points at
(and temporary files are cleared at the next start).
"""

import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import shortuuid
from pydicom.dataset import Dataset

from . import paths, store
from .blobs import BlobStore
from .config import Config
from .errors import DicomSvcError
from .parse import Parsed, read
from .render import render_png
from .service import Service
from .tags import TagRow, flatten


@dataclass(frozen=True)
class Duplicate:
    id: str


@dataclass
class Prepared:
    record: dict  # the dicom row
    rows: list[TagRow]
    dcm_temp: Path
    png_temp: Path | None
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Ingested:
    id: str
    created: bool
    warnings: list[str]


def prepare_import(config: Config, raw: object) -> Prepared | Duplicate:
    """Ingest the file ``raw`` names inside the import root, up to (not including) the commit."""
    real = paths.resolve(config.import_root, raw)
    blobs = BlobStore(config.blob_dir)
    with paths.open_regular(real, str(raw)) as src:
        temp = blobs.spool(src, config.max_upload_bytes)
    source = str(real.relative_to(config.import_root.resolve()))
    return prepare_file(config, temp, source)


def prepare_file(config: Config, temp: Path, source: str) -> Prepared | Duplicate:
    """Ingest a file already spooled to blob temp space (it is moved or removed)."""
    blobs = BlobStore(config.blob_dir)
    png_temp = None
    try:
        parsed = read(temp)
        existing = find_duplicate(config.db_path, parsed)
        if existing:
            blobs.discard(temp)
            return Duplicate(existing)
        rows = flatten(parsed.ds, parsed.pixel)
        png_temp, render_error = _render(temp, parsed, blobs)
    except BaseException:
        blobs.discard(temp, png_temp)
        raise
    record = summary(parsed) | {
        "id": shortuuid.uuid(),
        "dcm_bytes": temp.stat().st_size,
        "render_error": render_error,
        "source": source,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
    }
    record["dcm_blob"] = BlobStore.key(record["id"], "dcm")
    record["png_blob"] = BlobStore.key(record["id"], "png") if png_temp else None
    return Prepared(record, rows, temp, png_temp, [render_error] if render_error else [])


def find_duplicate(db_path: Path, parsed: Parsed) -> str | None:
    """A stored instance with the same SOP Instance UID and pixel data (read-only look-up)."""
    if not db_path.exists():
        return None
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        row = db.execute(store.FIND_INSTANCE_SQL, (parsed.sop_instance_uid, parsed.pixel_hash)).fetchone()
    finally:
        db.close()
    return row[0] if row else None


def _render(temp: Path, parsed: Parsed, blobs: BlobStore) -> tuple[Path | None, str | None]:
    """Frame 1 as a temporary PNG blob, or why there is none (pixel data that won't decode)."""
    if parsed.pixel is None:
        return None, None
    try:
        return blobs.write_temp(render_png(temp, parsed), ".png"), None
    except DicomSvcError as exc:
        return None, exc.detail
    except Exception as exc:  # odd pixel data must not cost the client its tags
        return None, f"pixel data could not be rendered: {type(exc).__name__}"


def summary(parsed: Parsed) -> dict:
    """The columns of the ``dicom`` row that later searches need."""
    ds = parsed.ds
    return {
        "sop_instance_uid": parsed.sop_instance_uid,
        "pixel_hash": parsed.pixel_hash,
        "sop_class_uid": _text(ds, "SOPClassUID"),
        "study_instance_uid": _text(ds, "StudyInstanceUID"),
        "series_instance_uid": _text(ds, "SeriesInstanceUID"),
        "patient_id": _text(ds, "PatientID"),
        "patient_name": _text(ds, "PatientName"),
        "study_date": _text(ds, "StudyDate"),
        "accession_number": _text(ds, "AccessionNumber"),
        "modality": _text(ds, "Modality"),
        "transfer_syntax_uid": parsed.transfer_syntax or None,
        "rows": _int(ds, "Rows"),
        "columns": _int(ds, "Columns"),
        "frames": _int(ds, "NumberOfFrames") or (1 if parsed.pixel else None),
        "has_pixels": int(parsed.pixel is not None),
    }


def _text(ds: Dataset, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:
        return None
    return None if value is None else str(value)


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        return int(ds.get(keyword))
    except Exception:
        return None


async def ingest_path(svc: Service, raw: object) -> Ingested:
    """Store the file ``raw`` names under the import root; a duplicate returns the stored id.

    The work runs as a tracked task, so a client that goes away mid-request
    does not leave half of it behind.
    """
    return await svc.shielded(_ingest(svc, prepare_import, svc.config, raw))


async def _ingest(svc: Service, prepare, *args) -> Ingested:
    outcome = await svc.cpu(prepare, *args)
    if isinstance(outcome, Duplicate):
        return Ingested(outcome.id, created=False, warnings=[])
    return await _commit(svc, outcome)


async def _commit(svc: Service, prepared: Prepared) -> Ingested:
    """Blobs into place, then the row; undo the blobs if the row does not land."""
    record = prepared.record
    keys = (record["dcm_blob"], record["png_blob"])
    await svc.io(_place_blobs, svc.blobs, prepared)
    try:
        stored = await store.insert_instance(svc.db, record, prepared.rows)
    except BaseException:
        await svc.io(svc.blobs.remove, *keys)
        raise
    if stored is None:  # a concurrent post of the same instance won the race
        await svc.io(svc.blobs.remove, *keys)
        existing = await store.find_instance(svc.db, record["sop_instance_uid"], record["pixel_hash"])
        return Ingested(existing, created=False, warnings=[])
    return Ingested(stored, created=True, warnings=prepared.warnings)


def _place_blobs(blobs: BlobStore, prepared: Prepared) -> None:
    record = prepared.record
    try:
        blobs.commit(prepared.dcm_temp, record["dcm_blob"])
        if prepared.png_temp:
            blobs.commit(prepared.png_temp, record["png_blob"])
    except BaseException:
        blobs.discard(prepared.dcm_temp, prepared.png_temp)
        blobs.remove(record["dcm_blob"], record["png_blob"])
        raise
