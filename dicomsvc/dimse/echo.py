"""C-ECHO to a configured DIMSE destination (PS3.7 §9.1.5): is it there, and does it accept us?

Run in an I/O thread (``dicomsvc.tasks.dimse_echo``, named, not imported: HTTP code never
imports pynetdicom), for ``GET /destinations``.
"""

import socket
import time

from pynetdicom import AE
from pynetdicom.sop_class import Verification


def echo(our_ae: str, called_ae: str, host: str, port: int, timeout: float) -> dict:
    """{"reachable", "status", "detail", "ms"} of one association and C-ECHO, within ``timeout``
    seconds for the connection, the negotiation and the answer each."""
    ae = AE(ae_title=our_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    ae.add_requested_context(Verification)
    started = time.monotonic()
    try:  # first a plain connection: pynetdicom leaks its socket when connecting fails
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return _answer(False, None, f"no connection ({type(exc).__name__})", started)
    assoc = ae.associate(host, port, ae_title=called_ae)
    # pynetdicom skips closing its socket when shutdown() fails (never connected, or the peer
    # closed first): closed here whatever happens
    raw = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    try:
        if assoc.is_rejected:
            return _answer(False, None, "association rejected", started)
        if not assoc.is_established:
            return _answer(False, None, "no association (refused, unreachable or timed out)", started)
        status = assoc.send_c_echo()
        code = int(status.Status) if "Status" in status else None
        if code is None:
            return _answer(False, None, "no C-ECHO answer", started)
        return _answer(code == 0x0000, f"0x{code:04X}", "C-ECHO success" if code == 0 else "C-ECHO failed", started)
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
        if raw is not None:
            raw.close()


def _answer(reachable: bool, status: str | None, detail: str, started: float) -> dict:
    return {"reachable": reachable, "check": "C-ECHO", "status": status, "detail": detail,
            "ms": round(1000 * (time.monotonic() - started), 1)}  # fmt: skip
