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
from dataclasses import dataclass, field

from pynetdicom import AE, _config, evt

from .contexts import contexts_for, pairs, read_stored

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
    results: list[int] = []  # the A-ASSOCIATE-RJ's Result, when it is one

    def on_acse(event) -> None:
        result = getattr(event.primitive, "result", None)
        if isinstance(result, int):
            results.append(result)

    assoc = ae.associate(host, port, ae_title=called_ae, evt_handlers=[(evt.EVT_ACSE_RECV, on_acse)])
    link = Link(ae, assoc, getattr(getattr(assoc.dul, "socket", None), "socket", None))
    if assoc.is_established:
        link.accepted = pairs(assoc.accepted_contexts)
        if not link.accepted:
            link.error, link.transient = "no presentation context accepted", False
        return link
    if assoc.is_rejected:
        permanent = REJECTED_PERMANENT in results
        link.error = "association rejected" + (" (permanent)" if permanent else " (transient)")
        link.transient = not permanent
    elif assoc.is_aborted:
        link.error = "association aborted"
    else:
        link.error = "no association (timed out)"
    close(link)
    return link


def store(link: Link, source) -> tuple[int | None, str | None, bool]:
    """C-STORE one instance: ``source`` a file path or ``BlobStore.stored``'s reader. (status,
    None, False) when the destination answered; else (None, why, transient): no answer (the
    association gone or timed out: transient) or not offered (no accepted presentation context,
    unreadable here: not)."""
    assoc = link.assoc
    if assoc is None or not assoc.is_established:
        return None, "association aborted", True
    try:
        ds = read_stored(source)
    except Exception as exc:  # damaged or gone: this instance fails, the association goes on
        return None, f"unreadable here ({type(exc).__name__})", False
    try:
        status = assoc.send_c_store(ds)
    except ValueError:  # pynetdicom: no accepted presentation context for it
        return None, "no presentation context accepted", False
    except (AttributeError, RuntimeError) as exc:
        return None, f"not sent ({type(exc).__name__})", not assoc.is_established
    if "Status" not in status:
        return None, "no C-STORE response" if assoc.is_established else "association aborted", True
    return int(status.Status), None, False


def close(link: Link) -> None:
    """Release the association (A-RELEASE, PS3.8 §7.2) and free its socket and threads."""
    try:
        if link.assoc is not None and link.assoc.is_established:
            link.assoc.release()
    finally:
        if link.ae is not None:
            link.ae.shutdown()
        if link.raw is not None:
            link.raw.close()
