"""The Storage SCU (PS3.4 Annex B, PS3.7 §9.1.1): an association to a configured ``dimse``
destination and a C-STORE per instance, for ``dicomsvc.sending``.

Blocking pynetdicom calls, each run in an I/O thread by ``sending`` (``svc.io``), one step at a
time (associate, store, release), so the event loop can prepare the next instance meanwhile (an
anonymized or decompressed copy made in a worker). Named through ``dicomsvc.tasks``, not
imported: the server loads pynetdicom only when it first sends.

Nothing here logs UIDs or identifiers: pynetdicom's own logging is silenced as in the SCP.
"""

import logging
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

from pynetdicom import AE, _config, evt
from pynetdicom.dsutils import split_dataset

from .contexts import contexts_for, no_delay, pairs, read_stored

# A-ASSOCIATE-RJ Result (PS3.8 §9.3.4, Table 9-21)
REJECTED_PERMANENT, REJECTED_TRANSIENT = 0x01, 0x02


@dataclass
class Link:
    """An association being used to send, or why there is none (``error``, ``transient``)."""

    ae: AE | None = None
    assoc: object = None
    raw: object = None  # its socket, closed whatever pynetdicom does
    error: str | None = None
    transient: bool = True
    accepted: set[tuple[str, str]] = field(default_factory=set)  # (SOP class, transfer syntax) pairs
    # held by a C-STORE under way: ``close`` waits for it (the sender's task cancelled while its
    # store runs in a thread; a release sent meanwhile broke pynetdicom's state machine: Evt9 in Sta7)
    busy: threading.Lock = field(default_factory=threading.Lock)


def associate(our_ae: str, called_ae: str, host: str, port: int, rows: list[dict], timeouts: tuple[float, float, float, float]) -> Link:
    """An association with the destination proposing contexts for ``rows`` (their SOP classes,
    each with its stored transfer syntax and the uncompressed ones); ``timeouts``: connection,
    ACSE, DIMSE and network seconds. A Link with ``error`` when there is no association."""
    _config.LOG_REQUEST_IDENTIFIERS = False  # identifiers are patient data
    _config.LOG_RESPONSE_IDENTIFIERS = False
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    connect, acse, dimse, network = timeouts
    contexts = contexts_for(rows)
    if not contexts:
        return Link(error="no SOP class to propose", transient=False)
    try:  # first a plain connection: pynetdicom leaks its socket when connecting fails
        socket.create_connection((host, port), timeout=connect).close()
    except OSError as exc:
        reason = "connection refused" if isinstance(exc, ConnectionRefusedError) else f"no connection ({type(exc).__name__})"
        return Link(error=reason)
    ae = AE(ae_title=our_ae)
    ae.connection_timeout = connect
    ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = acse, dimse, network
    ae.requested_contexts = contexts
    # the A-ASSOCIATE-RJ PDU's Result when one is read (PS3.8 §9.3.4): taken as the PDU arrives, not
    # from the ACSE, since a peer that closes right after rejecting may have pynetdicom report the
    # association aborted (its transport-closed event handled before the rejection reached the ACSE)
    results: list[int] = []

    def on_pdu(event) -> None:
        result = getattr(event.pdu, "result", None)  # only the A-ASSOCIATE-RJ PDU has one
        if isinstance(result, int):
            results.append(result)

    assoc = ae.associate(host, port, ae_title=called_ae, evt_handlers=[(evt.EVT_PDU_RECV, on_pdu)])
    link = Link(ae, assoc, getattr(getattr(assoc.dul, "socket", None), "socket", None))
    if assoc.is_established:
        no_delay(assoc)
        link.accepted = pairs(assoc.accepted_contexts)
        if not link.accepted:
            link.error, link.transient = "no presentation context accepted", False
        return link
    if assoc.is_rejected or results:
        permanent = REJECTED_PERMANENT in results
        link.error = "association rejected" + (" (permanent)" if permanent else " (transient)")
        link.transient = not permanent
    elif assoc.is_aborted:
        link.error = "association aborted"
    else:
        link.error = "no association (timed out)"
    close(link)
    return link


def store(link: Link, source, sop_class: str, syntax: str) -> tuple[int | None, str | None, bool]:
    """C-STORE one instance: ``source`` a file path or ``BlobStore.stored``'s reader, holding an
    instance of ``sop_class`` in ``syntax``. (status, None, False) when the destination answered;
    else (None, why, transient): no answer (the association gone or timed out: transient) or not
    offered (no accepted presentation context, unreadable here: not).

    A plain file whose own transfer syntax was accepted goes as it is, read a piece at a time
    (pynetdicom's STORE_SEND_CHUNKED_DATASET: neither decoded nor re-encoded); anything else is
    read as a data set and encoded in an accepted syntax (Implicit <-> Explicit VR Little Endian)."""
    assoc = link.assoc
    if assoc is None or not assoc.is_established:
        return None, "association aborted", True
    ds = _as_it_is(source, sop_class, syntax, link.accepted)
    if ds is None:
        try:
            ds = read_stored(source)
        except Exception as exc:  # damaged or gone: this instance fails, the association goes on
            return None, f"unreadable here ({type(exc).__name__})", False
    try:
        with link.busy:
            status = assoc.send_c_store(ds)
    except ValueError:  # pynetdicom: no accepted presentation context for it
        return None, "no presentation context accepted", False
    except (AttributeError, RuntimeError) as exc:
        return None, f"not sent ({type(exc).__name__})", not assoc.is_established
    if "Status" not in status:
        return None, "no C-STORE response" if assoc.is_established else "association aborted", True
    return int(status.Status), None, False


def _as_it_is(source, sop_class: str, syntax: str, accepted: set[tuple[str, str]]) -> Path | None:
    """The file to send as it is, or None: not a plain file, its syntax not accepted, or not a
    DICOM file with a meta group (PS3.10 §7.1: preamble, DICM, group 0002)."""
    if not isinstance(source, (str, Path)) or (sop_class, syntax) not in accepted:
        return None
    try:
        split_dataset(Path(source))
    except Exception:  # noqa: BLE001 -- no preamble, a damaged meta group: read as a data set instead
        return None
    _config.STORE_SEND_CHUNKED_DATASET = True  # paths are given to send_c_store only here
    return Path(source)


def close(link: Link) -> None:
    """Release the association (A-RELEASE, PS3.8 §7.2), once a C-STORE under way has had its
    answer (or timed out), and free its socket and threads."""
    try:
        with link.busy:
            if link.assoc is not None and link.assoc.is_established:
                link.assoc.release()
    finally:
        if link.ae is not None:
            link.ae.shutdown()
        if link.raw is not None:
            link.raw.close()
