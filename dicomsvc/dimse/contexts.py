"""Presentation contexts (PS3.8 §9.3.2.2) for sending stored instances, shared by the SCP's
C-GET/C-MOVE sub-operations (``dicomsvc.dimse.scp``) and the Storage SCU (``dicomsvc.dimse.scu``),
and the transfer syntaxes we store.

Light at import (the server's ``dicomsvc.sending`` asks ``needs_decompression``): pynetdicom and
pydicom are imported by the functions that use them, in the I/O threads that send.
"""

from pathlib import Path

# Transfer syntaxes accepted for storage: the native ones and every compressed one whose
# decoder is installed (dicomsvc.retrieve.decodable; tests/test_dimse.py checks each).
NATIVE = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2")
STORABLE = NATIVE + (
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, First-Order Prediction (Process 14 SV1)
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless Only
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE Lossless
)
UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
MAX_CONTEXTS = 128  # presentation contexts one A-ASSOCIATE-RQ may propose (PS3.8 §9.3.2.2: odd IDs 1-255)


def contexts_for(rows: list[dict]) -> list:
    """Presentation contexts for sending ``rows`` (PS3.8 §9.3.2.2): per SOP class, the stored
    transfer syntaxes and the uncompressed ones (at most 128 contexts, PS3.8 §9.3.2.2)."""
    from pynetdicom import build_context

    syntaxes: dict[str, list[str]] = {}
    for row in rows:
        found = syntaxes.setdefault(row["sop_class_uid"] or "", [])
        ts = row.get("transfer_syntax_uid")
        if ts and ts not in found:
            found.append(ts)
    contexts = []
    for sop_class, stored in syntaxes.items():
        if not sop_class:
            continue
        contexts.append(build_context(sop_class, list(dict.fromkeys([*stored, *UNCOMPRESSED]))))
    return contexts[:MAX_CONTEXTS]


def pairs(contexts) -> set[tuple[str, str]]:
    """(abstract syntax, transfer syntax) of accepted presentation contexts."""
    return {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in contexts if cx.transfer_syntax}


def needs_decompression(row: dict, accepted: set[tuple[str, str]] | None) -> bool:
    """Whether a compressed instance must go decompressed: its own (SOP class, transfer syntax)
    was not accepted, an uncompressed one was."""
    sop, syntax = row.get("sop_class_uid") or "", row.get("transfer_syntax_uid") or ""
    return (
        accepted is not None
        and syntax not in NATIVE
        and (sop, syntax) not in accepted
        and any((sop, ts) in accepted for ts in UNCOMPRESSED)
    )


def no_delay(assoc) -> None:
    """TCP_NODELAY on an association's socket (RFC 1122 §4.2.3.4: Nagle's algorithm off). A data
    set goes as a run of P-DATA-TF PDUs (PS3.8 §9.3.5) capped by the peer's Maximum Length (Orthanc
    advertises 16 KiB), each a send, and Nagle may hold a short segment until what went before is
    ACKed (a delayed ACK: up to 40 ms). pynetdicom into Orthanc, 40 CTs of 0.5 MB on loopback:
    12 instances/s with Nagle, 16 without (README Benchmarks)."""
    import socket

    raw = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    if raw is not None:
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # closed meanwhile: nothing to tune
            pass


def read_stored(source):
    """A stored blob (``BlobStore.stored``: a plain path, or sealed / remote) as a pydicom data set."""
    from pydicom import dcmread

    if isinstance(source, (str, Path)):
        return dcmread(source)
    with source.open_binary() as plain:
        return dcmread(plain)
