"""A deterministic mutation fuzzer: damaged DICOM files through the HTTP API of a live server.

Run from the repo root:

    .venv/bin/python bench/fuzz.py [--seed 9] [--n 5000] [--clients 2] [--only I [I ...]]
                                   [--worker-memory-mib 1024] [--max-frame-mib 64]
                                   [--save DIR] [--keep] [--json out.json] [--app-dir DIR]

What it does (bounded by the mutant count and per-request timeouts; the server is
always stopped in a finally block; it talks to 127.0.0.1 only):

  1. reads a corpus of pydicom's bundled files, at least one per transfer syntax
     (Implicit/Explicit VR Little Endian, Explicit VR Big Endian, Deflated, JPEG
     baseline/extended/lossless, JPEG-LS, JPEG 2000, RLE), and walks each file's
     element structure with a small reader of its own (``walk``: PS3.10 §7.1 file
     meta, PS3.5 §7.1 data elements, §7.5 sequences and items, A.4 encapsulated
     pixel data) -- pydicom finds the files, it never makes a mutation;
  2. makes mutant ``i`` of seed ``s`` from ``random.Random(f"{s}/{i}")`` alone, the
     file and the mutation kind going round-robin (every pair is covered early):
     bit flips, truncation, corrupted element lengths, corrupted item/fragment
     lengths and delimiters, VR swaps, huge declared lengths, a wrong transfer
     syntax in the file meta, extreme pixel-module values (decoder bombs) and
     codestream headers (JPEG SOF, JPEG-LS SOF55, J2K SIZ, RLE header) claiming
     other sizes -- so ``--only i`` reproduces one mutant exactly;
  3. starts ``uvicorn --factory app:create_app`` (DICOMSVC_WORKERS=2, small limits:
     DICOMSVC_WORKER_MEMORY, DICOMSVC_MAX_FRAME_BYTES, DICOMSVC_WORKER_TIMEOUT --
     settings the service does not know are ignored by it) and sends every mutant
     as ``POST /dicom`` (application/dicom); for what was stored it asks ``GET
     /image``, ``/tags``, ``/tags?format=dicomjson``, ``/dicom/{id}/pixels``, a
     rendering (``/image?window=40,400&frame=2``, frame 1 for single-frame
     files) and then ``DELETE /dicom/{id}``;
  4. checks, per mutant: no 5xx, no request over the timeout (a hang), every 4xx
     a JSON ``{"error","detail"}`` naming no patient data of the file, the
     server alive afterwards (``/healthz``), no blob of a deleted id left; over
     the run: the peak of the summed RSS of the server's child processes (the
     workers, from /proc) under DICOMSVC_WORKER_MEMORY; at the end no orphans
     (every blob has a row, every row its blobs, nothing left in temp space:
     blobs/ against the dicom table, read-only) and no PatientName/PatientID/UID
     of the corpus in the server's log;
  5. prints a summary (mutants, status counts, failures with seed/index/file/
     mutation/route/status, peak memory, elapsed) and the figures as JSON on the
     last stdout line. Exit status 1 when any check failed.

A server that dies is a failure; the fuzzer then starts it again and goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sqlite3
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import procstat as P  # noqa: E402
import servers as S  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024

# --------------------------------------------------------------------------
# the byte-stream reader (PS3.5 §7, PS3.10 §7.1)
# --------------------------------------------------------------------------
ITEM, ITEM_DELIM, SEQ_DELIM = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD  # PS3.5 §7.5 Table 7.5-1/2/3
PIXEL_DATA = 0x7FE00010  # (7FE0,0010)
TS_TAG, GROUP_LENGTH = 0x00020010, 0x00020000  # (0002,0010) Transfer Syntax UID, (0002,0000)
UNDEFINED = 0xFFFFFFFF  # PS3.5 §7.1.1: undefined length
# PS3.5 §7.1.2 Table 7.1-1: explicit VRs with a reserved 2 bytes and a 32-bit length
LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ UC UN UR UT SV UV".split())
ALL_VRS = tuple(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)
BAD_VRS = (b"XX", b"\x00\x00", b"ob", b"  ", b"\xff\xfe")

TS_IMPLICIT = "1.2.840.10008.1.2"
TS_EXPLICIT = "1.2.840.10008.1.2.1"
TS_DEFLATED = "1.2.840.10008.1.2.1.99"
TS_BIG = "1.2.840.10008.1.2.2"
# PS3.6 Annex A transfer syntaxes (and a few that are not), for "wrong transfer syntax"
TRANSFER_SYNTAXES = (
    TS_IMPLICIT,
    TS_EXPLICIT,
    TS_DEFLATED,
    TS_BIG,
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.51",  # JPEG extended
    "1.2.840.10008.1.2.4.57",  # JPEG lossless
    "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.100",  # MPEG2
    "1.2.840.10008.1.2.5",  # RLE
    "1.2.840.10008.1.2.1.98",  # Encapsulated Uncompressed Explicit VR Little Endian
)
BOGUS_TS = ("", "1.2.3.4", "not a uid", "1." + "9" * 62, "1.2.840.10008.1.2\x00\x00", "\xff\xfe")
JPEG_TS = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70")
JPEG_LS_TS = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
J2K_TS = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203")
RLE_TS = "1.2.840.10008.1.2.5"


@dataclass(frozen=True)
class Header:
    """One header in the byte stream: a data element, an item, a fragment or a delimiter."""

    offset: int  # of the tag
    tag: int  # group << 16 | element
    vr: bytes | None  # explicit VR, None for implicit VR and for (FFFE,xxxx)
    len_off: int  # of the length field
    len_size: int  # 2 or 4
    length: int  # as declared
    big: bool  # big endian
    kind: str  # element | sequence | pixels | item | fragment | delimiter
    depth: int  # sequences/items/pixel fragments it sits in

    @property
    def value_off(self) -> int:
        return self.len_off + self.len_size

    @property
    def header_size(self) -> int:
        return self.value_off - self.offset

    def label(self) -> str:
        vr = (self.vr or b"--").decode("latin-1").encode("unicode_escape").decode()
        return f"({self.tag >> 16:04X},{self.tag & 0xFFFF:04X}) {vr} {self.kind}"


def _tag_bytes(tag: int, big: bool) -> bytes:
    return struct.pack(">HH" if big else "<HH", tag >> 16, tag & 0xFFFF)


def walk(buf: bytes, start: int, explicit: bool, big: bool, only_group: int | None = None, limit: int = 100_000) -> list[Header]:
    """The headers of a data set from ``start``, in stream order, never raising.

    Sequences (VR SQ, undefined length, or an implicit-VR value that starts with an
    item tag) and items are entered, not skipped, so their elements are listed too;
    encapsulated pixel data (PS3.5 A.4) lists its fragments. UN of undefined length
    holds implicit VR little endian (PS3.5 §6.2.2). The walk stops where the stream
    stops making sense (a length past the end, a truncated header), or at the first
    element outside ``only_group`` (the file meta: group 0002, PS3.10 §7.1).
    """
    out: list[Header] = []
    stack: list[tuple[int | None, str, bool, bool]] = []  # (end, kind, explicit, big)
    pos, n = start, len(buf)
    while pos + 8 <= n and len(out) < limit:
        while stack and stack[-1][0] is not None and pos >= stack[-1][0]:
            stack.pop()
        exp, be = (stack[-1][2], stack[-1][3]) if stack else (explicit, big)
        e = ">" if be else "<"
        group, element = struct.unpack_from(e + "HH", buf, pos)
        tag = group << 16 | element
        if only_group is not None and group != only_group:
            break
        depth = len(stack)
        if group == 0xFFFE:  # items and delimiters: tag and 32-bit length, never a VR (PS3.5 §7.5)
            (length,) = struct.unpack_from(e + "I", buf, pos + 4)
            in_fragments = bool(stack) and stack[-1][1] == "fragments"
            if tag == ITEM and in_fragments:
                out.append(Header(pos, tag, None, pos + 4, 4, length, be, "fragment", depth))
                if length == UNDEFINED or pos + 8 + length > n:
                    break
                pos += 8 + length
                continue
            if tag == ITEM:
                out.append(Header(pos, tag, None, pos + 4, 4, length, be, "item", depth))
                stack.append((None if length == UNDEFINED else pos + 8 + length, "item", exp, be))
                pos += 8
                continue
            out.append(Header(pos, tag, None, pos + 4, 4, length, be, "delimiter", depth))
            pos += 8
            closes = ("item",) if tag == ITEM_DELIM else ("sequence", "fragments")
            while stack:
                if stack.pop()[1] in closes:
                    break
            continue
        if exp:
            vr = bytes(buf[pos + 4 : pos + 6])
            if vr in LONG_VRS:
                if pos + 12 > n:
                    break
                (length,) = struct.unpack_from(e + "I", buf, pos + 8)
                len_off, len_size = pos + 8, 4
            else:
                (length,) = struct.unpack_from(e + "H", buf, pos + 6)
                len_off, len_size = pos + 6, 2
        else:
            vr = None
            (length,) = struct.unpack_from(e + "I", buf, pos + 4)
            len_off, len_size = pos + 4, 4
        value = len_off + len_size
        if tag == PIXEL_DATA and length == UNDEFINED:
            out.append(Header(pos, tag, vr, len_off, len_size, length, be, "pixels", depth))
            stack.append((None, "fragments", exp, be))
            pos = value
            continue
        starts_with_item = length >= 8 and buf[value : value + 4] == _tag_bytes(ITEM, be)
        if vr == b"SQ" or length == UNDEFINED or (vr in (None, b"UN") and starts_with_item):
            out.append(Header(pos, tag, vr, len_off, len_size, length, be, "sequence", depth))
            inner_explicit, inner_big = (False, False) if vr == b"UN" else (exp, be)
            stack.append((None if length == UNDEFINED else value + length, "sequence", inner_explicit, inner_big))
            pos = value
            continue
        out.append(Header(pos, tag, vr, len_off, len_size, length, be, "pixels" if tag == PIXEL_DATA else "element", depth))
        if value + length > n:
            break
        pos = value + length
    return out


@dataclass
class Doc:
    """A corpus file, walked: the head (preamble, DICM, file meta) and the data set."""

    name: str
    raw: bytes
    head_end: int  # where the data set starts
    ts: str
    explicit: bool
    big: bool
    deflated: bool
    meta: list[Header]  # offsets in raw
    body: bytes  # the data set (inflated for the deflated transfer syntax)
    elems: list[Header]  # offsets in body
    frames: int
    phi: dict[str, str] = field(default_factory=dict)  # what must never reach a log or an error detail

    def assemble(self, head: bytes, body: bytes) -> bytes:
        return bytes(head) + (deflate(bytes(body)) if self.deflated else bytes(body))


def deflate(data: bytes) -> bytes:
    """PS3.5 A.5: the data set as a raw deflate stream (RFC 1951, no zlib header)."""
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def read_doc(name: str, raw: bytes) -> Doc:
    if raw[128:132] != b"DICM":
        raise ValueError(f"{name}: no DICM prefix (PS3.10 §7.1)")
    meta = walk(raw, 132, explicit=True, big=False, only_group=0x0002)
    if not meta:
        raise ValueError(f"{name}: no file meta")
    last = meta[-1]
    head_end = last.value_off + last.length
    ts_el = next((h for h in meta if h.tag == TS_TAG), None)
    ts = raw[ts_el.value_off : ts_el.value_off + ts_el.length].rstrip(b"\0 ").decode("ascii") if ts_el else TS_EXPLICIT
    explicit, big, deflated = ts != TS_IMPLICIT, ts == TS_BIG, ts == TS_DEFLATED
    body = zlib.decompress(raw[head_end:], -15) if deflated else raw[head_end:]
    elems = walk(body, 0, explicit, big)
    doc = Doc(name, raw, head_end, ts, explicit, big, deflated, meta, body, elems, 1)
    doc.frames = _int_value(doc, 0x00280008) or 1  # (0028,0008) Number of Frames
    for tag, what in ((0x00100010, "PatientName"), (0x00100020, "PatientID"), (0x00100030, "PatientBirthDate"),
                      (0x00080020, "StudyDate"), (0x00080018, "SOPInstanceUID"),
                      (0x0020000D, "StudyInstanceUID"), (0x0020000E, "SeriesInstanceUID")):
        value = _text_value(doc, tag)
        if value and len(value.strip("^ ")) >= 4 and value not in ("Anonymized", "Anonymous"):
            doc.phi[what] = value
    return doc


def _top(doc: Doc, tag: int) -> Header | None:
    return next((h for h in doc.elems if h.tag == tag and h.depth == 0 and h.kind == "element"), None)


def _text_value(doc: Doc, tag: int) -> str | None:
    h = _top(doc, tag)
    if h is None:
        return None
    return doc.body[h.value_off : h.value_off + h.length].rstrip(b"\0 ").decode("latin-1")


def _int_value(doc: Doc, tag: int) -> int | None:
    text = _text_value(doc, tag)
    try:
        return int(text.strip()) if text else None
    except ValueError:
        return None


# --------------------------------------------------------------------------
# the corpus: pydicom's bundled files, every transfer syntax
# --------------------------------------------------------------------------
CORPUS = (
    ("MR_small_implicit.dcm", "Implicit VR LE"),
    ("rtdose.dcm", "Implicit VR LE, 15 frames"),
    ("rtplan.dcm", "Implicit VR LE, sequences, no pixels"),
    ("CT_small.dcm", "Explicit VR LE"),
    ("SC_rgb_small_odd.dcm", "Explicit VR LE, RGB, odd size"),
    ("test-SR.dcm", "Explicit VR LE, nested sequences, no pixels"),
    ("MR_small_bigendian.dcm", "Explicit VR BE"),
    ("rtdose_expb.dcm", "Explicit VR BE, 15 frames"),
    ("image_dfl.dcm", "Deflated Explicit VR LE"),
    ("SC_rgb_jpeg_dcmtk.dcm", "JPEG baseline, RGB"),
    ("SC_rgb_small_odd_jpeg.dcm", "JPEG baseline, odd size"),
    ("JPGExtended.dcm", "JPEG extended"),
    ("SC_rgb_jpeg_gdcm.dcm", "JPEG lossless SV1"),
    ("MR_small_jpeg_ls_lossless.dcm", "JPEG-LS lossless"),
    ("JPEGLSNearLossless_16.dcm", "JPEG-LS near-lossless"),
    ("JPEG2000.dcm", "JPEG 2000"),
    ("MR_small_jp2klossless.dcm", "JPEG 2000 lossless"),
    ("MR_small_RLE.dcm", "RLE"),
    ("SC_rgb_rle_2frame.dcm", "RLE, RGB, 2 frames"),
    ("rtdose_rle.dcm", "RLE, 15 frames"),
    ("UN_sequence.dcm", "JPEG lossless, UN sequence"),
)


def load_corpus(names: tuple[tuple[str, str], ...] = CORPUS) -> list[Doc]:
    from pydicom.data import get_testdata_file  # only to find the files

    docs = []
    for name, _ in names:
        path = get_testdata_file(name, download=False)
        if path is None:
            raise FileNotFoundError(f"pydicom does not ship {name}")
        docs.append(read_doc(name, Path(path).read_bytes()))
    return docs


# --------------------------------------------------------------------------
# mutations: each fn(rng, doc) -> (bytes, description)
# --------------------------------------------------------------------------
def _pack_len(h: Header, value: int) -> bytes:
    if h.len_size == 2:
        return struct.pack(">H" if h.big else "<H", value & 0xFFFF)
    return struct.pack(">I" if h.big else "<I", value & 0xFFFFFFFF)


def _set_length(buf: bytearray, h: Header, value: int) -> None:
    buf[h.len_off : h.value_off] = _pack_len(h, value)


def _where(rng: random.Random, doc: Doc, kinds: tuple[str, ...], meta_share: float = 0.15):
    """A header of one of ``kinds``: (area, header), area "meta" (offsets in raw) or "body"."""
    body = [h for h in doc.elems if h.kind in kinds]
    meta = [h for h in doc.meta if h.kind in kinds]
    if meta and (not body or rng.random() < meta_share):
        return "meta", rng.choice(meta)
    if body:
        return "body", rng.choice(body)
    return None, None


def _build(doc: Doc, area: str, buf: bytearray) -> bytes:
    if area == "meta":  # the whole file, its data set as it is (compressed, when deflated)
        return bytes(buf)
    return doc.assemble(doc.raw[: doc.head_end], buf)


def _buffer(doc: Doc, area: str) -> bytearray:
    return bytearray(doc.raw if area == "meta" else doc.body)


def _odd_lengths(rng: random.Random, h: Header, room: int) -> list[int]:
    L = h.length if h.length != UNDEFINED else 0
    cands = [0, 1, L - 1, L + 1, L + 2, L + 7, L * 2 + 1, L // 2, room, room + 1, room + 2, rng.randrange(0, 2 * L + 17)]
    cands.append(UNDEFINED if h.len_size == 4 else 0xFFFF)
    return [c for c in cands if c >= 0 and c != h.length]


def mut_bitflip(rng: random.Random, doc: Doc) -> tuple[bytes, str]:
    """Flip 1..32 bits: anywhere, in the headers (tag, VR, length), or in the first KiB of pixel data."""
    count = rng.choice((1, 1, 2, 3, 8, 32))
    inflated = doc.deflated and rng.random() < 0.5
    data = bytearray(doc.body if inflated else doc.raw)
    base = 0 if inflated else doc.head_end
    elems = doc.elems if (inflated or not doc.deflated) else []
    where = rng.random()
    spots: list[int] = []
    for _ in range(count):
        if where < 0.5 or not elems:
            spots.append(rng.randrange(len(data)))
        elif where < 0.8:
            h = rng.choice(elems)
            spots.append(base + h.offset + rng.randrange(h.header_size))
        else:
            pix = [h for h in elems if h.kind in ("pixels", "fragment") and h.length not in (0, UNDEFINED)]
            h = rng.choice(pix) if pix else rng.choice(elems)
            span = max(1, min(1024, h.length if h.length != UNDEFINED else 1))
            spots.append(min(len(data) - 1, base + h.value_off + rng.randrange(span)))
    for spot in spots:
        data[spot] ^= 1 << rng.randrange(8)
    out = doc.assemble(doc.raw[: doc.head_end], data) if inflated else bytes(data)
    return out, f"bitflip x{count} {'inflated ' if inflated else ''}at {sorted(spots)[:8]}"


def mut_truncate(rng: random.Random, doc: Doc) -> tuple[bytes, str]:
    """Cut the file: anywhere, at or inside a header, or inside the pixel data."""
    inflated = doc.deflated and rng.random() < 0.5
    data = doc.body if inflated else doc.raw
    base = 0 if inflated else doc.head_end
    elems = doc.elems if (inflated or not doc.deflated) else []
    where = rng.random()
    if where < 0.4 or not elems:
        cut, how = rng.randrange(len(data)), "anywhere"
    elif where < 0.7:
        h = rng.choice(elems)
        cut, how = base + h.offset + rng.randrange(h.header_size + min(16, h.length if h.length != UNDEFINED else 0) + 1), f"at {h.label()}"
    else:
        pix = [h for h in elems if h.kind in ("pixels", "fragment")] or elems
        h = rng.choice(pix)
        span = h.length if h.length != UNDEFINED else max(1, len(data) - base - h.value_off)
        cut, how = base + h.value_off + rng.randrange(max(1, span)), f"inside {h.label()}"
    cut = min(cut, len(data) - 1)
    out = doc.assemble(doc.raw[: doc.head_end], data[:cut]) if inflated else data[:cut]
    return out, f"truncate {'inflated ' if inflated else ''}at {cut}/{len(data)} ({how})"


def mut_element_length(rng: random.Random, doc: Doc) -> tuple[bytes, str]:
    """Declare another length for a data element (shorter, longer, odd, past the end, undefined)."""
    area, h = _where(rng, doc, ("element", "sequence", "pixels"))
    buf = _buffer(doc, area)
    room = len(buf) - h.value_off
    new = rng.choice(_odd_lengths(rng, h, room))
    _set_length(buf, h, new)
    return _build(doc, area, buf), f"element_length {area} {h.label()} {h.length}->{new}"


def mut_item_length(rng: random.Random, doc: Doc) -> tuple[bytes, str]:
    """Corrupt an item, a pixel fragment or a delimiter: its length, its tag, or remove/duplicate it."""
    area, h = _where(rng, doc, ("item", "fragment", "delimiter"), meta_share=0)
    if h is None:
        out, desc = mut_element_length(rng, doc)
        return out, desc + " (no items)"
    buf = _buffer(doc, area)
    op = rng.random()
    if op < 0.55:
        new = rng.choice(_odd_lengths(rng, h, len(buf) - h.value_off))
        _set_length(buf, h, new)
        desc = f"length {h.length}->{new}"
    elif op < 0.75:
        new_tag = rng.choice([t for t in (ITEM, ITEM_DELIM, SEQ_DELIM, 0x00000000, 0xFFFEE001) if t != h.tag])
        buf[h.offset : h.offset + 4] = _tag_bytes(new_tag, h.big)
        desc = f"tag -> ({new_tag >> 16:04X},{new_tag & 0xFFFF:04X})"
    elif op < 0.9:
        end = h.value_off if h.kind != "fragment" else h.value_off + h.length
        del buf[h.offset : end]
        desc = "removed"
    else:
        buf[h.offset : h.offset] = buf[h.offset : h.value_off]
        desc = "header duplicated"
    return _build(doc, area, buf), f"item {area} {h.label()} {desc}"


def mut_vr_swap(rng: random.Random, doc: Doc) -> tuple[bytes, str]:
    """Another VR for an explicit-VR element: its 2 bytes only (the layout then shifts), or
    the header rewritten in the new VR's layout around the same value."""
    area, h = _where(rng, doc, ("element", "sequence", "pixels"), meta_share=0.2 if doc.explicit else 1.0)
    if h is None or h.vr is None:
        area, h = "meta", rng.choice(doc.meta)
    buf = _buffer(doc, area)
    new_vr = rng.choice([v for v in ALL_VRS + BAD_VRS if v != h.vr])
    rewrite = rng.random() < 0.5 and new_vr in ALL_VRS and h.length != UNDEFINED and h.depth == 0
    if rewrite and (new_vr in LONG_VRS or h.length <= 0xFFFF):
        e = ">" if h.big else "<"
        length = struct.pack(e + "HI", 0, h.length) if new_vr in LONG_VRS else struct.pack(e + "H", h.length)
        buf[h.offset + 4 : h.value_off] = new_vr + length
        how = "rewritten"
    else:
        buf[h.offset + 4 : h.offset + 6] = new_vr
        how = "bytes only"
    vr = new_vr.decode("latin-1").encode("unicode_escape").decode()
    return _build(doc, area, buf), f"vr_swap {area} {h.label()} -> {vr} ({how})"


def mut_huge_length(rng: random.Random, doc: Doc) -> tuple[bytes, str]:
    """A huge declared length, mostly on pixel data and its fragments."""
    if rng.random() < 0.5:
        area, h = _where(rng, doc, ("pixels", "fragment"), meta_share=0)
    else:
        area, h = None, None
    if h is None:
        area, h = _where(rng, doc, ("element", "sequence", "pixels", "item", "fragment"))
    buf = _buffer(doc, area)
    if h.len_size == 2:
        new = rng.choice((0xFFFF, 0xFFFE, 0x8000))
    else:
        new = rng.choice((0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFF0, 0x7FFFFFF0, 1 << 30, 0x10000001))
    _set_length(buf, h, new)
    return _build(doc, area, buf), f"huge_length {area} {h.label()} {h.length}->{new:#x}"


def mut_wrong_ts(rng: random.Random, doc: Doc) -> tuple[bytes, str]:
    """Another (0002,0010) Transfer Syntax UID; (0002,0000) group length fixed or left wrong."""
    h = next((m for m in doc.meta if m.tag == TS_TAG), None)
    if h is None:
        return mut_element_length(rng, doc)
    choices = [t for t in TRANSFER_SYNTAXES if t != doc.ts] + list(BOGUS_TS)
    uid = rng.choice(choices)
    value = uid.encode("latin-1")
    if len(value) % 2:
        value += b"\0"  # PS3.5 §6.2: UI padded with a trailing NUL to even length
    head = bytearray(doc.raw[: doc.head_end])
    old = h.length
    head[h.value_off : h.value_off + old] = value
    _set_length(head, h, len(value))
    fixed = rng.random() < 0.7
    gl = next((m for m in doc.meta if m.tag == GROUP_LENGTH), None)
    if fixed and gl is not None:
        (group_length,) = struct.unpack_from("<I", head, gl.value_off)
        head[gl.value_off : gl.value_off + 4] = struct.pack("<I", group_length + len(value) - old)
    shown = uid.encode("unicode_escape").decode()
    return head + doc.raw[doc.head_end :], f"wrong_ts {shown!r} (group length {'fixed' if fixed else 'left'})"


# (0028,xxxx) Image Pixel Module attributes (PS3.3 C.7.6.3) and their bomb values
PIXEL_US = {
    0x00280010: ("Rows", (0, 1, 0xFFFF, 0x8000, 0xFFFE)),
    0x00280011: ("Columns", (0, 1, 0xFFFF, 0x8000, 0xFFFE)),
    0x00280002: ("SamplesPerPixel", (0, 2, 3, 4, 0xFFFF)),
    0x00280100: ("BitsAllocated", (0, 1, 7, 12, 24, 32, 64, 0xFFFF)),
    0x00280101: ("BitsStored", (0, 1, 17, 33, 0xFFFF)),
    0x00280102: ("HighBit", (0, 31, 0xFFFF)),
    0x00280103: ("PixelRepresentation", (2, 0xFFFF)),
    0x00280006: ("PlanarConfiguration", (1, 2, 0xFFFF)),
}
FRAMES_VALUES = (b"0", b"-1", b"2", b"99999999", b"2147483648", b"1e9", b"", b"NaN", b"4294967297")
PHOTOMETRIC_VALUES = (b"MONOCHROME1", b"RGB", b"PALETTE COLOR", b"YBR_FULL_422", b"YBR_ICT", b"XYZ", b"")


def _replace_value(buf: bytearray, h: Header, value: bytes) -> None:
    if len(value) % 2:
        value += b" "  # PS3.5 §6.2: text values padded to even length with a space
    buf[h.value_off : h.value_off + h.length] = value
    _set_length(buf, h, len(value))


def mut_pixel_attr(rng: random.Random, doc: Doc) -> tuple[bytes, str]:
    """Decoder bombs: extreme Rows/Columns/Samples/Bits/Frames/Photometric values, 1..3 at once."""
    buf = bytearray(doc.body)
    present = [h for h in doc.elems if h.depth == 0 and h.kind == "element"
               and (h.tag in PIXEL_US or h.tag in (0x00280008, 0x00280004))]
    if not present:
        out, desc = mut_element_length(rng, doc)
        return out, desc + " (no pixel module)"
    picks = rng.sample(present, min(len(present), rng.choice((1, 1, 2, 3))))
    done = []
    # from the end backwards: earlier offsets stay valid when a value changes size
    for h in sorted(picks, key=lambda x: -x.offset):
        if h.tag in PIXEL_US and h.length == 2:
            name, values = PIXEL_US[h.tag]
            v = rng.choice(values)
            buf[h.value_off : h.value_off + 2] = struct.pack(">H" if h.big else "<H", v)
            done.append(f"{name}={v}")
        elif h.tag == 0x00280008:  # (0028,0008) Number of Frames, IS
            v = rng.choice(FRAMES_VALUES)
            _replace_value(buf, h, v)
            done.append(f"NumberOfFrames={v.decode()!r}")
        elif h.tag == 0x00280004:  # (0028,0004) Photometric Interpretation, CS
            v = rng.choice(PHOTOMETRIC_VALUES)
            _replace_value(buf, h, v)
            done.append(f"Photometric={v.decode()!r}")
    return doc.assemble(doc.raw[: doc.head_end], buf), "pixel_attr " + ", ".join(reversed(done))


def mut_codestream(rng: random.Random, doc: Doc) -> tuple[bytes, str]:
    """The first frame's codestream claims another size: JPEG SOFn (ITU T.81 B.2.2), JPEG-LS SOF55
    (ITU T.87 C.2.2), J2K SIZ (ITU T.800 A.5.1), or the RLE header (PS3.5 G.5)."""
    frags = [h for h in doc.elems if h.kind == "fragment" and h.length >= 16]
    if len(frags) < 2:  # native pixel data (or no frames): a bomb in the data set instead
        out, desc = mut_pixel_attr(rng, doc)
        return out, desc + " (native)"
    h = frags[1]  # frags[0] is the Basic Offset Table
    buf = bytearray(doc.body)
    start, end = h.value_off, h.value_off + h.length
    big16 = rng.choice((0xFFFF, 0x8000, 0, 1))
    if doc.ts == RLE_TS:  # PS3.5 G.5: a 64-byte header of 16 little-endian 32-bit numbers
        field_no = rng.randrange(3)
        v = rng.choice((0, 15, 16, 0xFFFFFFFF, 0x7FFFFFFF, h.length, h.length + 64))
        struct.pack_into("<I", buf, start + 4 * field_no, v)
        desc = f"RLE header word {field_no}={v:#x}"
    elif doc.ts in J2K_TS:
        at = buf.find(b"\xff\x51", start, end)  # SIZ: Lsiz Rsiz Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz ... Csiz
        if at < 0:
            return mut_pixel_attr(rng, doc)
        which = rng.choice(("Xsiz", "Ysiz", "XTsiz", "Csiz"))
        off = {"Xsiz": 6, "Ysiz": 10, "XTsiz": 22, "Csiz": 38}[which]
        if which == "Csiz":
            struct.pack_into(">H", buf, at + off, rng.choice((0, 4, 16384)))
        else:
            struct.pack_into(">I", buf, at + off, rng.choice((0xFFFFFFFF, 0x10000, 65535 * 65535, 0, 1)))
        desc = f"J2K SIZ {which}"
    else:
        markers = (b"\xff\xf7",) if doc.ts in JPEG_LS_TS else tuple(
            bytes((0xFF, c)) for c in range(0xC0, 0xD0) if c not in (0xC4, 0xC8, 0xCC))
        at = min((p for p in (buf.find(m, start, end) for m in markers) if p >= 0), default=-1)
        if at < 0:
            return mut_pixel_attr(rng, doc)
        which = rng.choice(("Y", "X", "Nf", "P"))
        off = {"P": 4, "Y": 5, "X": 7, "Nf": 9}[which]
        if which in ("Y", "X"):
            struct.pack_into(">H", buf, at + off, big16)
        else:
            buf[at + off] = rng.choice((0, 4, 16, 255))
        desc = f"SOF {which}"
    return doc.assemble(doc.raw[: doc.head_end], buf), f"codestream {desc}"


def mut_stacked(rng: random.Random, doc: Doc) -> tuple[bytes, str]:
    """Two mutations, the second on the first's result walked anew (when it still has a file meta)."""
    first, second = rng.sample([k for k in MUTATIONS if k != "stacked"], 2)
    data, desc = MUTATIONS[first](rng, doc)
    try:
        again = read_doc(doc.name, data)
    except (ValueError, zlib.error, UnicodeDecodeError, struct.error):
        return data, f"stacked {desc} (only: no file meta left)"
    if not again.elems:
        return data, f"stacked {desc} (only: nothing to walk)"
    again.phi = doc.phi
    data2, desc2 = MUTATIONS[second](rng, again)
    return data2, f"stacked {desc} + {desc2}"


MUTATIONS = {
    "bitflip": mut_bitflip,
    "truncate": mut_truncate,
    "element_length": mut_element_length,
    "item_length": mut_item_length,
    "vr_swap": mut_vr_swap,
    "huge_length": mut_huge_length,
    "wrong_ts": mut_wrong_ts,
    "pixel_attr": mut_pixel_attr,
    "codestream": mut_codestream,
    "stacked": mut_stacked,
}


@dataclass(frozen=True)
class Mutant:
    index: int
    seed: int
    doc: Doc
    kind: str
    data: bytes
    desc: str


def mutant(corpus: list[Doc], seed: int, index: int) -> Mutant:
    """Mutant ``index`` of ``seed``: made from its own RNG, so any one can be made alone."""
    doc = corpus[index % len(corpus)]
    kinds = list(MUTATIONS)
    kind = kinds[(index // len(corpus)) % len(kinds)]
    rng = random.Random(f"{seed}/{index}")
    data, desc = MUTATIONS[kind](rng, doc)
    return Mutant(index, seed, doc, kind, bytes(data), desc)


# --------------------------------------------------------------------------
# the server, its memory and its data directory
# --------------------------------------------------------------------------
@dataclass
class Settings:
    workers: int = 2
    worker_memory: int = 1024 * MIB  # DICOMSVC_WORKER_MEMORY, and the peak the workers' RSS must stay under
    max_frame_bytes: int = 64 * MIB  # DICOMSVC_MAX_FRAME_BYTES
    worker_timeout: int = 30  # DICOMSVC_WORKER_TIMEOUT, seconds
    request_timeout: float = 60.0  # a request slower than this is a hang
    max_upload_bytes: int = 16 * MIB
    extra: dict[str, str] = field(default_factory=dict)  # more DICOMSVC_* settings, or overrides

    def env(self) -> dict[str, str]:
        return {
            "DICOMSVC_WORKERS": str(self.workers),
            "DICOMSVC_WORKER_MEMORY": str(self.worker_memory),
            "DICOMSVC_MAX_FRAME_BYTES": str(self.max_frame_bytes),
            "DICOMSVC_WORKER_TIMEOUT": str(self.worker_timeout),
            "DICOMSVC_MAX_UPLOAD_BYTES": str(self.max_upload_bytes),
        } | self.extra


class MemoryWatch:
    """Samples /proc every ``period`` s: the summed RSS of the server's child processes (the
    workers) and the largest one, with the mutants in flight at the peak."""

    def __init__(self, period: float = 0.05):
        self.period = period
        self.root: int | None = None
        self.in_flight: set[int] = set()
        self.lock = threading.Lock()
        self.peak_sum = self.peak_one = self.peak_server = 0  # KiB
        self.peak_at: list[int] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            root = self.root
            if root is not None:
                self.sample(root)

    def sample(self, root: int) -> None:
        children = [p for p in P.descendants(root) if p != root]
        rss = [P.status_kib(p, "VmRSS:") for p in children]
        total = sum(rss)
        with self.lock:
            self.samples += 1
            self.peak_server = max(self.peak_server, P.status_kib(root, "VmRSS:"))
            self.peak_one = max([self.peak_one, *rss])
            if total > self.peak_sum:
                self.peak_sum = total
                self.peak_at = sorted(self.in_flight)


class Server:
    """``uvicorn --factory app:create_app`` on a free loopback port with its own data directory."""

    def __init__(self, work: Path, settings: Settings, app_dir: Path = REPO):
        self.work, self.settings, self.app_dir = work, settings, app_dir
        self.data = work / "data"
        self.import_root = work / "import"
        self.import_root.mkdir(parents=True, exist_ok=True)
        self.logs: list[Path] = []
        self.proc: S.ServerProc | None = None
        self.base = ""

    def start(self) -> None:
        port = S.free_port()
        self.base = f"http://127.0.0.1:{port}"
        env = S.dicomsvc_env(self.data, self.import_root, **self.settings.env())
        env["DICOMSVC_LOG_LEVEL"] = "info"  # the most the service logs: all of it is scanned for patient data
        env.setdefault("DICOMSVC_LOG_FILE", str(self.work / "file.log"))  # scanned too, as is the audit trail
        env.setdefault("DICOMSVC_AUDIT_FILE", str(self.work / "audit.jsonl"))
        log = self.work / f"server-{len(self.logs)}.log"
        self.logs.append(log)
        argv = S.uvicorn_argv(port) + ["--no-access-log"]  # as `dicomsvc serve`: the service logs requests itself
        self.proc, _ = S.launch("dicomsvc", argv, self.app_dir, env, log, self.base + "/healthz")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()


def storage_check(data: Path, live: bool = False) -> dict:
    """Blobs against rows, read-only: blob files of ids without a row, rows missing a blob,
    files left in temp space and in the upload spool. ``live``: the server is running, so
    its workers' notes of placed blobs (``<worker>.placed``, one each, removed when the
    worker stops) are no leftovers yet."""
    blobs, db = data / "blobs", data / "dicom.db"
    rows: dict[str, tuple[str, str | None]] = {}
    if db.exists():
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            rows = {r[0]: (r[1], r[2]) for r in con.execute("SELECT id, dcm_blob, png_blob FROM dicom")}
        con.close()
    orphan_blobs, missing, temps = [], [], []
    if blobs.exists():
        for folder in sorted(blobs.iterdir()):
            if folder.name == ".tmp":
                temps += [str(p.relative_to(data)) for p in folder.rglob("*") if not (live and p.name.endswith(".placed"))]
            elif len(folder.name) == 2 and folder.is_dir():
                for entry in sorted(folder.iterdir()):
                    if entry.name.split(".", 1)[0] not in rows:
                        orphan_blobs.append(str(entry.relative_to(data)))
            else:
                orphan_blobs.append(str(folder.relative_to(data)))
    for instance_id, (dcm, png) in rows.items():
        for key in (dcm, png):
            if key and not (blobs / key).is_file():
                missing.append(f"{instance_id}: {key}")
    spool = data / "spool"
    spooled = [str(p.relative_to(data)) for p in spool.rglob("*") if p.is_file()] if spool.exists() else []
    return {"rows": len(rows), "orphan_blobs": orphan_blobs, "rows_missing_blobs": missing,
            "temp_files": temps, "spool_files": spooled}


def written_by_server(work: Path, logs: list[Path]) -> list[Path]:
    """What the service wrote that must hold no patient data: its output, its log and audit
    files (rotated ones too), and the audit table (dumped to a file here)."""
    found = list(logs) + sorted(work.glob("file.log*")) + sorted(work.glob("audit.jsonl*"))
    db = work / "data" / "dicom.db"
    if db.exists():
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                rows = con.execute("SELECT * FROM audit").fetchall()
            con.close()
        except sqlite3.Error:  # no audit table (yet)
            rows = []
        dump = work / "audit-table.txt"
        dump.write_text("\n".join("\t".join(map(str, row)) for row in rows))
        found.append(dump)
    return found


def phi_in_logs(logs: list[Path], corpus: list[Doc]) -> list[str]:
    """Where a corpus file's PatientName/PatientID/UIDs (or a name component) appear in the server's
    log: 'log:line field of file' -- never the value itself."""
    needles: dict[str, str] = {}
    for doc in corpus:
        for what, value in doc.phi.items():
            needles.setdefault(value, f"{what} of {doc.name}")
            if what == "PatientName":
                for part in value.split("^"):
                    if len(part) >= 5:
                        needles.setdefault(part, f"PatientName part of {doc.name}")
    hits = []
    for log in logs:
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for no, line in enumerate(lines, 1):
            for value, what in needles.items():
                if value in line:
                    hits.append(f"{log.name}:{no} {what}")
    return hits


# --------------------------------------------------------------------------
# one mutant through the API
# --------------------------------------------------------------------------
@dataclass
class Failure:
    index: int
    seed: int
    file: str
    mutation: str
    route: str
    status: int | str
    detail: str

    def line(self) -> str:
        return f"#{self.index} seed {self.seed} {self.file} [{self.mutation}] {self.route} -> {self.status} {self.detail}"


@dataclass
class Results:
    statuses: dict[str, Counter] = field(default_factory=dict)
    by_mutation: dict[str, Counter] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    done: int = 0
    restarts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, route: str, status: int | str) -> None:
        with self.lock:
            self.statuses.setdefault(route, Counter())[status] += 1

    def fail(self, m: Mutant, route: str, status: int | str, detail: str) -> None:
        with self.lock:
            self.failures.append(Failure(m.index, m.seed, m.doc.name, m.desc, route, status, detail[:300]))


def _request(client: httpx.Client, method: str, url: str, **kw) -> tuple[int | str, bytes]:
    """Status and the first 64 KiB of the body (the rest is read and dropped); a timeout is
    "timeout", a broken connection "connection"."""
    try:
        with client.stream(method, url, **kw) as r:
            head = bytearray()
            for chunk in r.iter_raw():
                if len(head) < 65536:
                    head += chunk[: 65536 - len(head)]
            return r.status_code, bytes(head)
    except httpx.TimeoutException:
        return "timeout", b""
    except httpx.TransportError as e:
        return "connection", type(e).__name__.encode()


def _error_problem(status: int, body: bytes, doc: Doc) -> str | None:
    """What is wrong with an error answer: not JSON {"error","detail"}, or naming patient data."""
    try:
        obj = json.loads(body)
    except ValueError:
        return "error answer is not JSON"
    if not isinstance(obj, dict) or not isinstance(obj.get("error"), str) or "detail" not in obj:
        return "error answer is not {error, detail}"
    return _phi_problem(body, doc)


def _phi_problem(body: bytes, doc: Doc) -> str | None:
    text = body.decode("utf-8", "replace")
    for what, value in doc.phi.items():
        if value in text:
            return f"answer names the file's {what}"
    return None


class Conn:
    """A client thread's HTTP connection, made anew after an answer that may have closed it
    (a 5xx, a timeout, a broken connection), so the next request does not fail for it."""

    def __init__(self, timeout: float):
        self.timeout = httpx.Timeout(timeout)
        self.client = httpx.Client(timeout=self.timeout, trust_env=False)

    def request(self, method: str, url: str, **kw) -> tuple[int | str, bytes]:
        status, body = _request(self.client, method, url, **kw)
        if not isinstance(status, int) or status >= 500:
            self.close()
            self.client = httpx.Client(timeout=self.timeout, trust_env=False)
        return status, body

    def close(self) -> None:
        self.client.close()


def run_mutant(conn: Conn, base: str, m: Mutant, res: Results, data_dir: Path) -> bool:
    """POST the mutant, read what was stored every way, DELETE it; False when the server is gone."""

    def call(route: str, method: str, url: str, **kw) -> tuple[int | str, bytes]:
        status, body = conn.request(method, base + url, **kw)
        res.count(route, status)
        if not isinstance(status, int) or status >= 500:
            res.fail(m, route, status, body[:300].decode("utf-8", "replace"))
        elif status >= 400:
            problem = _error_problem(status, body, m.doc)
            if problem:
                res.fail(m, route, status, problem)
        elif route.startswith("POST"):
            problem = _phi_problem(body, m.doc)
            if problem:
                res.fail(m, route, status, problem)
        return status, body

    status, body = call("POST /dicom", "POST", "/dicom", content=m.data, headers={"Content-Type": "application/dicom"})
    stored = None
    if status in (200, 201):
        try:
            stored = json.loads(body)["id"]
        except (ValueError, KeyError, TypeError):
            res.fail(m, "POST /dicom", status, "no id in the answer")
    with res.lock:
        res.by_mutation.setdefault(m.kind, Counter())["stored" if stored else str(status)] += 1
    if stored:
        frame = 2 if m.doc.frames >= 2 else 1
        call("GET /image", "GET", f"/image?id={stored}")
        call("GET /tags", "GET", f"/tags?id={stored}")
        call("GET /tags dicomjson", "GET", f"/tags?id={stored}&format=dicomjson")
        call("GET /pixels", "GET", f"/dicom/{stored}/pixels")
        call("GET /image window,frame", "GET", f"/image?id={stored}&window=40,400&frame={frame}")
        status, _ = call("DELETE /dicom/{id}", "DELETE", f"/dicom/{stored}")
        if status in (200, 204):
            left = list((data_dir / "blobs" / stored[:2]).glob(stored + ".*"))
            if left:
                res.fail(m, "DELETE /dicom/{id}", status, f"{len(left)} blob(s) left after DELETE")
    status, _ = conn.request("GET", base + "/healthz")
    if status != 200:
        res.fail(m, "GET /healthz", status, "server not healthy after this mutant")
        return False
    return True


HANDOVER = ("service.py", "workers.py")  # the worker pool's frames: where every task passes


def exceptions_in(text: str) -> list[str]:
    """Each exception chain in a log, as one line: the innermost exception raised under our
    code (dicomsvc/ or app.py, past the worker pool's hand-over), with its deepest such frame."""
    found, lines, chain = [], text.splitlines(), []
    i = 0
    while i < len(lines):
        if "Traceback (most recent call last):" not in lines[i]:
            i += 1
            continue
        where, j = "", i + 1
        while j < len(lines) and (lines[j].startswith(" ") or not lines[j]):
            hit = re.match(r'\s*File "([^"]+)", line (\d+), in (\S+)', lines[j])
            if hit and ("/dicomsvc/" in hit[1] or hit[1].endswith("/app.py")):
                short = hit[1].rsplit("/dicomsvc/", 1)[-1]
                if not short.startswith(HANDOVER):
                    where = f"{short}:{hit[2]} {hit[3]}"
            j += 1
        if j >= len(lines):
            break
        chain.append((lines[j][:160], where))
        k = j + 1
        while k < len(lines) and lines[k].strip() in ("", '"""'):
            k += 1
        if k < len(lines) and lines[k].startswith(("The above exception", "During handling")):
            i = k + 1
            continue
        exc, at = next((link for link in chain if link[1]), chain[-1])
        found.append(exc + (f" (at {at})" if at else ""))
        chain, i = [], k
    return found


# --------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------
def fuzz(
    seed: int,
    n: int,
    work: Path,
    settings: Settings | None = None,
    clients: int = 2,
    only: list[int] | None = None,
    app_dir: Path = REPO,
    save: Path | None = None,
    progress: bool = False,
    replay: int = 40,
) -> dict:
    """Run mutants ``0..n-1`` (or ``only``) of ``seed`` against a fresh server in ``work``; the figures.

    Afterwards the first ``replay`` failing mutants are sent again one at a time, each with
    the exceptions it left in the server's log (``traceback`` in the report)."""
    settings = settings or Settings()
    corpus = load_corpus()
    indices = list(only) if only else list(range(n))
    res = Results()
    server = Server(work, settings, app_dir)
    watch = MemoryWatch()
    server.start()
    watch.root = server.proc.pid
    watch.start()
    restart_lock = threading.Lock()
    queue = iter(indices)
    queue_lock = threading.Lock()
    t0 = time.monotonic()

    def restart_if_down(conn: Conn, m: Mutant, results: Results) -> None:
        with restart_lock:
            if server.alive() and conn.request("GET", server.base + "/healthz")[0] == 200:
                return  # the other client restarted it already, or it recovered
            results.fail(m, "server", "dead" if not server.alive() else "unhealthy",
                         server.proc.log_tail(5) if server.proc else "")
            server.stop()
            server.start()
            watch.root = server.proc.pid
            results.restarts += 1

    def client_loop() -> None:
        conn = Conn(settings.request_timeout)
        try:
            while True:
                with queue_lock:
                    index = next(queue, None)
                if index is None:
                    return
                m = mutant(corpus, seed, index)
                with watch.lock:
                    watch.in_flight.add(index)
                failed_before = len(res.failures)
                try:
                    alive = run_mutant(conn, server.base, m, res, server.data)
                finally:
                    with watch.lock:
                        watch.in_flight.discard(index)
                if save is not None and len(res.failures) > failed_before:
                    save.mkdir(parents=True, exist_ok=True)
                    (save / f"seed{seed}-{index}-{m.doc.name}").write_bytes(m.data)
                with res.lock:
                    res.done += 1
                    done = res.done
                if progress and done % 250 == 0:
                    print(f"  {done}/{len(indices)} mutants, {len(res.failures)} failures,"
                          f" {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
                if not alive or not server.alive():
                    restart_if_down(conn, m, res)
        finally:
            conn.close()

    tracebacks: dict[int, list[str]] = {}
    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        live = storage_check(server.data, live=True)  # the server still up, every request answered
        main_run = {log: log.stat().st_size for log in server.logs}  # the replays' lines come after
        conn = Conn(settings.request_timeout)
        for index in sorted({f.index for f in res.failures})[:replay]:
            log, m, again = server.logs[-1], mutant(corpus, seed, index), Results()
            before = log.stat().st_size
            if not run_mutant(conn, server.base, m, again, server.data) or not server.alive():
                restart_if_down(conn, m, again)
            _settle(log)
            with open(log, "rb") as f:
                f.seek(before)
                tracebacks[index] = exceptions_in(f.read().decode("utf-8", "replace"))
        conn.close()
    finally:
        watch.stop()
        server.stop()
    after = storage_check(server.data)  # and once it has shut down
    exceptions = Counter()
    for log, size in main_run.items():
        with open(log, "rb") as f:
            exceptions.update(exceptions_in(f.read(size).decode("utf-8", "replace")))
    orphans = {k: v for k, v in after.items() if k != "rows" and v} | {
        f"live_{k}": v for k, v in live.items() if k != "rows" and v}
    limit_kib = settings.worker_memory // 1024
    failures = []
    for f in sorted(res.failures, key=lambda f: (f.index, f.route)):
        failures.append(f.__dict__ | {"traceback": tracebacks.get(f.index)})
    return {
        "seed": seed,
        "mutants": len(indices),
        "corpus": [d.name for d in corpus],
        "clients": clients,
        "workers": settings.workers,
        "settings": settings.env(),
        "elapsed_s": round(elapsed, 1),
        "mutants_per_s": round(len(indices) / elapsed, 1) if elapsed else None,
        "statuses": {route: dict(sorted(c.items(), key=str)) for route, c in res.statuses.items()},
        "by_mutation": {k: dict(sorted(c.items(), key=str)) for k, c in res.by_mutation.items()},
        "failures": failures,
        "restarts": res.restarts,
        "peak_workers_rss_sum_mib": round(watch.peak_sum / 1024, 1),
        "peak_worker_rss_mib": round(watch.peak_one / 1024, 1),
        "peak_server_rss_mib": round(watch.peak_server / 1024, 1),
        "peak_in_flight": watch.peak_at,
        "memory_limit_mib": round(limit_kib / 1024, 1),
        "memory_ok": watch.peak_sum < limit_kib,
        "memory_samples": watch.samples,
        "rows_left": after["rows"],
        "orphans": orphans,
        "phi_in_log": phi_in_logs(written_by_server(work, server.logs), corpus),
        "server_exceptions": dict(exceptions.most_common()),
    }


def _settle(log: Path, quiet_s: float = 0.3, max_s: float = 3.0) -> None:
    """Wait until the server's log stops growing (a traceback is logged after its 500 is sent)."""
    size, deadline = -1, time.monotonic() + max_s
    while time.monotonic() < deadline:
        now = log.stat().st_size
        if now == size:
            return
        size = now
        time.sleep(quiet_s)


def ok(report: dict) -> bool:
    return not report["failures"] and report["memory_ok"] and not report["orphans"] and not report["phi_in_log"]


def print_summary(report: dict, out=sys.stdout) -> None:
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p(f"fuzz: seed {report['seed']}, {report['mutants']} mutants of {len(report['corpus'])} files,"
      f" {report['clients']} clients, {report['workers']} workers")
    p(f"elapsed {report['elapsed_s']} s ({report['mutants_per_s']} mutants/s)")
    p("statuses:")
    for route, counts in report["statuses"].items():
        p(f"  {route:26} " + "  ".join(f"{s}: {c}" for s, c in counts.items()))
    p("by mutation (POST outcome):")
    for kind, counts in report["by_mutation"].items():
        p(f"  {kind:15} " + "  ".join(f"{s}: {c}" for s, c in counts.items()))
    p(f"peak memory: workers' RSS sum {report['peak_workers_rss_sum_mib']} MiB"
      f" (limit {report['memory_limit_mib']} MiB: {'ok' if report['memory_ok'] else 'OVER'}),"
      f" largest worker {report['peak_worker_rss_mib']} MiB, server {report['peak_server_rss_mib']} MiB,"
      f" {report['memory_samples']} samples; in flight at the peak: {report['peak_in_flight']}")
    p(f"storage: {report['rows_left']} rows left; orphans: {report['orphans'] or 'none'}")
    p(f"patient data in the server log: {report['phi_in_log'] or 'none'}")
    p(f"server restarts: {report['restarts']}")
    if report["server_exceptions"]:
        p("exceptions in the server log:")
        for line, count in report["server_exceptions"].items():
            p(f"  {count:5}  {line}")
    p(f"failures: {len(report['failures'])}")
    for f in report["failures"][:200]:
        p("  " + Failure(**{k: v for k, v in f.items() if k != "traceback"}).line())
        for line in f.get("traceback") or ():
            p("      " + line)
    p("OK" if ok(report) else "FAILED")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=9)
    ap.add_argument("--n", type=int, default=5000, help="mutants 0..n-1")
    ap.add_argument("--only", type=int, nargs="+", help="just these mutant indices (to reproduce)")
    ap.add_argument("--clients", type=int, default=2, help="client threads")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--worker-memory-mib", type=int, default=1024)
    ap.add_argument("--max-frame-mib", type=int, default=64)
    ap.add_argument("--worker-timeout", type=int, default=30)
    ap.add_argument("--request-timeout", type=float, default=60.0)
    ap.add_argument("--set", action="append", default=[], metavar="DICOMSVC_X=V",
                    help="another setting for the server (or an override: the memory check keeps --worker-memory-mib)")
    ap.add_argument("--app-dir", type=Path, default=REPO, help="where app.py and dicomsvc/ are imported from")
    ap.add_argument("--save", type=Path, help="write each failing mutant here")
    ap.add_argument("--dump", type=Path, help="write the mutants (--only or --n) here and exit; no server")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (logs, data)")
    ap.add_argument("--json", type=Path, help="write the report here too")
    args = ap.parse_args(argv)
    if args.dump:
        corpus = load_corpus()
        args.dump.mkdir(parents=True, exist_ok=True)
        for i in args.only or range(args.n):
            m = mutant(corpus, args.seed, i)
            (args.dump / f"seed{args.seed}-{i}-{m.doc.name}").write_bytes(m.data)
            print(f"#{i} {m.doc.name} [{m.desc}]")
        return 0
    settings = Settings(
        workers=args.workers,
        worker_memory=args.worker_memory_mib * MIB,
        max_frame_bytes=args.max_frame_mib * MIB,
        worker_timeout=args.worker_timeout,
        request_timeout=args.request_timeout,
        extra=dict(item.split("=", 1) for item in args.set),
    )
    work = Path(tempfile.mkdtemp(prefix="dicomsvc-fuzz-"))
    try:
        report = fuzz(args.seed, args.n, work, settings, args.clients, args.only, args.app_dir.resolve(),
                      args.save, progress=True)
    finally:
        if args.keep:
            print(f"kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_summary(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    return 0 if ok(report) else 1


if __name__ == "__main__":
    sys.exit(main())
