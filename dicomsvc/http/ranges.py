"""Range requests on file answers (RFC 9110 §14), with JSON errors like every other answer.

Starlette's ``FileResponse`` serves ``Range`` itself, but answers a malformed header
with a plain-text 400 (even an unknown range unit, which RFC 9110 §14.2 says a server
MUST ignore), and a range starting past the end of the file with a plain-text 416
even when the other ranges of the header could be served. ``RangedFileResponse``
decides first:

- a header it cannot read (another unit, or not ``bytes=`` followed by a list of
  ``first-last``, ``first-`` and ``-suffix`` specs, RFC 9110 §14.1.2; a ``last``
  below its ``first``) is ignored: the whole file, 200 (§14.2 allows ignoring an
  invalid ranges-specifier, and requires it for an unknown unit);
- specs that select no byte (``first`` at or past the end, ``-0``) are dropped, and
  when none is left the answer is 416 ``{"error": "range_not_satisfiable"}`` with
  ``Content-Range: bytes */<size>`` (§15.5.17);
- the others go on to ``FileResponse`` as a clean header (each spec ``first-last``,
  ``last`` at most the last byte), which it answers 206, or multipart for several;
  ``If-Range`` keeps its meaning (a stale validator: the whole file).
"""

import os
import re

import anyio.to_thread
from starlette.datastructures import Headers
from starlette.responses import FileResponse, JSONResponse
from starlette.types import Receive, Scope, Send

from ..errors import RangeNotSatisfiable

# RFC 9110 §14.1.2: int-range (first-pos "-" [last-pos]) or suffix-range ("-" suffix-length)
RANGE_SPEC = re.compile(r"([0-9]+)-([0-9]*)|-([0-9]+)")
HUGE = 1 << 62  # a position with more digits than any file has bytes


def plan(header: str, size: int) -> str | None:
    """The ``Range`` header to serve for a ``size``-byte file: a clean ``bytes=`` header,
    None to ignore the header (send the whole file), or RangeNotSatisfiable."""
    unit, equals, specs = header.partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return None  # §14.2: an unknown unit MUST be ignored
    wanted = []
    parts = [part.strip() for part in specs.split(",") if part.strip()]  # empty list elements (§5.6.1)
    if not parts:
        return None
    for part in parts:
        match = RANGE_SPEC.fullmatch(part)
        if match is None:
            return None  # not a ranges-specifier: ignored, as §14.2 allows
        first, last, suffix = match.groups()
        if suffix is not None:
            length = _number(suffix)
            if length > 0 and size > 0:
                wanted.append((max(size - length, 0), size - 1))
            continue
        if last and _magnitude(last) < _magnitude(first):
            return None  # invalid (§14.1.2: last-pos below first-pos)
        start, end = _number(first), _number(last) if last else HUGE
        if start < size:
            wanted.append((start, min(end, size - 1)))
    if not wanted:
        raise RangeNotSatisfiable(f"no byte range asked for lies within the file's {size} bytes")
    return "bytes=" + ",".join(f"{start}-{end}" for start, end in wanted)


def _number(digits: str) -> int:
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 18 else HUGE  # int() refuses 4,300 digits and more


def _magnitude(digits: str) -> tuple[int, str]:
    """Orders digit strings as the numbers they spell, however long."""
    digits = digits.lstrip("0") or "0"
    return len(digits), digits


class RangedFileResponse(FileResponse):
    """A ``FileResponse`` whose ``Range`` handling is ``plan``'s (see the module)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        asked, if_range = headers.get("range"), headers.get("if-range")
        if asked is not None and self.status_code == 200 and (if_range is None or self._should_use_range(if_range)):
            size = (self.stat_result or await anyio.to_thread.run_sync(os.stat, self.path)).st_size
            try:
                served = plan(asked, size)
            except RangeNotSatisfiable as exc:
                answer = JSONResponse(exc.to_json(), exc.status, headers={"Content-Range": f"bytes */{size}"})
                await answer(scope, receive, send)
                if self.background is not None:  # what FileResponse would have run (removing a temp file)
                    await self.background()
                return
            kept = [(k, v) for k, v in scope["headers"] if k != b"range"]
            if served is not None:
                kept.append((b"range", served.encode("latin-1")))
            scope = {**scope, "headers": kept}
        await super().__call__(scope, receive, send)
