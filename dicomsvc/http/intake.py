"""``POST /dicom``: one route, chosen by Content-Type.

- ``application/json`` ``{"path"}``: a file under the import root (one instance), or a
  folder (every file below it);
- ``application/dicom``: the body is one instance;
- ``application/zip``: the body is an archive of instances;
- ``multipart/form-data``: ``file`` parts, each a DICOM file, a ZIP, a JPEG or a PNG;
- ``image/jpeg``, ``image/png``: the body is a photo or scan, made a Secondary Capture
  instance with the patient and study attributes of the query string (``dicomsvc.photos``).

One instance answers ``201``/``200`` ``{"id"}``; several answer ``200`` with
per-file results. More files than ``DICOMSVC_SYNC_LIMIT``, or ``?async=true``,
answer ``202 {"job", "status_url"}`` once the upload is safely on disk, and are
ingested in the background (``dicomsvc.jobs``).
"""

import dataclasses
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.multipart import parse_options_header
from starlette.requests import Request

from .. import audit, batch, jobs, metrics, paths, photos
from ..batch import Entry, Item
from ..dicom.files import HEAD_BYTES, is_zip, sniff
from ..errors import BadRequest, DicomSvcError, UnsupportedMediaType
from ..results import Ingested
from ..tasks import ingest_capture  # named, not imported: no pydicom here
from ..options import Options, flag
from ..service import Service
from ..storage.spool import new_spool, open_spooled, remove_spool
from . import uploads
from .auth import owner_of, user_of
from .requests import base_url, peek_body, read_json_object

ZIP_TYPES = {"application/zip", "application/x-zip-compressed"}
# What clients send when they name no type: curl --data-binary says form-urlencoded
UNTYPED = ("", "text/plain", "application/x-www-form-urlencoded")


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict
    headers: dict[str, str] = field(default_factory=dict)


def media_type(request: Request) -> str:
    kind, _ = parse_options_header(request.headers.get("content-type", ""))
    return kind.decode("latin-1").lower()


async def post_dicom(svc: Service, request: Request) -> Answer:
    kind = media_type(request)
    want_async = flag(request.query_params.get("async"), "async")
    options = Options.from_request(request.query_params, user=user_of(request))  # the owner of what is stored
    if kind in UNTYPED:  # JSON by default; a DICOM file sent without its type is taken as one
        request, head = await peek_body(request, HEAD_BYTES)
        if not head.lstrip().startswith(b"{") and sniff(head) is None:
            kind = "application/dicom"
        elif photos.image_kind(head):  # curl --data-binary @photo.jpg without a type
            kind = f"image/{photos.image_kind(head)}"
    if kind in ("application/json", *UNTYPED):
        return await _from_path(svc, request, want_async, options)
    if kind == "application/dicom":
        return await _from_body(svc, request, want_async, options)
    if kind in ZIP_TYPES:
        return await _with_spool(svc, request, want_async, options, _zip_entries)
    if kind == "multipart/form-data":
        return await _with_spool(svc, request, want_async, options, _form_entries)
    if kind in photos.IMAGE_TYPES:
        return await _from_image(svc, request, want_async, options)
    raise UnsupportedMediaType(
        f"Content-Type {kind!r} is not accepted here: send application/json {{\"path\"}}, "
        "application/dicom, application/zip, multipart/form-data, image/jpeg or image/png"
    )


def single(ingested: Ingested) -> Answer:
    audit.note(instance=ingested.id, status=201 if ingested.created else 200)
    metrics.ingested("created" if ingested.created else "duplicate")
    body = {"id": ingested.id} | ({"warnings": ingested.warnings} if ingested.warnings else {})
    return Answer(201 if ingested.created else 200, body)


async def _from_path(svc: Service, request: Request, want_async: bool, options: Options) -> Answer:
    body = await read_json_object(request)
    options, raw = Options.from_request(request.query_params, body, user=options.user), paths.client_path(body.get("path"))
    if want_async:
        real, is_dir = await svc.io(paths.resolve_kind, svc.config.import_root, raw)
    else:  # one trip to a worker, which resolves the path too (ingest.ingest_group)
        answer = await _ingest_one(svc, svc.ingest_one, "path", raw, options)
        if isinstance(answer, DicomSvcError):  # the path refused
            raise answer
        if isinstance(answer, Ingested):
            return single(answer)
        real, is_dir = answer.real, True
    if is_dir:
        entries = await svc.io(batch.expand_directory, svc.config, real, options)
    else:
        relative = str(real.relative_to(svc.config.import_root.resolve()))
        entries = [Item.of(str(raw), "import", relative, options)]
    return await _run(svc, request, entries, None, want_async)


async def _from_body(svc: Service, request: Request, want_async: bool, options: Options) -> Answer:
    """One instance in the body."""
    cfg = svc.config
    if want_async:
        return await _with_spool(svc, request, True, options, _body_entries)
    temp = svc.blobs.tmp / f"upload-{secrets.token_hex(12)}.dcm"
    answered = False  # the pipeline then renamed the file into place or removed it
    try:
        await uploads.spool_body(svc, request, temp, cfg.max_upload_bytes)
        answer = single(await _ingest_one(svc, svc.ingest_one, "file", temp, _source(request), options))
        answered = True
        return answer
    finally:
        if not answered:  # refused, or its worker died: the spooled file may be left
            await svc.io(svc.blobs.discard, temp)


async def _from_image(svc: Service, request: Request, want_async: bool, options: Options) -> Answer:
    """A JPEG or PNG in the body: a Secondary Capture instance made of it in a worker
    (``dicomsvc.imaging.photo``), with the query string's attributes (checked first)."""
    capture = await photos.attach(svc.db, photos.capture(request.query_params), owner_of(request))
    if want_async:
        return await _with_spool(svc, request, True, options, _image_entries(capture))
    cfg = svc.config
    temp = svc.blobs.tmp / f"upload-{secrets.token_hex(12)}.img"
    answered = False  # the pipeline then removed the image
    try:
        await uploads.spool_body(svc, request, temp, cfg.max_upload_bytes)
        answer = single(await _ingest_one(svc, svc.cpu, ingest_capture, cfg, temp, _source(request), options, capture))
        answered = True
        return answer
    finally:
        if not answered:
            await svc.io(svc.blobs.discard, temp)


def _image_entries(capture: dict):
    async def entries(svc: Service, request: Request, folder: Path, options: Options) -> list[Entry]:
        target = folder / "body.img"
        await uploads.spool_body(svc, request, target, svc.config.max_upload_bytes, seal=True)
        return [dataclasses.replace(Item.of(_source(request), "spooled", str(target), options), capture=capture)]

    return entries


async def _ingest_one(svc: Service, run, *args) -> Ingested:
    """``run(*args)`` (``svc.ingest_one``, ``svc.cpu``), a failed ingest counted."""
    try:
        return await run(*args)
    except DicomSvcError:
        metrics.ingested("failed")
        raise


def _source(request: Request) -> str:
    """What the upload is called: Content-Disposition's filename, if the client sent one."""
    _, options = parse_options_header(request.headers.get("content-disposition", ""))
    return options.get(b"filename", b"upload").decode("utf-8", "replace")


async def _with_spool(svc: Service, request: Request, want_async: bool, options: Options, entries_of) -> Answer:
    """Spool the upload to a folder of its own, expand it into entries, run them."""
    folder = await svc.io(new_spool, svc.config.spool_dir)
    handed_over = False
    try:
        entries = await entries_of(svc, request, folder, options)
        answer = await _run(svc, request, entries, folder, want_async)
        handed_over = answer.status == 202
        return answer
    finally:
        if not handed_over:
            await svc.io(remove_spool, folder)


async def _body_entries(svc: Service, request: Request, folder: Path, options: Options) -> list[Entry]:
    target = folder / "body.dcm"
    await uploads.spool_body(svc, request, target, svc.config.max_upload_bytes, seal=True)
    return [Item.of(_source(request), "spooled", str(target), options)]


async def _zip_entries(svc: Service, request: Request, folder: Path, options: Options) -> list[Entry]:
    target = folder / "upload.zip"
    await uploads.spool_body(svc, request, target, svc.config.max_upload_bytes, seal=True)
    return await svc.io(batch.expand_zip, svc.config, target, "", options)


async def _form_entries(svc: Service, request: Request, folder: Path, options: Options) -> list[Entry]:
    cfg = svc.config
    parts = await uploads.spool_multipart(svc, request, folder, cfg.max_upload_bytes, cfg.max_archive_files)
    fields = {p.name: p.value for p in parts if p.value is not None}
    options = Options.from_request(request.query_params, fields, user=options.user)
    files = [p for p in parts if p.path is not None]
    if not files:
        raise BadRequest("no file parts: send each file as a part named 'file'")
    entries: list[Entry] = []
    capture, images = None, 0  # the photos' attributes, checked once the form has an image
    for number, part in enumerate(files, 1):
        name = part.filename or f"part {number}"
        head = await svc.io(_head, part.path, svc.blobs.keyring)
        if part.content_type in ZIP_TYPES or is_zip(head):
            entries += await svc.io(batch.expand_zip, cfg, part.path, name, options)
        elif part.content_type in photos.IMAGE_TYPES or photos.image_kind(head):
            if capture is None:
                every = {p.name: [q.value for q in parts if q.name == p.name and q.value is not None] for p in parts}
                capture = await photos.attach(svc.db, photos.capture(every, request.query_params), owner_of(request))
            images += 1
            item = Item.of(name, "spooled", str(part.path), options)
            entries.append(dataclasses.replace(item, capture=photos.numbered(capture, images)))
        else:
            entries.append(Item.of(name, "spooled", str(part.path), options))
    return entries


def _head(path: Path, keyring) -> bytes:
    """A spooled part's first bytes: a ZIP's or an image's signature."""
    with open_spooled(path, keyring) as fh:
        return fh.read(8)


async def _run(svc: Service, request: Request, entries: list[Entry], spool: Path | None, want_async: bool) -> Answer:
    if want_async or len(entries) > svc.config.sync_limit:
        job_id = await jobs.submit(svc, entries, spool, user_of(request))
        audit.note(job=job_id)  # its files are recorded as the job ingests them
        status_url = f"{base_url(request)}/jobs/{job_id}"  # absolute (RFC 9110 §10.2.2 allows relative; clients prefer this)
        return Answer(202, {"job": job_id, "status_url": status_url}, {"Location": status_url})
    results = await batch.run_entries(svc, entries)
    audit.note_results(results)
    metrics.count_results(results)
    return Answer(200, batch.summarize(results))
