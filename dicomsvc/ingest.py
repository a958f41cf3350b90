"""The ingest pipeline: spool → parse → duplicate? → flatten + render → blobs → row.

Plain synchronous code with plain, picklable inputs and outputs: the service
runs it in worker processes (so parsing, rendering and the SQLite insert use
every core and never the event loop), and tests and tools call it directly.
Blobs are written to temporary names, synced, renamed into place, their folders
synced, and only then is the row committed, durably (``storage.blobs``,
``storage.sqlite``): a 201 survives a power cut. A batch stages each of its files
(``stage_file``) and commits them together (``commit_staged``): their blobs synced and
renamed together, one folder sync per folder and one transaction for the chunk (a group
commit). A failed or duplicate
ingest removes what it wrote, so a
crash leaves a whole record or nothing anything points at (temporary files are
cleared at the next start).
"""

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from . import paths, routing
from .config import Config
from .dicom import dicomjson
from .dicom.parse import Parsed, frame_count, is_legacy_hash, pixel_hash, read
from .dicom.tags import TagRow, flatten
from .errors import DicomSvcError, InvalidDicom, NotDicom, SopMismatch, StudyMismatch
from .imaging.render import render_png
from .options import PLAIN, Options
from .results import Folder, Ingested  # defined there: the server unpickles them without pydicom
from .storage import instances, space
from .storage.blobs import BlobStore
from .storage.sqlite import Writer, connection
from .workerproc import failure


@dataclass
class Staged:
    """An instance whose blobs are written and committed to the store (placed by its next
    ``sync``), its row not yet committed: ``commit_staged`` finishes it."""

    record: dict
    rows: list[TagRow]
    metadata: str | None
    digest: str
    uids: dict
    warnings: list[str]


def ingest_import(config: Config, raw: object, options: Options = PLAIN) -> Ingested:
    """Ingest the file ``raw`` names inside the import root (opened beneath it: ``paths``)."""
    blobs = BlobStore.of(config)
    return _finish(config, blobs, stage_import(config, raw, options, blobs))


def ingest_path(config: Config, raw: object, options: Options = PLAIN) -> "Ingested | Folder | DicomSvcError":
    """``POST /dicom {"path"}`` in one trip to a worker: ``ingest_import`` of the file ``raw``
    names, or ``Folder`` when it names a folder (the server expands it), or the error that
    refused the path before any ingest (403 outside the root, 400 a name no file can have:
    returned, not raised, as it is no failed ingest). Resolving here rather than in an I/O
    thread of the server spares it a hop there and back per file (issue 12: ~120 us of CPU)."""
    blobs = BlobStore.of(config)
    done = _stage_item(config, blobs, ("path", raw, options))
    return commit_staged(config, blobs, [done])[0] if isinstance(done, Staged) else done


def ingest_file(config: Config, temp: Path, source: str, options: Options = PLAIN) -> Ingested:
    """Ingest a file already spooled to blob temp space (it is moved into place or removed).

    A full disk (ENOSPC, EDQUOT, SQLITE_FULL) anywhere is ``InsufficientStorage`` (507),
    raised after removing every blob this call wrote, temporary or already renamed.
    """
    blobs = BlobStore.of(config)
    return _finish(config, blobs, stage_file(config, temp, source, options, blobs))


def ingest_group(config: Config, items: list[tuple]) -> list[tuple]:
    """Single ingests that waited for a worker together (``workers.run_grouped``), in one trip:
    each item ``("path", raw, options)`` (``ingest_path``) or ``("file", temp, source, options)``
    (``ingest_file``) staged on its own, and the staged ones committed in one transaction
    (``commit_staged``: one folder-sync pass, one WAL sync; issue 12's group commit). A reply
    per item, as a worker's (``workerproc.failure``): an item's refusal or failure is its own;
    a commit that fails, fails the items it commits (their blobs removed). Past the memory
    limit nothing staged stays, and the task fails as a whole (413, as alone)."""
    blobs = BlobStore.of(config)
    replies: list = [None] * len(items)
    staged: list[tuple[int, Staged]] = []
    try:
        for i, item in enumerate(items):
            try:
                done = _stage_item(config, blobs, item)
            except MemoryError:
                raise
            except Exception as exc:
                replies[i] = failure(exc)
                continue
            if isinstance(done, Staged):
                staged.append((i, done))
            else:
                replies[i] = ("ok", done)
    except BaseException:
        for _, s in staged:
            blobs.remove(s.record["dcm_blob"], s.record["png_blob"])
        raise
    try:
        committed = [("ok", done) for done in commit_staged(config, blobs, [s for _, s in staged])] if staged else []
    except MemoryError:
        raise
    except Exception as exc:  # its blobs removed (commit_staged)
        committed = [failure(exc) for _ in staged]
    for (i, _), reply in zip(staged, committed, strict=True):
        replies[i] = reply
    return replies


def _stage_item(config: Config, blobs: BlobStore, item: tuple) -> "Staged | Ingested | Folder | DicomSvcError":
    """One item of ``ingest_group`` staged (or its duplicate's ``Ingested``; for a path, as
    ``ingest_path``: its folder, or the error refusing it, returned)."""
    kind, *args = item
    if kind == "file":
        temp, source, options = args
        return stage_file(config, temp, source, options, blobs)
    raw, options = args
    try:
        real, is_dir = paths.resolve_kind(config.import_root, raw)
    except DicomSvcError as exc:
        return exc
    return Folder(real) if is_dir else stage_import(config, raw, options, blobs)


def ingest_capture(config: Config, temp: Path, source: str, options: Options, capture: dict) -> Ingested:
    """``ingest_file`` for a JPEG or PNG spooled to blob temp space: made a Secondary Capture
    instance first (``stage_capture``)."""
    blobs = BlobStore.of(config)
    return _finish(config, blobs, stage_capture(config, temp, source, options, blobs, capture))


def stage_capture(
    config: Config, temp: Path, source: str, options: Options, blobs: BlobStore, capture: dict
) -> "Staged | Ingested":
    """``stage_file`` for an image (``temp``, removed here) converted to an SC instance
    (``dicomsvc.imaging.photo``; ``capture``: the request's attributes, ``dicomsvc.photos``)."""
    from .imaging.photo import convert  # Pillow's decoders loaded on the first photo only

    path = None
    try:
        path, handle = blobs.create_temp(".dcm")
        with handle, space.full_is_507():
            convert(temp, capture, config.max_frame_bytes, handle)
    except BaseException:
        blobs.discard(path)
        raise
    finally:
        blobs.discard(temp)
    return stage_file(config, path, source, options, blobs)


def _finish(config: Config, blobs: BlobStore, staged: "Staged | Ingested") -> Ingested:
    return staged if isinstance(staged, Ingested) else commit_staged(config, blobs, [staged])[0]


def stage_import(config: Config, raw: object, options: Options, blobs: BlobStore) -> "Staged | Ingested":
    """``stage_file`` for the file ``raw`` names inside the import root (``paths``)."""
    src, source = paths.open_file(config.import_root, raw)
    with src, space.full_is_507():  # the spool removes its partial copy
        temp = blobs.spool(src, config.max_upload_bytes)
    return stage_file(config, temp, source, options, blobs)


def stage_file(config: Config, temp: Path, source: str, options: Options, blobs: BlobStore) -> "Staged | Ingested":
    """Everything of an ingest but the commit: parse, check for a duplicate (then its
    ``Ingested``), flatten, render, and blobs committed to the store (``BlobStore.commit_at_sync``:
    synced and in place, folders aside, after ``blobs.sync`` at the latest). On any error nothing this
    call wrote is left."""
    db = connection(config.database)
    png_temp = record = None
    anonymized = options.anonymize or config.anonymize_always
    parsed = None
    try:
        blobs.sync_soon(temp)  # its data flushes while we parse and render
        parsed = read(temp, config.max_upload_bytes)  # a deflated data set inflates to no more either
        # (0002,0002) Media Storage SOP Class UID: Media Storage Directory Storage
        if _text(parsed.ds.file_meta, "MediaStorageSOPClassUID") == "1.2.840.10008.1.3.10":
            raise NotDicom("a DICOMDIR (a media directory), not an instance")
        if options.study_uid is not None and _text(parsed.ds, "StudyInstanceUID") != options.study_uid:
            raise StudyMismatch("the instance belongs to another study than the one in the URL")
        if options.affected_sop is not None and options.affected_sop != (
            _text(parsed.ds, "SOPClassUID"), parsed.sop_instance_uid
        ):
            raise SopMismatch("the data set's SOP Class or Instance UID is not the C-STORE request's (PS3.4 B.2.3)")
        if anonymized:  # from here on only the anonymized copy exists
            temp = _anonymized_copy(config, temp, options, blobs)
            parsed, source = read(temp, config.max_upload_bytes), "(anonymized)"
        uids = {"sop_class_uid": _text(parsed.ds, "SOPClassUID"), "sop_instance_uid": parsed.sop_instance_uid}
        digest = pixel_hash(temp, parsed)
        existing = _stored_already(db, temp, parsed, digest)
        if existing:
            blobs.discard(temp)
            return Ingested(existing, created=False, warnings=[], **uids)
        rows = flatten(parsed.ds, parsed.pixel)
        png_temp, render_error = _render(temp, parsed, blobs)
        record = _record(parsed, digest, rows, temp, source, render_error, png_temp is not None, blobs.new_id())
        record |= {
            "anonymized": int(anonymized),
            "anonymized_from": options.anonymized_from,
            "uploaded_by": options.user,
            "png_bytes": png_temp.stat().st_size if png_temp else None,
        }
        metadata = _metadata(parsed, rows, record)
        blobs.commit_at_sync([(temp, record["dcm_blob"]), *([(png_temp, record["png_blob"])] if png_temp else [])])
    except DicomSvcError as exc:
        blobs.discard(temp, png_temp)
        if parsed is not None:  # name the refused instance (STOW-RS Failed SOP Sequence)
            exc.instance = (_text(parsed.ds, "SOPClassUID"), parsed.sop_instance_uid)
        raise
    except BaseException as exc:
        blobs.discard(temp, png_temp)
        if record is not None:  # the DICOM blob may be in place already, the PNG's commit failing
            blobs.remove(record["dcm_blob"], record["png_blob"])
        if space.is_full(exc):
            raise space.insufficient() from None
        raise
    warnings = [*parsed.warnings, *([render_error] if render_error else [])]
    return Staged(record, rows, metadata, digest, uids, warnings)


def commit_staged(config: Config, blobs: BlobStore, staged: list[Staged]) -> list[Ingested]:
    """Place the staged blobs and sync the folders they were renamed into (``blobs.sync``),
    then commit their rows in one durable transaction: the group commit (the blobs' data
    synced together, one fsync per folder, one WAL sync per call).
    On an error every staged blob is removed (a full disk: 507)."""
    db = connection(config.database)
    try:
        blobs.sync()  # the data and names durable before any committed row points at them
        # routing rules: forwards queued in the instances' own transaction (dicomsvc.routing)
        forwards = [routing.forwards(config.network_config.rules, s.rows) for s in staged]
        if len(staged) == 1:
            one = staged[0]
            stored = [instances.insert_instance(db, one.record, one.rows, one.metadata, forwards[0])]
        else:
            stored = instances.insert_instances(db, [(s.record, s.rows, s.metadata) for s in staged], forwards)
    except BaseException as exc:
        if not getattr(exc, "committed", False):  # rows committed, the WAL sync failing: keep their blobs
            for s in staged:
                blobs.remove(s.record["dcm_blob"], s.record["png_blob"])
        if space.is_full(exc):  # SQLITE_FULL: the transaction was rolled back
            raise space.insufficient() from None
        raise
    done = []
    for s, stored_id in zip(staged, stored):
        if stored_id is None:  # a concurrent post of the same instance won the race
            blobs.remove(s.record["dcm_blob"], s.record["png_blob"])
            existing = instances.find_instance(db, s.record["sop_instance_uid"], s.digest)
            done.append(Ingested(existing, created=False, warnings=[], **s.uids))
        else:
            done.append(Ingested(stored_id, created=True, warnings=s.warnings, **s.uids))
    return done


def _stored_already(db: Writer, temp: Path, parsed: Parsed, digest: str) -> str | None:
    """The id of the stored instance this one repeats (the same SOP Instance UID and pixel data),
    or None. A row stored before ``PIXEL_DIGEST`` holds a SHA-256: the file's is computed then."""
    versions = instances.stored_versions(db, parsed.sop_instance_uid)
    if digest in versions:
        return versions[digest]
    if any(is_legacy_hash(stored) for stored in versions):
        return versions.get(pixel_hash(temp, parsed, legacy=True))
    return None


def _anonymized_copy(config: Config, temp: Path, options: Options, blobs: BlobStore) -> Path:
    """Write the anonymized instance to a new temporary blob; the original copy is removed."""
    from .dicom.anonymize import anonymize  # the profile table loads on first use

    try:
        ds = dcmread(temp, force=True)
        out = anonymize(ds, config.anon_secret.encode(), allow_burned_in=options.allow_burned_in)
    except DicomSvcError:
        raise
    except Exception as exc:  # pydicom on a value it cannot convert, say
        raise InvalidDicom(f"the file could not be anonymized ({type(exc).__name__})") from None
    finally:
        blobs.discard(temp)
    return save_temp(blobs, out)[0]


def save_temp(blobs: BlobStore, ds) -> tuple[Path, int]:
    """Write a data set (an anonymized copy) as a new temporary blob: its path and size.
    InvalidDicom when pydicom will not write it; OSError from the disk (a full one is a 507)."""
    path, handle = blobs.create_temp(".dcm")
    try:
        with handle:
            ds.save_as(handle, enforce_file_format=True)
            size = handle.tell()
    except OSError:  # the disk, not the data (a full one is a 507)
        blobs.discard(path)
        raise
    except Exception as exc:  # what pydicom reads but will not write: an unknown VR, no transfer syntax...
        blobs.discard(path)
        raise InvalidDicom(f"the anonymized copy could not be written ({type(exc).__name__})") from None
    except BaseException:
        blobs.discard(path)
        raise
    return path, size


def _record(
    parsed: Parsed,
    digest: str,
    rows: list[TagRow],
    temp: Path,
    source: str,
    render_error: str | None,
    has_png: bool,
    instance_id: str,
) -> dict:
    return summary(parsed, rows) | {
        "pixel_hash": digest,
        "id": instance_id,
        "dcm_blob": BlobStore.key(instance_id, "dcm"),
        "dcm_bytes": temp.stat().st_size,
        "png_blob": BlobStore.key(instance_id, "png") if has_png else None,
        "render_error": render_error,
        "source": source,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
    }


def _metadata(parsed: Parsed, rows: list[TagRow], record: dict) -> str | None:
    """The instance's DICOM JSON (PS3.18 Annex F) as compact text, stored for WADO-RS metadata,
    made from the flattened rows (no second conversion). None when DICOMweb cannot address the
    instance (no Study or Series Instance UID), or it would not convert: it is then made from
    the file on first request."""
    study, series = record["study_instance_uid"], record["series_instance_uid"]
    if not study or not series:
        return None
    try:
        return dicomjson.stored_metadata(parsed, rows, study, series, record["sop_instance_uid"])
    except Exception:  # odd data must not cost the client its instance
        return None


def _render(temp: Path, parsed: Parsed, blobs: BlobStore) -> tuple[Path | None, str | None]:
    """Frame 1 as a temporary PNG blob, or why there is none (pixel data that won't decode)."""
    if parsed.pixel is None:
        return None, None
    if parsed.pixel_problem:  # cut short or inconsistent: never shown as if whole
        return None, parsed.pixel_problem
    try:
        png = blobs.write_temp(render_png(temp, parsed), ".png")
        blobs.sync_soon(png)  # flushing while the row and the DICOM JSON are made
        return png, None
    except DicomSvcError as exc:
        return None, exc.detail
    except Exception as exc:  # odd pixel data must not cost the client its tags
        if space.is_full(exc):  # no room for the PNG: that is no fault of the pixel data
            raise
        return None, f"pixel data could not be rendered: {type(exc).__name__}"


def summary(parsed: Parsed, rows: list[TagRow]) -> dict:
    """The columns of the ``dicom`` row that later searches need, from the flattened tags
    (already text: converting them again through pydicom would cost a third of a ms)."""
    top = {r.keyword: r.value for r in rows if r.parent is None and r.keyword}
    text, number = top.get, lambda keyword: _int(top.get(keyword))
    return {
        "sop_instance_uid": parsed.sop_instance_uid,
        "sop_class_uid": text("SOPClassUID"),
        "study_instance_uid": text("StudyInstanceUID"),
        "series_instance_uid": text("SeriesInstanceUID"),
        # study, series and instance attributes DICOMweb queries match and return (PS3.18 §10.6)
        "study_time": text("StudyTime"),
        "study_id": text("StudyID"),
        "referring_physician_name": text("ReferringPhysicianName"),
        "timezone_offset": text("TimezoneOffsetFromUTC"),
        "series_number": number("SeriesNumber"),
        "series_description": text("SeriesDescription"),
        "pps_start_date": text("PerformedProcedureStepStartDate"),
        "pps_start_time": text("PerformedProcedureStepStartTime"),
        "instance_number": number("InstanceNumber"),
        "patient_id": text("PatientID"),
        "patient_name": text("PatientName"),
        "patient_sex": text("PatientSex"),
        "patient_birth_date": text("PatientBirthDate"),
        "study_date": text("StudyDate"),
        "study_description": text("StudyDescription"),
        "accession_number": text("AccessionNumber"),
        "modality": text("Modality"),
        "transfer_syntax_uid": parsed.transfer_syntax or None,
        "rows": number("Rows"),
        "columns": number("Columns"),
        "frames": frame_count(parsed.ds) if parsed.pixel else None,
        "bits_allocated": number("BitsAllocated"),
        "bits_stored": number("BitsStored"),
        "photometric": text("PhotometricInterpretation"),
        "has_pixels": int(parsed.pixel is not None),
    }


def _text(ds: Dataset, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:
        return None
    return None if value is None else str(value)


def _int(value: str | None) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
