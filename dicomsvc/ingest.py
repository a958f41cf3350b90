"""The ingest pipeline: spool → parse → (duplicate?) → flatten + render → blobs → row.

``spool_path`` and ``prepare`` are plain synchronous code (they run in worker
threads); ``ingest_path`` strings them together around the database. Blobs
are renamed into place before the row is committed, and a failed or
duplicate ingest removes what it wrote, so a crash leaves a whole record or
nothing that anything points at.
"""

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import shortuuid
from pydicom.dataset import Dataset

from . import paths, store
from .blobs import BlobStore
from .errors import DicomSvcError
from .parse import Parsed, read
from .render import render_png
from .service import Service
from .tags import TagRow, flatten


@dataclass
class Spooled:
    temp: Path  # our own copy of the input, in blob temp space
    parsed: Parsed
    source: str


@dataclass
class Prepared:
    record: dict
    rows: list[TagRow]
    warnings: list[str] = field(default_factory=list)

    @property
    def blob_keys(self) -> tuple[str, str | None]:
        return self.record["dcm_blob"], self.record["png_blob"]


@dataclass(frozen=True)
class Ingested:
    id: str
    created: bool
    warnings: list[str]


def spool_path(import_root: Path, raw: object, blobs: BlobStore, max_bytes: int) -> Spooled:
    """Copy the file ``raw`` names (inside the import root) to temp space and parse it."""
    real = paths.resolve(import_root, raw)
    shown = str(raw)
    with paths.open_regular(real, shown) as src:
        temp = blobs.spool(src, max_bytes)
    try:
        parsed = read(temp)
    except BaseException:
        blobs.discard(temp)
        raise
    return Spooled(temp=temp, parsed=parsed, source=str(real.relative_to(import_root.resolve())))


def prepare(spooled: Spooled, blobs: BlobStore, instance_id: str) -> Prepared:
    """Flatten tags, render frame 1, and move the blobs into place under ``instance_id``."""
    parsed = spooled.parsed
    rows = flatten(parsed.ds, parsed.pixel)
    warnings: list[str] = []
    png_temp = render_error = None
    if parsed.pixel is not None:
        try:
            png_temp = blobs.write_temp(render_png(spooled.temp, parsed), ".png")
        except DicomSvcError as exc:
            render_error = exc.detail
        except Exception as exc:  # odd pixel data must not cost the client its tags
            render_error = f"pixel data could not be rendered: {type(exc).__name__}"
        if render_error:
            warnings.append(render_error)
    dcm_key = blobs.key(instance_id, "dcm")
    png_key = blobs.key(instance_id, "png") if png_temp else None
    size = spooled.temp.stat().st_size
    try:
        blobs.commit(spooled.temp, dcm_key)
        if png_temp:
            blobs.commit(png_temp, png_key)
    except BaseException:
        blobs.discard(spooled.temp, png_temp)
        blobs.remove(dcm_key, png_key)
        raise
    record = summary(parsed) | {
        "id": instance_id,
        "dcm_blob": dcm_key,
        "dcm_bytes": size,
        "png_blob": png_key,
        "render_error": render_error,
        "source": spooled.source,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
    }
    return Prepared(record=record, rows=rows, warnings=warnings)


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
    return await svc.shielded(_ingest_path(svc, raw))


async def _ingest_path(svc: Service, raw: object) -> Ingested:
    cfg = svc.config
    spooled = await svc.run(spool_path, cfg.import_root, raw, svc.blobs, cfg.max_upload_bytes)
    return await _store(svc, spooled)


async def _store(svc: Service, spooled: Spooled) -> Ingested:
    parsed = spooled.parsed
    try:
        existing = await store.find_instance(svc.db, parsed.sop_instance_uid, parsed.pixel_hash)
        if existing:
            return Ingested(existing, created=False, warnings=[])
        prepared = await svc.run(prepare, spooled, svc.blobs, shortuuid.uuid())
    finally:
        await svc.run(svc.blobs.discard, spooled.temp)  # gone already when prepare moved it
    try:
        stored = await store.insert_instance(svc.db, prepared.record, prepared.rows)
    except BaseException:
        await asyncio.shield(svc.run(svc.blobs.remove, *prepared.blob_keys))
        raise
    if stored is None:  # a concurrent post of the same instance won the race
        await svc.run(svc.blobs.remove, *prepared.blob_keys)
        existing = await store.find_instance(svc.db, parsed.sop_instance_uid, parsed.pixel_hash)
        return Ingested(existing, created=False, warnings=[])
    return Ingested(stored, created=True, warnings=prepared.warnings)
