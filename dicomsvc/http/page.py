"""The page in the browser at ``/``: upload, browse, view (README "The page in the browser").

Plain HTML, CSS and JavaScript kept as package data in ``dicomsvc/http/static/`` (no build
step, nothing fetched from elsewhere). The page and its assets are public and hold no data:
everything it shows comes from the API, with the user's bearer token when auth is on.

- ``GET /``: ``index.html``, its asset URLs versioned by content hash (``/ui/app.js?v=<hash>``).
- ``GET /ui/{name}``: an asset; with the current ``v`` it is immutable for a year, otherwise
  revalidated (``ETag``, ``304`` on ``If-None-Match``, RFC 9110 §13.1.2).
- ``GET /ui/config``: what the page needs to know: the auth mode, the OHIF address
  (``DICOMSVC_OHIF_URL``) and the upload sizes (``DICOMSVC_PAGE_*``). No secrets.

Every answer carries a strict Content-Security-Policy (W3C CSP Level 3): scripts, styles and
connections only from this origin, images also from ``blob:`` (renderings fetched with the
token) and ``data:``, no inline script, no frames, no plugins.
"""

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import __version__
from ..errors import NotFound

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the page's URL (a study UID in its fragment) goes nowhere
    "X-Frame-Options": "DENY",
}
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"  # kept, but asked again (ETag) before each use
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
ASSET_NAMES = ("app.js", "app.css", "favicon.svg")


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    version: str  # the first 16 hex digits of the body's SHA-256

    @property
    def etag(self) -> str:
        return f'"{self.version}"'


def _asset(name: str, body: bytes) -> Asset:
    media_type = MEDIA_TYPES[name[name.rindex(".") :]]
    return Asset(body, media_type, hashlib.sha256(body).hexdigest()[:16])


@functools.cache
def assets() -> dict[str, Asset]:
    """The assets, read once from the package (a wheel has no source tree: importlib.resources)."""
    folder = resources.files(__package__) / "static"
    return {name: _asset(name, (folder / name).read_bytes()) for name in ASSET_NAMES}


@functools.cache
def index() -> Asset:
    """index.html with each ``{{name}}`` replaced by the asset's versioned URL."""
    text = (resources.files(__package__) / "static" / "index.html").read_text("utf-8")
    for name, asset in assets().items():
        text = text.replace("{{" + name + "}}", f"/ui/{name}?v={asset.version}")
    return _asset("index.html", text.replace("{{version}}", __version__).encode())


def _answer(request: Request, asset: Asset, cache_control: str) -> Response:
    headers = SECURITY_HEADERS | {"ETag": asset.etag, "Cache-Control": cache_control}
    if asset.etag in (tag.strip() for tag in request.headers.get("if-none-match", "").split(",")):
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


async def get_page(request: Request) -> Response:
    return _answer(request, index(), REVALIDATE)


async def get_asset(request: Request) -> Response:
    asset = assets().get(request.path_params["name"])
    if asset is None:
        raise NotFound("no such asset")
    current = request.query_params.get("v") == asset.version
    return _answer(request, asset, IMMUTABLE if current else REVALIDATE)


async def get_config(request: Request) -> JSONResponse:
    config = request.app.state.svc.config
    body = {
        "version": __version__,
        "auth": config.auth,  # none | token | oidc: whether the page asks for a token
        "ohif_url": config.ohif_url or None,
        "resumable_bytes": config.page_resumable_bytes,
        "chunk_bytes": config.page_chunk_bytes,
        "batch_bytes": min(config.page_batch_bytes, config.max_upload_bytes),
        "max_upload_bytes": config.max_upload_bytes,
        "qido_max_results": config.qido_max_results,  # the list says when the server caps its pages
    }
    return JSONResponse(body, headers=SECURITY_HEADERS | {"Cache-Control": "no-store"})


def _op(summary: str, media: str, more: dict | None = None, parameters: list | None = None) -> dict:
    responses = {"200": {"description": summary, "content": {media: {"schema": {}}}}} | (more or {})
    return {"get": {"summary": summary, "responses": responses, **({"parameters": parameters} if parameters else {})}}


_NAME = {"name": "name", "in": "path", "required": True, "description": "app.js, app.css or favicon.svg",
         "schema": {"type": "string"}}  # fmt: skip
_V = {"name": "v", "in": "query", "required": False, "description": "the asset's version (immutable when current)",
      "schema": {"type": "string"}}  # fmt: skip
_NOT_FOUND = {"404": {"description": "no such asset", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}

OPENAPI = {
    "/": _op("The page in the browser: upload, browse studies, view series (public; holds no data)", "text/html"),
    "/ui/config": _op("What the page needs: {version, auth, ohif_url, resumable_bytes, chunk_bytes, batch_bytes, "
                      "max_upload_bytes, qido_max_results}", "application/json"),
    "/ui/{name}": _op("The page's scripts, styles and icon", "text/javascript", _NOT_FOUND, [_NAME, _V]),
}  # fmt: skip
