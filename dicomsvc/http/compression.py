"""gzip for JSON and multipart answers, never for images (RFC 9110 §8.4 Content-Encoding).

Starlette's GZipMiddleware compresses every type; pixels already compressed (JPEG, PNG,
JPEG-LS, JPEG 2000) or about to be sent whole gain nothing and cost a core. Here only
JSON, DICOM JSON, text and ``multipart/related`` answers (whose parts are not images) are
compressed, when the client accepts gzip, as they stream; large chunks are compressed in a
thread, so a big answer does not hold up the event loop.

A compressed answer is another representation, so a strong ETag gets ``-gzip`` inside its
quotes (as Apache does) and the answer varies by Accept-Encoding. An ``If-None-Match`` with
such a tag is handed to the route without the suffix, and a 304 gets it back.
"""

import asyncio
import re
import zlib

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COMPRESSED_TYPES = ("application/json", "application/dicom+json", "application/dicom+xml", "text/")
# multipart/related parts that are pixels: compressed frames (image/jpeg, image/jls, ...), video,
# and uncompressed frames (application/octet-stream, PS3.18 §8.7.3.3): deflating raw pixels
# costs ~10x the answer's own time (a 512x512 frame: 132 ms instead of 12) for little gain
NOT_COMPRESSED_PARTS = ("image/", "video/", "application/octet-stream")
MINIMUM_SIZE = 500  # bytes: below this gzip's header and the work are not worth it
LEVEL = 1  # JSON shrinks 5-10x even at level 1; higher levels cost far more time for little
THREAD_FROM = 64 * 1024  # chunks at least this large are compressed in a thread
SUFFIX = "-gzip"
ETAG_IN_LIST = re.compile(r'((?:W/)?"[^"]*?)-gzip"')


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header accepts gzip (RFC 9110 §12.5.3: q=0 refuses)."""
    for item in accept_encoding.split(","):
        name, _, params = item.strip().partition(";")
        if name.strip().lower() not in ("gzip", "x-gzip", "*"):
            continue
        q = re.search(r"q\s*=\s*([0-9.]+)", params)
        try:
            if q is None or float(q.group(1)) > 0:
                return True
        except ValueError:
            continue
    return False


def compressible(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "multipart/related":
        part = re.search(r'type\s*=\s*"?([^";]+)', content_type, re.I)
        return part is None or not part.group(1).strip().lower().startswith(NOT_COMPRESSED_PARTS)
    return media.startswith(COMPRESSED_TYPES)


class GzipMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        gzip_ok = accepts_gzip(headers.get("accept-encoding", ""))
        stripped = False
        if gzip_ok and SUFFIX in headers.get("if-none-match", ""):
            scope = dict(scope)
            scope["headers"] = [
                (k, ETAG_IN_LIST.sub(r'\1"', v.decode("latin-1")).encode("latin-1") if k == b"if-none-match" else v)
                for k, v in scope["headers"]
            ]
            stripped = True
        await _Responder(self.app, gzip_ok, stripped)(scope, receive, send)


def _with_suffix(etag: str) -> str:
    return etag[:-1] + SUFFIX + '"' if etag.endswith('"') and not etag.endswith(SUFFIX + '"') else etag


class _Responder:
    def __init__(self, app: ASGIApp, gzip_ok: bool, stripped: bool) -> None:
        self.app, self.gzip_ok, self.stripped = app, gzip_ok, stripped
        self.start: Message | None = None
        self.compressor = None
        self.send: Send | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.send = send
        await self.app(scope, receive, self.on_send)

    async def on_send(self, message: Message) -> None:
        send = self.send
        if message["type"] == "http.response.start":
            headers = MutableHeaders(raw=message["headers"])
            if message["status"] == 304 and self.stripped and "etag" in headers:
                headers["etag"] = _with_suffix(headers["etag"])
            kind = headers.get("content-type", "")
            if compressible(kind) and "content-encoding" not in headers and message["status"] not in (204, 304):
                headers.add_vary_header("Accept-Encoding")
                if self.gzip_ok:
                    self.start = message  # sent with the first body chunk, once its size is known
                    return
            await send(message)
            return
        if message["type"] != "http.response.body" or (self.start is None and self.compressor is None):
            await send(message)
            return
        body, more = message.get("body", b""), message.get("more_body", False)
        if self.start is not None:
            start, self.start = self.start, None
            if not more and len(body) < MINIMUM_SIZE:  # small: as it is
                await send(start)
                await send(message)
                return
            headers = MutableHeaders(raw=start["headers"])
            headers["Content-Encoding"] = "gzip"
            if "content-length" in headers:
                del headers["content-length"]
            if "etag" in headers and not headers["etag"].startswith("W/"):
                headers["etag"] = _with_suffix(headers["etag"])
            self.compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, 31)  # 31: the gzip wrapper
            await send(start)
        data = await self._compress(body, final=not more)
        if data or not more:
            await send({"type": "http.response.body", "body": data, "more_body": more})

    async def _compress(self, body: bytes, final: bool) -> bytes:
        compressor = self.compressor

        def work() -> bytes:
            return compressor.compress(body) + (compressor.flush() if final else b"")

        if len(body) >= THREAD_FROM:
            return await asyncio.get_running_loop().run_in_executor(None, work)
        return work()
