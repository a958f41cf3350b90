"""The SCP: Verification, Storage, and Query/Retrieve (C-FIND, C-GET, C-MOVE) with pynetdicom.

pynetdicom runs each association in threads of its own; its handlers, here, run there and
never touch the event loop's objects directly: work for the app (an ingest, an index query)
is a coroutine handed to the loop with ``asyncio.run_coroutine_threadsafe``, which the
association's thread waits for. So an association never blocks the HTTP event loop, and the
pipeline is the uploads' own: ``svc.cpu`` runs ``ingest_file`` in a worker process.

- Association (PS3.8 §7.1): only peers of DICOMSVC_NETWORK_CONFIG (calling AE title, and
  host when given) are accepted; any other is rejected with A-ASSOCIATE-RJ, rejected-permanent,
  service user, calling AE title not recognized (PS3.8 §9.3.4, Table 9-21). Past
  DICOMSVC_DIMSE_MAX_ASSOCIATIONS, pynetdicom rejects transiently (local limit exceeded).
- C-STORE (PS3.4 Annex B): every storage SOP class, in the transfer syntaxes we can decode
  (``STORABLE``). The data set is received into a temporary file (pynetdicom's
  STORE_RECV_CHUNKED_DATASET: memory stays flat in its size), moved to blob temp space and
  ingested with the peer's options (its owner, anonymization); the response is success only
  after the durable commit (the HTTP 201's meaning). Duplicates are success; errors map to
  PS3.4 B.2.3 statuses (``STATUS``). A peer that drops mid-transfer leaves no data: its
  partial temporary file is removed, and nothing was handed to the pipeline.
- C-FIND/C-GET/C-MOVE (PS3.4 Annex C), Patient and Study Root: ``dicomsvc.dimse.query``
  over the index QIDO-RS searches; C-GET/C-MOVE read the stored blobs through the blob
  store's reader (decrypting when encryption at rest is on).

pynetdicom's own logging is silenced (it would log identifiers and UIDs: patient data);
what happens is logged here by AE title, address, counts and error codes.
"""

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import shutil
import weakref
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from .. import audit, metrics, tasks
from ..errors import BadRequest, Busy, DicomSvcError, InsufficientStorage, SopMismatch, TooLarge
from ..netconfig import Peer
from ..options import Options
from ..service import Service, StartupError
from ..storage import space, studies
from . import query
from .contexts import STORABLE, UNCOMPRESSED, needs_decompression, read_stored
from .contexts import contexts_for as _contexts_for
from .contexts import no_delay as _no_delay
from .contexts import pairs as _pairs

log = logging.getLogger("dicomsvc.dimse")

QR_MODELS = (
    PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelMove,
)  # fmt: skip

# PS3.4 Table B.2-1 (C-STORE) and C.4.1-1/C.4.2-1/C.4.3-1 (Q/R) statuses
SUCCESS = 0x0000
COERCED = 0xB000  # warning: coercion of data elements (we anonymized it, or read an element as UN)
ELEMENTS_DISCARDED = 0xB006  # warning: elements discarded
NOT_MATCHING_SOP_CLASS = 0xB007  # warning: data set does not match SOP class
OUT_OF_RESOURCES = 0xA700  # refused: out of resources (too large, disk full, busy)
NOT_SOP_CLASS = 0xA900  # error: data set does not match SOP class / identifier does not match SOP class
CANNOT_UNDERSTAND = 0xC000  # error: cannot understand
PROCESSING_FAILURE = 0x0110  # failure: processing failure (PS3.7 C.4.2)
TOO_MANY = 0xA701  # refused: out of resources, unable to calculate number of matches
MOVE_DESTINATION_UNKNOWN = 0xA801
PENDING = 0xFF00
CANCELLED = 0xFE00
# A-ASSOCIATE-RJ: rejected-permanent, DICOM UL service-user, calling AE title not recognized (PS3.8 Table 9-21)
REJECT_UNKNOWN_CALLING_AE = (0x01, 0x01, 0x03)


# The longest PDU each of our AEs reads (PDU length field, PS3.8 §9.3.1): pynetdicom reads a PDU
# whole into memory, however long its header says it is -- an A-ASSOCIATE-RQ from anyone declaring
# 4 GiB, then streaming, would be held in memory before the allow-list is even consulted.
_PDU_LIMITS: "weakref.WeakKeyDictionary[AE, int]" = weakref.WeakKeyDictionary()
ASSOCIATE_RQ_MAX = 1 << 20  # an A-ASSOCIATE-RQ of 128 contexts with every transfer syntax is ~100 KB


def _bounded_recv(recv):
    def recv_at_most(self: AssociationSocket, nr_bytes: int) -> bytearray:
        assoc = self._assoc
        limit = _PDU_LIMITS.get(assoc.ae) if assoc is not None and assoc.is_acceptor else None
        if limit is not None and nr_bytes > limit:  # a PDU longer than we said we take: the connection ends
            log.warning("a PDU of %d bytes from %s refused (longer than the maximum length)", nr_bytes, assoc.requestor.address)
            raise OSError("PDU longer than the maximum length")
        return recv(self, nr_bytes)

    recv_at_most.bounded = True
    return recv_at_most


if not getattr(AssociationSocket.recv, "bounded", False):
    AssociationSocket.recv = _bounded_recv(AssociationSocket.recv)


def store_status(exc: DicomSvcError) -> int:
    """Our error as a C-STORE failure status (PS3.4 B.2.3)."""
    if isinstance(exc, SopMismatch):
        return NOT_SOP_CLASS
    if isinstance(exc, (TooLarge, InsufficientStorage, Busy)):
        return OUT_OF_RESOURCES
    return CANNOT_UNDERSTAND


def warning_status(warnings: list[str], coerced: bool) -> int | Dataset:
    """A stored instance's C-STORE status (PS3.4 Table B.2-1): Success, or the warning its ingest
    warnings amount to, the first of its warnings as the (0000,0902) Error Comment (our warnings
    name tags and standards, never values). One status only, the most telling first:
    0xB007 (data set does not match SOP class: an invalid UID, pixel data not matching the Image
    Pixel module), 0xB006 (elements discarded: a stray item or delimitation tag, a deflate stream's
    trailing part), 0xB000 (coercion of data elements: an element without a valid VR read as UN,
    or the data set anonymized on arrival)."""
    discarded = [w for w in warnings if "was ignored" in w or "ends before" in w]
    read_as_un = [w for w in warnings if "read as UN" in w]
    other = [w for w in warnings if w not in discarded and w not in read_as_un]
    if other:
        return status_with_comment(NOT_MATCHING_SOP_CLASS, other[0])
    if discarded:
        return status_with_comment(ELEMENTS_DISCARDED, discarded[0])
    if read_as_un:
        return status_with_comment(COERCED, read_as_un[0])
    return COERCED if coerced else SUCCESS


def status_with_comment(status: int, comment: str) -> Dataset:
    """A status with (0000,0902) Error Comment: LO, at most 64 characters (PS3.7 C.4), never
    patient data (our error details name no values)."""
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment.encode("ascii", "replace").decode()[:64]
    return ds


def _requestor(assoc) -> tuple[str, str]:
    """(calling AE title, peer address) of an association: both are logged, neither is PHI."""
    return str(assoc.requestor.ae_title).strip(), str(assoc.requestor.address)


class Scp:
    def __init__(self, svc: Service):
        self.svc = svc
        self.config = svc.config
        self.loop = asyncio.get_running_loop()
        self.inflight: set[asyncio.Task] = set()  # app work started for an association's thread
        self.peers: "weakref.WeakKeyDictionary[object, Peer]" = weakref.WeakKeyDictionary()  # association -> peer
        self.server = None
        _config.STORE_RECV_CHUNKED_DATASET = True  # received data sets go to a file, not memory
        _config.LOG_REQUEST_IDENTIFIERS = False  # identifiers are patient data
        _config.LOG_RESPONSE_IDENTIFIERS = False
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # its messages quote UIDs and identifiers
        self.ae = self._application_entity()

    # Life ---------------------------------------------------------------------------------

    def _application_entity(self) -> AE:
        cfg = self.config
        ae = AE(ae_title=cfg.ae_title)
        ae.maximum_associations = cfg.dimse_max_associations
        ae.maximum_pdu_size = cfg.dimse_max_pdu
        ae.acse_timeout = cfg.dimse_acse_timeout
        ae.dimse_timeout = cfg.dimse_timeout
        ae.network_timeout = cfg.dimse_network_timeout
        _PDU_LIMITS[ae] = max(cfg.dimse_max_pdu or cfg.max_upload_bytes, ASSOCIATE_RQ_MAX)
        for cx in AllStoragePresentationContexts:
            # scu_role/scp_role: a C-GET requestor may take the SCP role for storage (PS3.4 C.4.3.1.3)
            ae.add_supported_context(cx.abstract_syntax, list(STORABLE), scu_role=True, scp_role=True)
        ae.add_supported_context(Verification, list(UNCOMPRESSED))
        for model in QR_MODELS:
            ae.add_supported_context(model, list(UNCOMPRESSED))
        return ae

    async def start(self) -> None:
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_GET, self._on_get),
            (evt.EVT_C_MOVE, self._on_move),
            (evt.EVT_DATA_RECV, self._on_data),
            (evt.EVT_ACCEPTED, lambda event: metrics.dimse_association(True)),
            (evt.EVT_REJECTED, lambda event: metrics.dimse_association(False)),
            (evt.EVT_ABORTED, self._on_dropped),
            (evt.EVT_CONN_CLOSE, self._on_dropped),
        ]
        address = (self.config.host, self.config.dimse_port)
        try:
            self.server = await asyncio.to_thread(self.ae.start_server, address, block=False, evt_handlers=handlers)
        except OSError as exc:
            raise StartupError(f"the DICOM port {self.config.dimse_port} cannot be opened ({exc.strerror})") from None
        log.info("DICOM SCP %s listening on port %d (%d peer(s) allowed)",
                 self.config.ae_title, self.config.dimse_port, len(self.config.network_config.peers))  # fmt: skip

    async def stop(self) -> None:
        """Abort the associations, close the port, then let the app work they started finish
        (an ingest under way commits or removes what it wrote; its peer gets no answer)."""
        await asyncio.to_thread(self.ae.shutdown)
        if self.inflight:
            await asyncio.wait(set(self.inflight), timeout=self.config.worker_timeout or None)
        log.info("DICOM SCP stopped")

    def _call(self, coroutine, timeout: float | None = None):
        """Run ``coroutine`` on the app's event loop and wait for its result (in an association's
        thread). RuntimeError when the loop is gone (the app is stopping)."""

        async def tracked():
            task = asyncio.current_task()
            self.inflight.add(task)
            try:
                return await coroutine
            finally:
                self.inflight.discard(task)

        try:
            future = asyncio.run_coroutine_threadsafe(tracked(), self.loop)
        except RuntimeError:
            coroutine.close()
            raise
        try:
            return future.result(timeout)
        except concurrent.futures.CancelledError:
            raise RuntimeError("the app stopped") from None

    def _peer(self, assoc) -> Peer | None:
        """The configured peer an accepted association is (found once, at its request: a host
        name is resolved then, not at each of its requests)."""
        found = self.peers.get(assoc)
        if found is None:
            ae, host = _requestor(assoc)
            found = self.config.network_config.peer(ae, host)
        return found

    def _owner(self, peer: Peer | None) -> str | None:
        """Under DICOMSVC_VISIBILITY=own a peer with a user sees what that user stored."""
        return peer.user if peer is not None and self.config.visibility == "own" else None

    # Association --------------------------------------------------------------------------

    def _on_requested(self, event) -> None:
        """A-ASSOCIATE-RQ received: the allow-list decides (PS3.8 §7.1.1)."""
        assoc = event.assoc
        calling = str(assoc.requestor.primitive.calling_ae_title).strip()
        host = str(assoc.requestor.address)
        peer = self.config.network_config.peer(calling, host)
        if peer is None:
            log.warning("DICOM association from %r at %s rejected: not a configured peer", calling, host)
            assoc.acse.send_reject(*REJECT_UNKNOWN_CALLING_AE)
            evt.trigger(assoc, evt.EVT_REJECTED, {})
            assoc.kill()
            return
        self.peers[assoc] = peer
        _no_delay(assoc)  # our responses and C-GET sub-operations go without Nagle's wait

    def _on_echo(self, event) -> int:
        metrics.dimse_request("C-ECHO", SUCCESS)
        return SUCCESS  # PS3.7 §9.1.5: C-ECHO success

    def _on_data(self, event) -> None:
        """A PDU arrived (in the association's DUL thread): a data set being received that grows
        past DICOMSVC_MAX_UPLOAD_BYTES ends the association at once, with an A-ABORT (PS3.8
        §7.3.1, service provider, reason not specified), rather than filling the disk to
        answer A700 at its end. The partial file goes with the connection (``_on_dropped``)."""
        message = getattr(getattr(event.assoc, "dimse", None), "message", None)
        partial = getattr(message, "_data_set_file", None)
        if partial is None:
            return
        try:
            size = partial.tell()
        except (OSError, ValueError):  # closed meanwhile: the data set is complete
            return
        if size <= self.config.max_upload_bytes:
            return
        log.warning("C-STORE from %s aborted: its data set is over DICOMSVC_MAX_UPLOAD_BYTES", _requestor(event.assoc)[0])
        sock = event.assoc.dul.socket
        abort = A_ABORT_RQ()
        abort.source, abort.reason_diagnostic = 0x02, 0x00
        with contextlib.suppress(Exception):
            sock.send(abort.encode())
        sock.close()

    def _on_dropped(self, event) -> None:
        """A peer that aborts or closes mid-transfer: the partly received data set's file is removed."""
        message = getattr(getattr(event.assoc, "dimse", None), "message", None)
        partial = getattr(message, "_data_set_file", None)
        if partial is not None:
            with contextlib.suppress(OSError):
                partial.close()
                os.unlink(partial.name)

    # C-STORE ------------------------------------------------------------------------------

    def _on_store(self, event):
        status = self._store(event)
        metrics.dimse_request("C-STORE", int(status.Status) if isinstance(status, Dataset) else status)
        return status

    def _store(self, event):
        assoc = event.assoc
        peer = self._peer(assoc)
        if peer is None:  # accepted, so configured: only a configuration change could do this
            return status_with_comment(CANNOT_UNDERSTAND, "calling AE not allowed")
        ae, host = _requestor(assoc)
        request = event.request
        received = Path(event.dataset_path)
        temp = self.svc.blobs.temp_path(".dcm")
        try:
            _move(received, temp)
        except OSError as exc:
            log.error("a received data set could not be moved to blob temp space (%s)", type(exc).__name__)
            return status_with_comment(OUT_OF_RESOURCES, "could not be spooled")
        options = Options(
            anonymize=peer.anonymize,
            user=peer.user,
            affected_sop=(str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID)),
        )
        try:
            return self._call(self._ingest(temp, f"dimse:{ae}@{host}", options, ae, host))
        except RuntimeError:  # the app is stopping
            with contextlib.suppress(OSError):
                temp.unlink()
            return status_with_comment(OUT_OF_RESOURCES, "the service is stopping")

    async def _ingest(self, temp: Path, source: str, options: Options, ae: str, host: str):
        svc = self.svc
        try:
            ingested = await svc.cpu(tasks.ingest_file, svc.config, temp, source, options)
        except DicomSvcError as exc:
            await svc.io(svc.blobs.discard, temp)
            metrics.ingested("failed")
            self._audit("upload", "C-STORE", None, exc.status, ae, host, options.user)
            log.info("C-STORE from %s refused: %s", ae, exc.code)
            return status_with_comment(store_status(exc), exc.detail)
        except Exception as exc:  # a full disk outside the pipeline, or a bug: never the server's end
            await svc.io(svc.blobs.discard, temp)
            metrics.ingested("failed")
            log.error("C-STORE from %s failed: %s", ae, type(exc).__name__)
            if space.is_full(exc):
                return status_with_comment(OUT_OF_RESOURCES, "insufficient storage")
            return status_with_comment(PROCESSING_FAILURE, "processing failure")
        metrics.ingested("created" if ingested.created else "duplicate")
        self._audit("upload", "C-STORE", ingested.id, 201 if ingested.created else 200, ae, host, options.user)
        return warning_status(ingested.warnings, options.anonymize or svc.config.anonymize_always)

    def _audit(self, action: str, method: str, instance: str | None, status: int, ae: str, host: str,
               user: str | None) -> None:  # fmt: skip
        """One audit record (on the loop): the calling AE and address as the client; no PHI."""
        record = audit.Record(audit.now(), user or "anonymous", "", action, method, None, instance=instance,
                              status=status, client=f"{ae}@{host}")  # fmt: skip
        audit.record(self.svc, [record])

    # C-FIND -------------------------------------------------------------------------------

    def _on_find(self, event):
        return _counted("C-FIND", self._find(event))

    def _find(self, event):
        try:
            q = query.find_query(event.identifier)
        except BadRequest as exc:
            yield status_with_comment(NOT_SOP_CLASS, exc.detail), None
            return
        peer = self._peer(event.assoc)
        try:
            rows = self._call(self._search(q, self._owner(peer)))
        except RuntimeError:
            yield status_with_comment(OUT_OF_RESOURCES, "the service is stopping"), None
            return
        except Exception as exc:
            log.error("C-FIND failed: %s", type(exc).__name__)
            yield status_with_comment(CANNOT_UNDERSTAND, "the query could not be run"), None
            return
        ae, host = _requestor(event.assoc)
        self._call_soon(self._audit, "search", "C-FIND", None, 200, ae, host, peer.user if peer else None)
        for row in rows:
            if event.is_cancelled:
                yield CANCELLED, None
                return
            yield PENDING, query.answer(row, q, self.config.ae_title)
        yield SUCCESS, None

    async def _search(self, q: query.FindQuery, owner: str | None) -> list[dict]:
        limit = self.config.dimse_max_results
        level = q.index_level
        extra = q.stored_tags()
        if q.level == "PATIENT":  # the studies, grouped: fetch more, answer at most the limit
            rows = await studies.search(self.svc.db, level, q.conditions, limit * 10, 0, owner=owner)
            return query.patients(rows)[:limit]
        return await studies.search(self.svc.db, level, q.conditions, limit, 0, extra, in_study=True, owner=owner)

    def _call_soon(self, fn, *args) -> None:
        """``fn(*args)`` on the loop, not waited for (an audit record)."""
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(fn, *args)

    # C-GET and C-MOVE ---------------------------------------------------------------------

    def _matches(self, event):
        """The stored instances a C-GET/C-MOVE identifier names: (rows, None) or (None, status)."""
        try:
            conditions = query.retrieve_conditions(event.identifier)
        except BadRequest as exc:
            return None, status_with_comment(NOT_SOP_CLASS, exc.detail)
        limit = self.config.dimse_max_retrieve
        owner = self._owner(self._peer(event.assoc))
        try:
            rows = self._call(studies.search(self.svc.db, "instance", conditions, limit + 1, 0, in_study=True, owner=owner))
        except RuntimeError:
            return None, status_with_comment(OUT_OF_RESOURCES, "the service is stopping")
        if len(rows) > limit:
            return None, status_with_comment(TOO_MANY, f"more than {limit} instances (DICOMSVC_DIMSE_MAX_RETRIEVE)")
        return rows, None

    def _read(self, row: dict, accepted: set[tuple[str, str]] | None = None) -> Dataset:
        """The stored instance as a data set, read through the blob store (decrypted if sealed).

        ``accepted``: the (SOP class, transfer syntax) pairs the sending association may use.
        A compressed instance whose own syntax is not among them, when an uncompressed one is,
        is decompressed first (``retrieve.write_explicit_le`` in a worker: a frame at a time),
        so a peer that takes only uncompressed data (dcmtk's storescp by default) still gets it."""
        if needs_decompression(row, accepted):
            temp = self._call(self.svc.cpu(tasks.write_explicit_le, self.config, row["dcm_blob"]))
            try:
                return dcmread(temp)
            finally:
                with contextlib.suppress(OSError):
                    Path(temp).unlink()
        return read_stored(self.svc.blobs.stored(row["dcm_blob"]))

    def _sub_operations(self, event, rows: list[dict], method: str, accepted: set[tuple[str, str]] | None):
        ae, host = _requestor(event.assoc)
        peer = self._peer(event.assoc)
        for row in rows:
            if event.is_cancelled:
                yield CANCELLED, None
                return
            try:
                ds = self._read(row, accepted)
            except Exception as exc:  # gone (deleted meanwhile), damaged or undecodable: this sub-operation fails
                log.warning("%s: a stored instance could not be read (%s)", method, type(exc).__name__)
                ds = _placeholder(row)
            self._call_soon(self._audit, "download", method, row["id"], 200, ae, host, peer.user if peer else None)
            yield PENDING, ds

    def _on_get(self, event):
        return _counted("C-GET", self._get(event))

    def _get(self, event):
        rows, failure = self._matches(event)
        if failure is not None:
            yield 0
            yield failure, None
            return
        yield len(rows)
        yield from self._sub_operations(event, rows, "C-GET", _pairs(event.assoc.accepted_contexts))

    def _on_move(self, event):
        return _counted("C-MOVE", self._move(event))

    def _move(self, event):
        destination = self.config.network_config.dimse_destination(str(event.move_destination or ""))
        if destination is None:  # PS3.4 C.4.2.1.4.1: Move Destination unknown
            log.warning("C-MOVE to an unknown destination refused")
            yield None, None
            return
        rows, failure = self._matches(event)
        if failure is not None:
            yield destination.host, destination.port
            yield 0
            yield failure, None
            return
        contexts = _contexts_for(rows)
        # pynetdicom associates with the destination after taking the count, before the first
        # sub-operation, passing these keywords to AE.associate: this request's own association
        # is caught as it is accepted (not guessed among the AE's: two C-MOVEs to one destination
        # each have theirs), and what it accepted decides whether compressed instances go decompressed
        sending: list = []
        accepted = (evt.EVT_ACCEPTED, lambda accept: (sending.append(accept.assoc), _no_delay(accept.assoc)))
        yield destination.host, destination.port, {"contexts": contexts, "evt_handlers": [accepted]}
        yield len(rows)
        yield from self._sub_operations(event, rows, "C-MOVE", _pairs(sending[0].accepted_contexts) if sending else None)


def _counted(service: str, answers):
    """The handler's yields passed on, the request counted by the status it ends with: a final
    (not pending) status is counted as it goes out (pynetdicom asks for nothing after it); a
    handler that runs out (C-GET/C-MOVE after their sub-operations) is a success (PS3.4
    C.4.2.3.1: sub-operation failures make pynetdicom's final response a warning)."""
    for item in answers:
        final = None
        if item == (None, None):  # C-MOVE: Move Destination unknown (pynetdicom answers A801)
            final = MOVE_DESTINATION_UNKNOWN
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], (int, Dataset)):
            final = int(item[0].Status) if isinstance(item[0], Dataset) else item[0]
            if final in (PENDING, 0xFF01):
                final = None
        if final is not None:
            metrics.dimse_request(service, final)
            yield item
            return
        yield item
    metrics.dimse_request(service, SUCCESS)


def _placeholder(row: dict) -> Dataset:
    """What a failed read yields: the instance's UIDs only, so the sub-operation fails and is
    counted (its SOP Instance UID listed in Failed SOP Instance UID List, PS3.4 C.4.3.1.3.1)."""
    ds = Dataset()
    ds.SOPClassUID = row.get("sop_class_uid") or "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = row.get("sop_instance_uid") or "2.25.0"
    return ds  # no file meta: send_c_store refuses it, the sub-operation fails


def _move(src: Path, dst: Path) -> None:
    """Move a received file into blob temp space: a rename when on one file system, else a copy."""
    try:
        os.rename(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
        with contextlib.suppress(OSError):
            src.unlink()
