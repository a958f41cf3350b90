"""The ``dicomsvc`` command: ``dicomsvc serve``, ``dicomsvc import``, ``dicomsvc token`` and ``dicomsvc keys``."""

import argparse
import logging
import os
import sys

from ..config import Config


def _positive(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {raw!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _import(args: argparse.Namespace) -> int:
    """Run the bulk importer: progress on stderr, summary on stdout; exit 0, 1 (failures) or 2 (unreachable)."""
    from . import importer  # needs httpx; ``serve`` does not

    try:
        summary = importer.import_paths(
            args.paths, args.url, jobs=args.jobs, anonymize=args.anonymize, progress=sys.stderr,
            token=args.token or os.environ.get("DICOMSVC_TOKEN") or None,
            resumable_over=args.resumable_over or None,
        )  # fmt: skip
    except KeyboardInterrupt:
        print("dicomsvc import: interrupted", file=sys.stderr)
        return 130
    print(importer.format_summary(summary))
    if summary.unreachable is not None:
        print(f"dicomsvc import: {summary.unreachable} (is `dicomsvc serve` running there?)", file=sys.stderr)
    return summary.exit_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dicomsvc", description="DICOM ingest-and-render service")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the HTTP service (DICOMSVC_* variables configure it)")
    imp = commands.add_parser(
        "import",
        help="upload DICOM files, folders and ZIP archives to a running service",
        description="Upload files, folders (recursively) and ZIP archives to POST {url}/dicom. "
        "Exit status: 0 all stored or duplicates, 1 some files failed, 2 server unreachable.",
    )
    imp.add_argument("paths", nargs="+", metavar="PATH", help="a DICOM file, a folder or a .zip archive")
    imp.add_argument("--url", default="http://localhost:8001", help="service base URL (default: %(default)s)")
    imp.add_argument("--jobs", type=_positive, default=4, help="parallel uploads (default: %(default)s)")
    imp.add_argument("--anonymize", action="store_true", help="ask the server to anonymize (?anonymize=true)")
    imp.add_argument(
        "--token", help="send Authorization: Bearer TOKEN (an API token or an OIDC access token; default: $DICOMSVC_TOKEN)"
    )
    imp.add_argument(
        "--resumable-over", type=_non_negative, default=64 * 1024**2, metavar="BYTES",  # importer.RESUMABLE_OVER
        help="send files larger than this as resumable tus uploads to {url}/uploads/, in chunks that survive a "
        "broken connection (0: never; default: %(default)s)",
    )
    from . import tokens  # dicomsvc token create|list|revoke

    tokens.add_parser(commands)
    from . import keys  # dicomsvc keys rotate

    keys.add_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve()
    if args.command == "token":
        return tokens.run(args)
    if args.command == "keys":
        return keys.run(args)
    return _import(args)


def _serve() -> int:
    """Run the service until stopped; a start-up that fails exits 1 at once, saying why."""
    from app import create_app  # the routes (app.py, installed beside the package)

    from .. import heap
    from .server import Server, uvicorn_config

    try:
        config = Config.from_env()  # the one reading of the environment
    except ValueError as exc:
        print(f"dicomsvc serve: {exc}", file=sys.stderr)
        return 2
    heap.hold()  # request bodies stay on the heap between requests (dicomsvc.heap)
    server = Server(uvicorn_config(create_app(config), config))
    server.run()
    if not server.started:  # the lifespan failed (its reason is logged) or the port was taken
        logging.getLogger("dicomsvc").error("dicomsvc did not start")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
