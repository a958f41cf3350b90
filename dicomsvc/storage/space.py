"""Running out of space: one answer for a full disk, wherever it is noticed.

A write that fails with ENOSPC (no space left on device) or EDQUOT (disk quota
exceeded), and SQLite's SQLITE_FULL ("database or disk is full": what SQLite
answers when its own write meets ENOSPC), become ``InsufficientStorage``:
HTTP 507, ``insufficient_storage`` (RFC 4918 §11.5, kept by RFC 9110's registry).
Whoever wrote removes what it wrote first (temporary blobs, renamed blobs, the
rolled-back transaction), so nothing half-written is left; nothing is cached
about the condition either, so the next request after space returns succeeds.
"""

import contextlib
import errno
import sqlite3
from collections.abc import Iterator

from ..errors import InsufficientStorage

SQLITE_FULL = 13  # sqlite3.h primary result code: "database or disk is full"
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
DatabaseError = sqlite3.Error  # for the app's exception handler (only storage imports sqlite3)


def is_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the quota) is full."""
    if isinstance(exc, OSError):
        return exc.errno in FULL_ERRNOS
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)  # extended code: primary in the low byte
        return (code is not None and code & 0xFF == SQLITE_FULL) or "database or disk is full" in str(exc)
    return False


def insufficient() -> InsufficientStorage:
    return InsufficientStorage("the server is out of disk space: nothing was stored; try again once space is freed")


@contextlib.contextmanager
def full_is_507() -> Iterator[None]:
    """Turn a full disk met inside the block into ``InsufficientStorage``."""
    try:
        yield
    except (OSError, sqlite3.Error) as exc:
        if is_full(exc):
            raise insufficient() from None
        raise
