"""``Accept`` parsing, transfer syntax negotiation and the multipart/related writer of WADO-RS.

Accept (RFC 9110 §12.5.1, PS3.18 §8.7.5): a list of media ranges, each with
parameters; values quoted or not (OHIF sends both ``type="application/octet-stream"``
and ``type=application/octet-stream``), commas and semicolons inside quotes kept;
``q`` weights from 0 to 1 (malformed: 0, not acceptable); the list is tried best
first, ties in the client's order.

Negotiation (PS3.18 §8.7.3, §8.7.8): ``instance_syntax`` picks the transfer syntax
of an instance sent as ``application/dicom``, ``frames_representation`` how frames
or pixel bulk data are sent. What we can produce: a stored instance as stored, or
decompressed to Explicit VR Little Endian (we never compress). Decided here:

* No ``transfer-syntax`` parameter on ``application/dicom`` (and ``*/*``): Explicit
  VR Little Endian, the default of PS3.18 Table 8.7.3-2, except for pixel data
  stored lossy-compressed, which is sent as stored (PS3.18 §8.7.3 lets the origin
  server do so: decompressing a lossy stream only makes it bigger).
* ``transfer-syntax=*``: as stored, except Implicit VR Little Endian and Explicit VR
  Big Endian, which "shall not be used with Web Services" (PS3.18 §8.7.3): those
  become Explicit VR Little Endian.
* Frames as ``application/octet-stream``: uncompressed (Explicit VR Little Endian),
  decoded when stored compressed; with ``transfer-syntax=*`` (what OHIF asks for)
  or the stored syntax named, compressed frames are sent as stored, each part's
  Content-Type naming the syntax (``application/octet-stream;
  transfer-syntax=1.2.840.10008.1.2.4.90``), which viewers read to pick a decoder.
* Frames as a compressed media type (``image/jls``, ``image/jp2``, ``image/jpeg``,
  ``image/dicom-rle`` or ``image/x-dicom-rle``, ``image/jpx``, PS3.18 Table
  8.7.3-5): the stored frames when the stored syntax is one of that media type's
  (without a ``transfer-syntax`` parameter any of them, not only the table's
  default, so a viewer asking ``image/jpeg`` gets the stored baseline JPEG).
* Bulk data: ``multipart/related; type="application/octet-stream"`` (PS3.18 Table 10.4.4-1),
  or one ``application/octet-stream`` body for a bare ``application/octet-stream`` or ``*/*``
  (the Accept of a browser's plain fetch: OHIF's ``singlepart: "bulkdata"``).
* Nothing acceptable: None, and the caller answers 406.

The multipart body (RFC 2046 §5.1, PS3.18 §8.6.1.2): each part is
``--boundary CRLF headers CRLF CRLF body CRLF``, and the last line ``--boundary--``.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
# Native (uncompressed, not encapsulated) pixel data: frames are sent decoded-free
NATIVE_SYNTAXES = frozenset({IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE, DEFLATED_LE})
NOT_FOR_THE_WEB = frozenset({IMPLICIT_LE, EXPLICIT_BE})  # PS3.18 §8.7.3

# PS3.18 Table 8.7.3-5: the compressed bulk data media type of each transfer syntax
COMPRESSED_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",  # JPEG Baseline (Process 1), lossy
    "1.2.840.10008.1.2.4.51": "image/jpeg",  # JPEG Extended (Process 2 & 4), lossy
    "1.2.840.10008.1.2.4.57": "image/jpeg",  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70": "image/jpeg",  # JPEG Lossless, SV1
    "1.2.840.10008.1.2.5": "image/dicom-rle",  # RLE Lossless
    "1.2.840.10008.1.2.4.80": "image/jls",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "image/jls",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": "image/jp2",  # JPEG 2000 Lossless Only
    "1.2.840.10008.1.2.4.91": "image/jp2",  # JPEG 2000
    "1.2.840.10008.1.2.4.92": "image/jpx",  # JPEG 2000 Part 2 Lossless Only
    "1.2.840.10008.1.2.4.93": "image/jpx",  # JPEG 2000 Part 2
    "1.2.840.10008.1.2.4.201": "image/jphc",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": "image/jphc",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": "image/jphc",  # HTJ2K
}
# Older names still sent by clients (PS3.18 before 2019 and dicomweb-client's list)
MEDIA_ALIASES = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}
LOSSY_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.93",
        "1.2.840.10008.1.2.4.203",
    }
)
OCTET_STREAM = "application/octet-stream"
DICOM = "application/dicom"


@dataclass(frozen=True)
class MediaRange:
    """One element of an Accept header: ``media`` lower-cased, parameter names lower-cased."""

    media: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def multipart(self) -> bool:
        return self.media in ("multipart/related", "multipart/*")

    @property
    def part_type(self) -> str | None:
        """The ``type`` of a multipart range (lower-cased), None when not given."""
        kind = self.params.get("type")
        return kind.strip().lower() if kind else None

    @property
    def transfer_syntax(self) -> str | None:
        ts = self.params.get("transfer-syntax")
        return ts.strip() if ts is not None else None


def parse_accept(header: str | None) -> list[MediaRange]:
    """The acceptable media ranges of ``header``, best first (q > 0 only; stable on ties).

    An absent or empty header is ``*/*``; ranges that are not ``type/subtype`` are skipped.
    """
    if header is None or not header.strip():
        return [MediaRange("*/*")]
    ranges = []
    for item in _split(header, ","):
        media, *params = _split(item, ";")
        media = media.strip().lower()
        if media.count("/") != 1:
            continue
        values, q = {}, 1.0
        for param in params:
            name, eq, value = param.partition("=")
            name = name.strip().lower()
            if not name or not eq:
                continue
            value = _unquote(value.strip())
            if name == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0
            else:
                values[name] = value
        if q > 0:
            ranges.append(MediaRange(media, values, q))
    return sorted(ranges, key=lambda r: -r.q)  # sorted() is stable: ties keep the client's order


def _split(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside double quotes (a backslash escapes inside them)."""
    parts, current, quoted, escaped = [], [], False, False
    for ch in text:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        out, escaped = [], False
        for ch in value[1:-1]:
            if escaped or ch != "\\":
                out.append(ch)
                escaped = False
            else:
                escaped = True
        return "".join(out)
    return value


def _media_matches(pattern: str, media: str) -> bool:
    """``pattern`` (possibly ``*/*`` or ``type/*``) covers ``media``."""
    if pattern == "*/*" or pattern == media:
        return True
    kind, _, sub = pattern.partition("/")
    return sub == "*" and media.startswith(kind + "/")


# Instances (application/dicom) -------------------------------------------------------------


def instance_syntax(
    ranges: list[MediaRange], stored: str, decodable: bool, *, single_part: bool = False
) -> tuple[str, bool] | None:
    """(transfer syntax to send, multipart?) for an instance stored in ``stored``; None: 406.

    ``decodable``: its pixel data (if any) can be decoded here, so Explicit VR Little
    Endian can be produced. A bare ``application/dicom`` range is a single-part answer,
    acceptable only where ``single_part`` is (an Instance resource, PS3.18 Table 10.4.4-1).
    """
    for r in ranges:
        if r.media == DICOM:
            if not single_part:
                continue
            multipart = False
        elif r.multipart and (r.part_type in (None, DICOM) or _media_matches(r.part_type, DICOM)):
            multipart = True
        elif r.media == "*/*":
            multipart = True
        else:
            continue
        chosen = _dicom_syntax(r.transfer_syntax, stored, decodable)
        if chosen is not None:
            return chosen, multipart
    return None


def _dicom_syntax(asked: str | None, stored: str, decodable: bool) -> str | None:
    web_safe = stored not in NOT_FOR_THE_WEB
    if asked is None:  # PS3.18 Table 8.7.3-2 default, lossy data as stored (§8.7.3)
        if stored in LOSSY_SYNTAXES:
            return stored
        return EXPLICIT_LE if stored in NATIVE_SYNTAXES or decodable else None
    if asked == "*":
        if web_safe:
            return stored
        return EXPLICIT_LE
    if asked == stored and web_safe:
        return stored
    if asked == EXPLICIT_LE and (stored in NATIVE_SYNTAXES or decodable):
        return EXPLICIT_LE
    return None


# Frames and pixel bulk data (application/octet-stream, compressed media types) --------------


@dataclass(frozen=True)
class FramesAnswer:
    """How frames are sent: decoded to native bytes, or the stored compressed bytes."""

    native: bool  # True: uncompressed Explicit VR Little Endian frame bytes
    part_content_type: str  # the Content-Type of each part
    multipart: bool = True
    part_type: str = OCTET_STREAM  # the multipart ``type`` parameter

    @property
    def content_type_key(self) -> str:
        return f"{self.multipart}|{self.part_type}|{self.part_content_type}"


def frames_representation(
    ranges: list[MediaRange], stored: str, decodable: bool, *, single_part: bool = False, bulk: bool = False
) -> FramesAnswer | None:
    """How to send frames of pixel data stored in ``stored``; None: 406.

    ``single_part``: a bare ``application/octet-stream`` (or compressed media type)
    range may be answered with one part's body (one frame asked). ``bulk``: the Pixel Data
    bulk data URI, where ``*/*`` gets a single part too (what a client that fetches bulk
    data single-part sends, as OHIF's ``singlepart: "bulkdata"`` does).
    """
    compressed = stored not in NATIVE_SYNTAXES
    native_ok = not compressed or decodable
    stored_media = COMPRESSED_MEDIA.get(stored)
    native = FramesAnswer(True, f"{OCTET_STREAM}; transfer-syntax={EXPLICIT_LE}")
    for r in ranges:
        if r.multipart:
            kind, multipart = r.part_type, True
        elif r.media == "*/*":
            kind, multipart = None, not bulk
        elif single_part:
            kind, multipart = r.media, False
        else:
            continue
        asked = r.transfer_syntax
        if kind is None or kind == "*/*" or kind == OCTET_STREAM:
            # application/octet-stream: uncompressed by default (PS3.18 Table 8.7.3-4)
            if compressed and stored_media and (asked == "*" or asked == stored) and kind is not None:
                ct = f"{OCTET_STREAM}; transfer-syntax={stored}"
                return FramesAnswer(False, ct, multipart, OCTET_STREAM)
            if native_ok and asked in (None, "*", EXPLICIT_LE):
                return FramesAnswer(True, native.part_content_type, multipart, OCTET_STREAM)
            continue
        media = MEDIA_ALIASES.get(kind, kind)
        if stored_media and _media_matches(media, stored_media) and asked in (None, "*", stored):
            shown = stored_media if "*" in kind else kind  # answer with the name the client used
            return FramesAnswer(False, f"{shown}; transfer-syntax={stored}", multipart, shown)
    return None


# The multipart/related writer ----------------------------------------------------------------


class Multipart:
    """Framing of a multipart/related body: ``head(content_type)`` before each part's
    bytes, ``tail()`` after the last. ``seed`` makes the boundary a function of the
    content (for a strong ETag); without it the boundary is random."""

    def __init__(self, part_type: str, seed: str | None = None):
        self.part_type = part_type
        if seed is None:
            self.boundary = secrets.token_hex(16)
        else:
            self.boundary = hashlib.sha256(seed.encode()).hexdigest()[:32]
        self._first = True

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="{self.part_type}"; boundary={self.boundary}'

    def head(self, content_type: str, length: int | None = None) -> bytes:
        lead = b"" if self._first else b"\r\n"
        self._first = False
        lines = [f"--{self.boundary}", f"Content-Type: {content_type}"]
        if length is not None:
            lines.append(f"Content-Length: {length}")
        return lead + ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")

    def tail(self) -> bytes:
        return (b"" if self._first else b"\r\n") + f"--{self.boundary}--\r\n".encode("ascii")
