"""Sending stored instances to a configured destination (issue 14 "Send and forward").

``deliver`` sends a batch to one destination and answers one ``Outcome`` per instance; the send
jobs (``POST /dicom/send``) and the forwarding queue call it, and retry what failed transiently.

- ``dimse``: one association as a Storage SCU (PS3.4 Annex B) with our AE title
  (DICOMSVC_AE_TITLE), proposing for each SOP class of the batch its stored transfer syntaxes
  and the uncompressed ones (``dimse.contexts``, as C-MOVE does); a compressed instance whose
  syntax the destination did not accept goes decompressed to Explicit VR Little Endian. C-STORE
  statuses (PS3.4 B.2.3, PS3.7 Annex C): 0x0000 success and the warnings 0xB000 (coercion),
  0xB007 (data set does not match SOP class), 0xB006 (elements discarded) -- any 0xBxxx or
  0x0001 -- are sent; 0xA7xx (refused: out of resources) is transient; anything else failed.
  pynetdicom is blocking: each step runs in an I/O thread (``dimse.scu``).
- ``stowrs``: one STOW-RS request (PS3.18 §10.5) per batch -- ``POST {url}/studies``,
  ``multipart/related; type="application/dicom"`` -- with the bearer token when configured,
  its body streamed from the stored blobs a MiB at a time (a batch past DICOMSVC_SEND_BATCH_BYTES
  goes in several requests). The answer (PS3.18 §10.5.3, application/dicom+json) lists each
  instance in (0008,1199) Referenced SOP Sequence (stored; with (0008,1196) Warning Reason:
  stored with a warning) or (0008,1198) Failed SOP Sequence with (0008,1197) Failure Reason.
  HTTP 200 / 202 (warnings, or some failed) / 409 (failed) are read per instance; 408, 429,
  5xx and no answer are transient; another 4xx fails the batch.
- ``anonymize``: what leaves is a copy de-identified by our anonymizer from the stored original
  (``sendfiles.anonymized_copy`` in a worker); UIDs derive from the service's persistent secret,
  so a study sent twice is one study at the destination. An instance stored anonymized goes as is.

Sending the same SOP instance again is harmless: a destination that has it keeps one (C-STORE
and STOW-RS of a stored instance are idempotent in practice: Orthanc, dcm4chee and DICOMweb
servers replace or keep it), so a batch resent after a crash duplicates nothing.
Outcomes name statuses and reasons, never a UID or a patient's data; so do the logs.
"""

import asyncio
import contextlib
import dataclasses
import http.client
import json
import logging
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from . import metrics, tasks
from .dimse.contexts import needs_decompression
from .errors import DicomSvcError
from .netconfig import Destination
from .service import Service
from .storage import sending as rows_of

log = logging.getLogger("dicomsvc.sending")

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"  # what a decompressed copy is in (PS3.5 §A.2)
READ = 1 << 20  # bytes read from a stored blob at a time while a STOW-RS body streams
MAX_ANSWER = 16 * 1024**2  # the most of a STOW-RS answer read (one item per instance: a few MB for thousands)
# PS3.18 §10.5.3 / PS3.3 C.12.1.1.2 tags of the STOW-RS answer
REFERENCED_SOP_SEQUENCE, FAILED_SOP_SEQUENCE = "00081199", "00081198"
REFERENCED_SOP_INSTANCE_UID, FAILURE_REASON, WARNING_REASON = "00081155", "00081197", "00081196"


@dataclasses.dataclass(frozen=True)
class Outcome:
    id: str  # our instance id
    status: str  # "sent" | "failed"
    transient: bool  # failed for a reason worth retrying (unreachable, timeout, out of resources...)
    detail: str | None  # a short reason, never patient data: "C-STORE status 0xA700", "HTTP 503"
    sent_uid: str | None = None  # SOP Instance UID as sent (the anonymized one when anonymized)


@dataclasses.dataclass
class _Ready:
    """An instance about to go: its row, the file to send when not the stored blob (an
    anonymized or decompressed copy, removed after), the SOP Instance UID it goes with."""

    index: int
    id: str
    row: dict
    uid: str
    copy: Path | None = None
    size: int | None = None


def c_store_result(code: int) -> tuple[bool, bool, str | None]:
    """(sent, transient, detail) of a C-STORE response status (PS3.4 B.2.3, PS3.7 Annex C)."""
    if code == 0x0000:
        return True, False, None
    if code == 0x0001 or 0xB000 <= code <= 0xBFFF:  # warnings: stored (coerced, discarded elements...)
        return True, False, f"C-STORE warning 0x{code:04X}"
    if 0xA700 <= code <= 0xA7FF:  # refused: out of resources -- try again later
        return False, True, f"C-STORE status 0x{code:04X}"
    return False, False, f"C-STORE status 0x{code:04X}"


def http_transient(status: int) -> bool:
    """Whether an HTTP failure status is worth retrying: timeout, too many requests, server errors."""
    return status in (408, 429) or status >= 500


def stow_results(status: int, body: bytes, uids: Sequence[str]) -> dict[str, tuple[bool, bool, str | None]]:
    """uid -> (sent, transient, detail) for the instances of one STOW-RS request, from its HTTP
    ``status`` and answer ``body`` (PS3.18 §10.5.3, DICOM JSON: PS3.18 Annex F)."""
    if http_transient(status):
        return {uid: (False, True, f"HTTP {status}") for uid in uids}
    answer = _json_dataset(body)
    referenced = _sequence_uids(answer, REFERENCED_SOP_SEQUENCE, WARNING_REASON)
    failed = _sequence_uids(answer, FAILED_SOP_SEQUENCE, FAILURE_REASON)
    listed = answer is not None and (REFERENCED_SOP_SEQUENCE in answer or FAILED_SOP_SEQUENCE in answer)
    results = {}
    for uid in uids:
        if uid in failed:
            reason = failed[uid]
            transient = reason is not None and 0xA700 <= reason <= 0xA7FF
            results[uid] = (False, transient, f"STOW-RS failure reason 0x{reason:04X}" if reason is not None else "STOW-RS failed")
        elif uid in referenced:
            warning = referenced[uid]
            results[uid] = (True, False, f"STOW-RS warning 0x{warning:04X}" if warning is not None else None)
        elif status == 200 and not listed:  # a 200 with no list: all stored (PS3.18 §10.5.3.1)
            results[uid] = (True, False, None)
        elif 200 <= status < 300:
            results[uid] = (False, False, "not in the STOW-RS answer")
        else:
            results[uid] = (False, False, f"HTTP {status}")
    return results


def _json_dataset(body: bytes) -> dict | None:
    try:
        answer = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(answer, list) and len(answer) == 1:  # some servers answer an array of one data set
        answer = answer[0]
    return answer if isinstance(answer, dict) else None


def _sequence_uids(answer: dict | None, sequence: str, reason_tag: str) -> dict[str, int | None]:
    """uid -> the reason code (US) of each item of a sequence of the STOW-RS answer."""
    found: dict[str, int | None] = {}
    items = ((answer or {}).get(sequence) or {}).get("Value") or []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        uid = _first(item, REFERENCED_SOP_INSTANCE_UID)
        if isinstance(uid, str):
            reason = _first(item, reason_tag)
            found[uid] = reason if isinstance(reason, int) else None
    return found


def _first(item: dict, tag: str):
    values = (item.get(tag) or {}).get("Value") if isinstance(item.get(tag), dict) else None
    return values[0] if isinstance(values, list) and values else None


async def deliver(svc: Service, destination: Destination, ids: Sequence[str], anonymize: bool) -> list["Outcome"]:
    """Send these stored instances to the destination: one association (dimse) or one STOW-RS
    request (stowrs, multipart/related; type="application/dicom", PS3.18 §10.5) per call; one
    Outcome per id, in order. Never raises for a destination problem (every id gets a failed
    Outcome with transient=True); an id no longer stored is failed, transient=False."""
    rows = await rows_of.sending_rows(svc.db, ids)
    outcomes: dict[int, Outcome] = {}
    ready: list[_Ready] = []
    for index, instance_id in enumerate(ids):
        row = rows.get(instance_id)
        if row is None:
            outcomes[index] = Outcome(instance_id, "failed", False, "not stored (deleted)")
        else:
            ready.append(_Ready(index, instance_id, row, row["sop_instance_uid"]))
    try:
        if anonymize:
            ready = await _anonymized(svc, ready, outcomes)
        if ready:
            send = _send_dimse if destination.type == "dimse" else _send_stowrs
            try:
                results = await send(svc, destination, ready)
            except Exception as exc:  # not the destination's doing (a bug, the blob store): retried, never raised
                log.error("sending to %s failed: %s", destination.name, type(exc).__name__)
                results = [(False, True, f"not sent ({type(exc).__name__})")] * len(ready)
            for item, (sent, transient, detail) in zip(ready, results):
                outcomes[item.index] = Outcome(item.id, "sent" if sent else "failed", transient and not sent, detail,
                                               item.uid if sent else None)  # fmt: skip
    finally:
        copies = [item.copy for item in ready if item.copy is not None]
        if copies:
            with contextlib.suppress(Exception):
                await asyncio.shield(svc.io(_remove, copies))
    answer = [outcomes[i] for i in range(len(ids))]
    counts = {"sent": 0, "failed": 0, "transient": 0}
    for o in answer:
        counts["sent" if o.status == "sent" else "transient" if o.transient else "failed"] += 1
    for kind, n in counts.items():
        if n:
            metrics.sent(destination.type, kind, n)
    return answer


async def _anonymized(svc: Service, ready: list[_Ready], outcomes: dict[int, Outcome]) -> list[_Ready]:
    """The instances with their anonymized copies made (in workers, all at once: the pool
    bounds it); one that cannot be made fails (transient when the worker was only busy)."""
    wanted = [item for item in ready if not item.row["anonymized"]]
    made = await asyncio.gather(*(svc.cpu(tasks.anonymized_copy, svc.config, item.row["dcm_blob"]) for item in wanted),
                                return_exceptions=True)  # fmt: skip
    if any(isinstance(result, asyncio.CancelledError) for result in made):  # stopping: no copy left behind
        await asyncio.shield(svc.io(_remove, [Path(result[0]) for result in made if isinstance(result, tuple)]))
        raise asyncio.CancelledError
    failed: set[int] = set()
    for item, result in zip(wanted, made):
        if isinstance(result, BaseException):
            if isinstance(result, DicomSvcError):
                detail, transient = f"not anonymized ({result.code})", result.status == 503
            else:
                detail, transient = f"not anonymized ({type(result).__name__})", True
            outcomes[item.index] = Outcome(item.id, "failed", transient, detail)
            failed.add(item.index)
        else:
            path, uid, size = result
            item.copy, item.uid, item.size = Path(path), uid, size
    return [item for item in ready if item.index not in failed]


def _remove(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()


# DIMSE -------------------------------------------------------------------------------------------


async def _send_dimse(svc: Service, d: Destination, ready: list[_Ready]) -> list[tuple[bool, bool, str | None]]:
    """One association, a C-STORE per instance, in order."""
    cfg = svc.config
    timeouts = (cfg.send_timeout, cfg.dimse_acse_timeout, cfg.dimse_timeout, cfg.dimse_network_timeout)
    associating = asyncio.ensure_future(
        svc.io(tasks.scu_associate, cfg.ae_title, d.ae_title, d.host, d.port, [i.row for i in ready], timeouts)
    )
    try:
        link = await asyncio.shield(associating)
    except asyncio.CancelledError:  # the association is made all the same, in its thread: released then
        associating.add_done_callback(lambda done: _close_later(svc, done))
        raise
    if link.error is not None:
        log.info("sending to %s: %s", d.name, link.error)
        return [(False, link.transient, link.error)] * len(ready)
    results = []
    try:
        for item in ready:
            source = item.copy if item.copy is not None else svc.blobs.stored(item.row["dcm_blob"])
            syntax = item.row["transfer_syntax_uid"] or ""  # an anonymized copy keeps it
            if item.copy is None and needs_decompression(item.row, link.accepted):
                try:
                    item.copy = source = Path(await svc.cpu(tasks.write_explicit_le, svc.config, item.row["dcm_blob"]))
                    syntax = EXPLICIT_VR_LITTLE_ENDIAN
                except DicomSvcError as exc:
                    results.append((False, exc.status == 503, f"not decompressed ({exc.code})"))
                    continue
            code, why, transient = await svc.io(tasks.scu_store, link, source, item.row["sop_class_uid"] or "", syntax)
            results.append(c_store_result(code) if code is not None else (False, transient, why))
    finally:
        with contextlib.suppress(Exception):
            await asyncio.shield(svc.io(tasks.scu_close, link))
    return results


def _close_later(svc: Service, done: asyncio.Future) -> None:
    if not done.cancelled() and done.exception() is None:
        svc.io_pool.submit(tasks.scu_close, done.result())


# STOW-RS -----------------------------------------------------------------------------------------


async def _send_stowrs(svc: Service, d: Destination, ready: list[_Ready]) -> list[tuple[bool, bool, str | None]]:
    """One STOW-RS request per group of at most DICOMSVC_SEND_BATCH_BYTES (at least one instance)."""
    limit = svc.config.send_batch_bytes
    groups: list[list[_Ready]] = [[]]
    total = 0
    for item in ready:
        size = item.size if item.size is not None else item.row["dcm_bytes"] or 0
        if groups[-1] and total + size > limit:
            groups.append([])
            total = 0
        groups[-1].append(item)
        total += size
    found: dict[int, tuple[bool, bool, str | None]] = {}
    for group in groups:
        sources = [item.copy if item.copy is not None else svc.blobs.stored(item.row["dcm_blob"]) for item in group]
        results = await svc.io(stow, d.url, d.token, sources, [item.uid for item in group], svc.config.send_timeout)
        found |= {item.index: result for item, result in zip(group, results)}
    return [found[item.index] for item in ready]


def stow(url: str, token: str | None, sources: list, uids: list[str], timeout: float) -> list[tuple[bool, bool, str | None]]:
    """One STOW-RS request (blocking; in an I/O thread): (sent, transient, detail) per source.

    The body is streamed with its Content-Length computed first (a server need not take a
    chunked request); a source that cannot be read is left out of it and fails on its own."""
    from .dicom.parse import open_source, source_size  # loads pydicom: here, on first use only

    results: list[tuple[bool, bool, str | None] | None] = [None] * len(sources)
    parts = []
    for i, source in enumerate(sources):
        try:
            parts.append((i, source, source_size(source)))
        except (OSError, ValueError) as exc:
            results[i] = (False, False, f"unreadable here ({type(exc).__name__})")
    if not parts:
        return results  # type: ignore[return-value]
    boundary = secrets.token_hex(16)
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    tail = f"--{boundary}--\r\n".encode()
    length = sum(len(head) + size + 2 for _, _, size in parts) + len(tail)

    def body() -> Iterator[bytes]:
        for _, source, size in parts:
            yield head
            left = size
            with open_source(source) as plain:
                while left > 0 and (chunk := plain.read(min(READ, left))):
                    left -= len(chunk)
                    yield chunk
            if left:  # shorter than it was: the request can no longer be right
                raise OSError("a stored file changed while it was sent")
            yield b"\r\n"
        yield tail

    split = urlsplit(url)
    connection_type = http.client.HTTPSConnection if split.scheme == "https" else http.client.HTTPConnection
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Content-Length": str(length),
        "Accept": "application/dicom+json",
    }
    if token:
        headers["Authorization"] = f"Bearer {token}"
    connection = connection_type(split.netloc, timeout=timeout)
    try:
        connection.request("POST", f"{split.path.rstrip('/')}/studies", body=body(), headers=headers)
        answer = connection.getresponse()
        status, text = answer.status, answer.read(MAX_ANSWER)
    except (OSError, http.client.HTTPException) as exc:
        reason = "connection refused" if isinstance(exc, ConnectionRefusedError) else f"no answer ({type(exc).__name__})"
        for i, _, _ in parts:
            results[i] = (False, True, reason)
        return results  # type: ignore[return-value]
    finally:
        connection.close()
    found = stow_results(status, text, [uids[i] for i, _, _ in parts])
    for i, _, _ in parts:
        results[i] = found[uids[i]]
    return results  # type: ignore[return-value]
