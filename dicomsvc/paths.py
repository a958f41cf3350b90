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


def client_path(raw: object) -> str:
    """A ``path`` as a client sent it, checked: a non-empty string of Unicode text.

    JSON can carry lone surrogates (``"\\udce9"``); no UTF-8 file name is spelled with
    them, so they are refused here (400) rather than passed to the file system. Names
    found on disk that are not UTF-8 are reached by importing their folder.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise BadRequest("'path' must be a non-empty string")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("'path' is not valid Unicode text (it holds lone surrogates)") from None
    return raw


def resolve(root: Path, raw: object) -> Path:
    """The real path ``raw`` names, which must lie inside ``root``.

    ``raw`` may hold surrogate escapes (a name read from disk that is not UTF-8, as
    ``os.fsdecode`` gives it); a string no file name can be (NUL, unpaired surrogates)
    or one longer than the file system allows (ENAMETOOLONG) is a 400.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise BadRequest("'path' must be a non-empty string")
    if "\x00" in raw:
        raise BadRequest("'path' must not contain NUL characters")
    try:
        os.fsencode(raw)
    except UnicodeEncodeError:
        raise BadRequest("'path' is not a file name the file system can hold") from None
    real_root = root.resolve()
    target = Path(os.path.realpath(real_root / raw))  # absolute raw replaces the root
    if target != real_root and real_root not in target.parents:
        raise Forbidden("path is outside the import root")
    _check_length(real_root, target)
    return target


def _check_length(root: Path, target: Path) -> None:
    """The file system's limits, checked before any call could fail with ENAMETOOLONG:
    PATH_MAX bytes for the whole path, NAME_MAX bytes for each component (POSIX)."""
    path_max, name_max = _limit(root, "PC_PATH_MAX", 4096), _limit(root, "PC_NAME_MAX", 255)
    encoded = os.fsencode(target)
    if len(encoded) >= path_max or any(len(part) > name_max for part in encoded.split(b"/")):
        raise BadRequest(f"'path' is too long (the file system allows {path_max} bytes, {name_max} a name)")


def _limit(root: Path, name: str, default: int) -> int:
    try:
        return os.pathconf(root, name)
    except (OSError, ValueError):
        return default


def label(name: str, limit: int = 200) -> str:
    """A file name as JSON, SQLite and logs can carry it: bytes that are not UTF-8 (the
    surrogate escapes ``os.fsdecode`` makes of them) become U+FFFD, unpaired surrogates
    '?', and a name longer than ``limit`` characters is cut."""
    try:
        data = os.fsencode(name)  # surrogate escapes back to the bytes they stand for
    except UnicodeEncodeError:
        data = name.encode("utf-8", "replace")
    text = data.decode("utf-8", "replace")
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


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
    except OSError as exc:  # ENAMETOOLONG, ELOOP, EISDIR...
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
