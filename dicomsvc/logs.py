"""Logging set-up, with pydicom kept quiet: its warnings can quote values read
from a dataset (patient names included), and no patient data goes to the logs."""

import logging
import time
import warnings

import pydicom.config


def setup_logging(level: str) -> None:
    logger = logging.getLogger("dicomsvc")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    quiet_pydicom()
    # aiosqlite's debug lines quote statements' parameters: never below WARNING
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)


def quiet_pydicom() -> None:
    # Don't validate values while reading: invalid ones are kept as they are, silently.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")


class AccessLog:
    """One line per request: method, handler, status, milliseconds.

    Never the path or the query string: search filters carry patient IDs and names,
    and paths carry UIDs. (uvicorn's own access log prints both, so ``dicomsvc
    serve`` turns it off.)
    """

    def __init__(self, app):
        self.app = app
        self.log = logging.getLogger("dicomsvc.access")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def capture(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            handler = getattr(scope.get("endpoint"), "__name__", "-")
            self.log.info("%s %s %d %.1fms", scope["method"], handler, status[0], (time.perf_counter() - start) * 1e3)
