"""Turning a client's ``path`` into a regular file inside the import root, safely.

Anything that resolves outside the root (``..``, absolute paths elsewhere,
symlinks pointing out) is refused with 403. Only regular files are opened:
devices, FIFOs, sockets and directories are refused from ``stat`` alone, and the
open itself is non-blocking and re-checked with ``fstat`` so a file swapped for
a FIFO between the two checks cannot hang a worker.
"""

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import BadRequest, Forbidden, NotFound


def resolve(root: Path, raw: object) -> Path:
    """The real path ``raw`` names, which must lie inside ``root``."""
    if not isinstance(raw, str) or not raw.strip():
        raise BadRequest("'path' must be a non-empty string")
    if "\x00" in raw:
        raise BadRequest("'path' must not contain NUL characters")
    real_root = root.resolve()
    target = Path(os.path.realpath(real_root / raw))  # absolute raw replaces the root
    if target != real_root and real_root not in target.parents:
        raise Forbidden("path is outside the import root")
    return target


def open_regular(path: Path, shown: str) -> BinaryIO:
    """Open ``path`` for reading if, and only if, it is a regular file."""
    with _os_errors(shown):
        _require_regular(os.stat(path).st_mode, shown)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY)
    try:
        _require_regular(os.fstat(fd).st_mode, shown)  # the same file as the one checked
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


@contextlib.contextmanager
def _os_errors(shown: str) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:
        raise NotFound(f"no such file: {shown}") from None
    except PermissionError:
        raise Forbidden(f"not readable: {shown}") from None
    except OSError as exc:
        raise BadRequest(f"cannot open {shown}: {exc.strerror}") from None


def _require_regular(mode: int, shown: str) -> None:
    if stat.S_ISREG(mode):
        return
    kind = (
        "a directory" if stat.S_ISDIR(mode)
        else "a FIFO" if stat.S_ISFIFO(mode)
        else "a socket" if stat.S_ISSOCK(mode)
        else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "not a regular file"
    )
    raise BadRequest(f"{shown} is {kind}; only regular files can be imported")
