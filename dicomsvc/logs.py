"""Logging set-up, with pydicom kept quiet: its warnings can quote values read
from a dataset (patient names included), and no patient data goes to the logs.

Every line logged while a request is served carries its request id, its user and
its route template (``ContextFilter``, from the ``RequestContext`` the HTTP layer
sets per request): never its URL, whose path holds UIDs and whose query holds
search values. ``DICOMSVC_LOG_FORMAT=json`` writes one JSON object per line;
``DICOMSVC_LOG_FILE`` also writes to a file rotated by size.
"""

import contextvars
import json
import logging
import logging.handlers
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
LOG_FORMATS = ("text", "json")


@dataclass
class RequestContext:
    """The request being served, as the log lines see it (one per request, in a contextvar)."""

    request_id: str
    route: Callable[[], str | None] = lambda: None  # the matched route template, once routed
    user: Callable[[], str | None] = lambda: None  # who the request is, once authenticated


_request: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("dicomsvc_request", default=None)


def begin_request(context: RequestContext) -> None:
    """Make ``context`` the current request's for this task (a task serves one request:
    uvicorn starts one per request, so nothing needs resetting, and the error handlers that
    run after the middleware still see it)."""
    _request.set(context)


def current_request() -> RequestContext | None:
    return _request.get()


class ContextFilter(logging.Filter):
    """Puts ``request_id``, ``user`` and ``route`` on every record (``-`` outside a request);
    ``status`` and ``duration_ms`` stay as the access log passes them (None otherwise)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _request.get()
        if context is None:
            record.request_id, record.user, record.route = "-", "-", "-"
        else:
            record.request_id = context.request_id
            record.user = context.user() or "-"
            record.route = context.route() or "-"
        for name in ("status", "duration_ms"):
            if not hasattr(record, name):
                setattr(record, name, None)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger, message, request_id,
    user, route (a template, never a URL), status and duration_ms (the access log's)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
            "user": getattr(record, "user", "-"),
            "route": getattr(record, "route", "-"),
            "status": getattr(record, "status", None),
            "duration_ms": getattr(record, "duration_ms", None),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class _Stderr(logging.StreamHandler):
    """A stream handler writing to whatever ``sys.stderr`` is at the time (not the one at set-up)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(
    level: str,
    fmt: str = "text",
    file: Path | None = None,
    file_bytes: int = 10 * 1024**2,
    file_count: int = 5,
) -> None:
    """The ``dicomsvc`` loggers' handlers: stderr, and ``file`` (rotated at ``file_bytes``,
    ``file_count`` old files kept) when given; text or JSON lines. Called again (a new app
    in the same process), it replaces the handlers it made before."""
    logger = logging.getLogger("dicomsvc")
    logger.setLevel(level.upper())
    formatter = JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)
    handlers: list[logging.Handler] = [_Stderr()]
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(
            logging.handlers.RotatingFileHandler(file, maxBytes=file_bytes, backupCount=file_count, encoding="utf-8")
        )
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(ContextFilter())
        handler._dicomsvc = True  # type: ignore[attr-defined]
    # uvicorn's own lines (start-up, errors) the same way, when they go to JSON or to the file
    targets = [logger] + ([logging.getLogger("uvicorn.error")] if fmt == "json" or file is not None else [])
    for target in targets:
        for old in [h for h in target.handlers if getattr(h, "_dicomsvc", False)]:
            target.removeHandler(old)
            old.close()
        if target is not logger:
            for other in list(target.handlers):  # uvicorn's plain-text handler
                target.removeHandler(other)
            target.propagate = False
        for handler in handlers:
            target.addHandler(handler)
    quiet_pydicom_logs()  # the server process never imports pydicom (dicomsvc.tasks)
    # aiosqlite's debug lines quote statements' parameters: never below WARNING
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)


def quiet_pydicom_logs() -> None:
    """pydicom's logger ("pydicom") and warnings silenced, without importing pydicom."""
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")


def quiet_pydicom() -> None:
    """Where pydicom is used (the workers; a task's first call in a process: ``dicomsvc.tasks``):
    quiet, and values not validated while reading (invalid ones are kept as they are, silently)."""
    import pydicom.config  # here, not at the top: the server process never imports pydicom

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    quiet_pydicom_logs()
