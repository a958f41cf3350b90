"""The ``dicomsvc`` command: ``dicomsvc serve``."""

import argparse

import uvicorn

from .config import Config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dicomsvc", description="DICOM ingest-and-render service")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the HTTP service (DICOMSVC_* variables configure it)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        config = Config.from_env()
        uvicorn.run("app:app", host=config.host, port=config.port, log_level=config.log_level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
