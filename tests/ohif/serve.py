"""A static server for OHIF Viewer's prebuilt app (the ``dist/`` of npm ``@ohif/app``), on its own
origin: files as they are, ``/app-config.js`` from a file of ours, and every other path that is not
a file answered with ``index.html`` (OHIF is a single-page app: ``/viewer?StudyInstanceUIDs=...``
is a client-side route).

    python tests/ohif/serve.py --dist .cache/ohif/app-3.13.2/dist --config my-app-config.js --port 3000

Prints ``serving http://HOST:PORT`` once it listens (``--port 0``: a free port). Standard library
only; loopback by default.
"""

from __future__ import annotations

import argparse
import mimetypes
import posixpath
import sys
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".wasm": "application/wasm",  # WebAssembly.instantiateStreaming requires it
    ".json": "application/json",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".woff2": "font/woff2",
}


class Handler(SimpleHTTPRequestHandler):
    config_file: Path

    extensions_map = {**mimetypes.types_map, **TYPES}

    def translate_path(self, path: str) -> str:
        route = posixpath.normpath(unquote(urlsplit(path).path))
        if route == "/app-config.js":
            return str(self.config_file)
        local = Path(super().translate_path(path))
        if local.is_file():
            return str(local)
        if Path(self.directory) in local.parents and local.suffix in TYPES:
            return str(local)  # a missing script or wasm: a 404, not index.html
        return str(Path(self.directory) / "index.html")

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        pass


def make_server(dist: Path, config: Path, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    handler = type("OhifHandler", (Handler,), {"config_file": config.resolve()})
    server = ThreadingHTTPServer((host, port), partial(handler, directory=str(dist.resolve())))
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dist", type=Path, required=True, help="OHIF's dist/ folder")
    parser.add_argument("--config", type=Path, required=True, help="the app-config.js to serve")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    args = parser.parse_args(argv)
    if not (args.dist / "index.html").is_file():
        parser.error(f"{args.dist} has no index.html (run tests/ohif/setup.sh)")
    if not args.config.is_file():
        parser.error(f"{args.config} is not a file")
    server = make_server(args.dist, args.config, args.host, args.port)
    host, port = server.server_address[:2]
    print(f"serving http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
