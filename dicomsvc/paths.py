"""Turning a client's ``path`` into a regular file inside the import root, safely.

Anything that resolves outside the root (``..``, absolute paths elsewhere,
symlinks pointing out) is refused with 403. Nothing is checked by name and then
opened by name again: every lookup starts from a descriptor of the root and may
not leave it at any component, so a folder swapped for a link between two steps
cannot lead outside. Where the kernel has openat2(2) (Linux 5.6), one call with
``RESOLVE_BENEATH`` does the lookup; elsewhere ``_walk`` opens one component at
a time with ``O_NOFOLLOW`` relative to the one before and reads links itself.

Links inside the root are followed while they stay inside it, as before (shared
import folders hold them): relative ones, and absolute ones naming a place in
the root (``RESOLVE_BENEATH`` refuses every absolute link, so those lookups are
finished by ``_walk``). ``..`` never climbs above the root.

Only regular files are read. The file is first opened ``O_PATH`` (which opens
nothing: no FIFO can block, no device sees an open), checked with ``fstat``, and
only then reopened for reading through ``/proc/self/fd``: the same inode,
whatever has become of its name meanwhile.
"""

import contextlib
import ctypes
import errno
import os
import platform
import posixpath
import stat
import sys
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
    or one longer than the file system allows (ENAMETOOLONG) is a 400. A file that is
    not there resolves to its folder's real path and its name (opening it is a 404).
    """
    relative = _relative(root, raw)
    _check_length(root, root / relative)
    with _os_errors(label(raw)), _root(root) as root_fd:
        try:
            return root / _real(root_fd, root, relative)
        except FileNotFoundError:  # not there (yet): its folder's real path, and its name
            head, name = posixpath.split(relative.rstrip("/"))
            if name in ("", ".", ".."):
                raise
            return root / _real(root_fd, root, head or ".") / name


def resolve_kind(root: Path, raw: object) -> tuple[Path, bool]:
    """``resolve``, and whether the path names a folder (False when that cannot be told:
    EACCES on a parent, say; opening it then answers with the reason)."""
    real = resolve(root, raw)
    try:
        return real, real.is_dir()
    except OSError:
        return real, False


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


def open_file(root: Path, raw: object) -> tuple[BinaryIO, str]:
    """Open the file ``raw`` names beneath ``root`` for reading, if it is a regular file;
    and where it is, relative to the root (a label, for the record)."""
    relative = _relative(root, raw)
    shown = label(raw)
    _check_length(root, root / relative)
    with _os_errors(shown), _root(root) as root_fd:
        where = _open_beneath(root_fd, root, relative, _O_PATH)
        try:
            checked = os.fstat(where)
            _require_regular(checked.st_mode, shown)
            name = _real(where, root, relative, opened=True)
            fd = _reopen(where, root_fd, root, relative)
        finally:
            os.close(where)
    try:
        opened = os.fstat(fd)
        _require_regular(opened.st_mode, shown)
        if not os.path.samestat(checked, opened):  # only without /proc: it changed in between
            raise NotFound(f"no such file: {shown} (it was replaced while being opened)")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb"), label(name)


def walk_files(root: Path, folder: str) -> Iterator[str]:
    """Everything but folders below ``folder`` (relative to ``root``), as paths relative to
    the root, in ``os.walk``'s order: a folder's entries sorted, its files before its
    subfolders. Each folder is opened beneath the root, a subfolder with ``O_NOFOLLOW``
    (one swapped for a link since it was listed is passed over, like one that vanished),
    and listed once; links to folders are not followed (``os.walk(followlinks=False)``).
    Links to files are listed: opening them (``open_file``) decides where they lead.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK
    seen: set[tuple[int, int]] = set()
    todo = [folder]
    with _os_errors(label(folder)), _root(root) as root_fd:
        while todo:
            current = todo.pop()
            try:
                fd = _open_beneath(root_fd, root, current, flags | (0 if current == folder else os.O_NOFOLLOW))
            except (OSError, Forbidden):
                if current == folder:
                    raise
                continue
            try:
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                files, folders = _list(fd)
            finally:
                os.close(fd)
            prefix = "" if current == "." else current.rstrip("/") + "/"
            yield from (prefix + name for name in files)
            todo.extend(prefix + name for name in reversed(folders))


def _list(fd: int) -> tuple[list[str], list[str]]:
    """The names in an open folder: (files, subfolders), each sorted."""
    files, folders = [], []
    with os.scandir(fd) as entries:
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.name)
                elif not (entry.is_symlink() and entry.is_dir()):
                    files.append(entry.name)
            except OSError:  # gone since it was listed
                continue
    return sorted(files), sorted(folders)


# Opening beneath the root ------------------------------------------------------------------

_O_PATH = getattr(os, "O_PATH", 0)
_O_READ = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY  # non-blocking: a FIFO cannot hang a worker
# struct open_how's resolve flags (linux/openat2.h)
RESOLVE_NO_MAGICLINKS, RESOLVE_BENEATH = 0x02, 0x08
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437}.get(platform.machine()) if sys.platform == "linux" else None
MAX_LINKS = 40  # links followed in one lookup, as Linux's MAXSYMLINKS (path_resolution(7))
_PROC_FD = os.path.isdir("/proc/self/fd")


class _OpenHow(ctypes.Structure):
    """``struct open_how`` of openat2(2): flags, mode and resolve, each a __u64."""

    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True) if _SYS_OPENAT2 else None
if _libc is not None:
    _libc.syscall.restype = ctypes.c_long
_have_openat2 = _libc is not None


@contextlib.contextmanager
def _root(root: Path) -> Iterator[int]:
    fd = os.open(root, _O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _relative(root: Path, raw: object) -> str:
    """``raw`` as a path relative to the root; an absolute one must name a place in it.

    Tried lexically first, then by the file each leading part of ``raw`` is (so a path
    through a link outside the root that leads to the root, as a mount often is, still
    counts). Only what follows the root is ever looked up, and that beneath the root.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise BadRequest("'path' must be a non-empty string")
    if "\x00" in raw:
        raise BadRequest("'path' must not contain NUL characters")
    try:
        os.fsencode(raw)
    except UnicodeEncodeError:
        raise BadRequest("'path' is not a file name the file system can hold") from None
    if not raw.startswith("/"):
        return _no_climbing(raw)
    inside = _under(root, raw)
    if inside is not None:
        return _no_climbing(inside)
    try:
        root_stat = os.stat(root)
    except OSError:
        raise Forbidden("path is outside the import root") from None
    parts = raw.split("/")
    for end in range(2, len(parts) + 1):
        try:
            st = os.stat("/".join(parts[:end]))
        except (OSError, ValueError):
            break
        if os.path.samestat(st, root_stat):
            return _no_climbing("/".join(parts[end:]) or ".")
    raise Forbidden("path is outside the import root")


def _no_climbing(relative: str) -> str:
    """Refuse a path whose ``..`` climb above the root as spelled (``a/../../x``), even
    where a missing ``a`` would make the lookup a 404: it is outside either way."""
    normal = posixpath.normpath(relative)
    if normal == ".." or normal.startswith("../"):
        raise Forbidden("path is outside the import root")
    return relative


def _under(root: Path, absolute: str) -> str | None:
    """``absolute`` relative to ``root`` if it is spelled as a place in it, else None."""
    prefix = str(root).rstrip("/")
    if absolute.rstrip("/") == prefix:
        return "."
    if absolute.startswith(prefix + "/"):
        return absolute[len(prefix) + 1 :] or "."
    return None


def _parts(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def _open_beneath(root_fd: int, root: Path, relative: str, flags: int) -> int:
    """A descriptor for ``relative``, looked up beneath ``root_fd`` and never outside it."""
    fd = _openat2(root_fd, relative, flags)
    return fd if fd is not None else _walk(root_fd, root, relative, flags)


def _openat2(root_fd: int, relative: str, flags: int) -> int | None:
    """openat2(root_fd, relative, {flags, 0, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS}).

    None when ``_walk`` must answer instead: the kernel has no openat2 (ENOSYS; EPERM
    from a container's seccomp filter), or refused a lookup that may still be fine
    (EXDEV: ``..`` or a link leaving the root, or any absolute link; ELOOP).
    """
    global _have_openat2
    if not _have_openat2:
        return None
    how = _OpenHow(flags | os.O_CLOEXEC, 0, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
    path = os.fsencode(relative) or b"."
    for _ in range(8):
        fd = _libc.syscall(
            ctypes.c_long(_SYS_OPENAT2), ctypes.c_long(root_fd), ctypes.c_char_p(path),
            ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)),
        )  # fmt: skip
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err == errno.EAGAIN:  # a rename elsewhere raced the lookup: the kernel asks to retry
            continue
        if err in (errno.ENOSYS, errno.E2BIG):
            _have_openat2 = False
            return None
        if err in (errno.EXDEV, errno.ELOOP, errno.EPERM, errno.EINVAL):
            return None
        raise OSError(err, os.strerror(err), relative)
    return None


def _walk(root_fd: int, root: Path, relative: str, flags: int) -> int:
    """``RESOLVE_BENEATH`` by hand: each component opened ``O_NOFOLLOW`` relative to the
    folder before it; ``..`` taken off our own stack of folders (never asked of the
    kernel, so it cannot climb out of the root); links read and spliced into the rest
    of the path, an absolute one only if it names a place in the root (lookup then
    starts again at the root). ``O_NOFOLLOW`` in ``flags`` refuses a link at the end."""
    todo = _parts(relative)
    stack = [os.dup(root_fd)]
    links = 0
    try:
        while todo:
            name = todo.pop(0)
            if name == "..":
                if len(stack) == 1:
                    raise Forbidden("path is outside the import root")
                os.close(stack.pop())
                continue
            last = not todo
            want = flags if last else _O_PATH | os.O_DIRECTORY
            fd = _open_component(name, stack[-1], want)
            if fd is not None and fd >= 0:
                if last:
                    return fd
                stack.append(fd)
                continue
            if fd is None and last and flags & os.O_NOFOLLOW:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), relative)
            links += 1  # a link followed, or a name that changed under us: both count
            if links > MAX_LINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), relative)
            if fd is not None:  # it changed between the open and the look at it
                todo.insert(0, name)
                continue
            try:
                target = os.readlink(name, dir_fd=stack[-1])
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                todo.insert(0, name)  # no longer a link: look again
                continue
            if target.startswith("/"):
                inside = _under(root, target)
                if inside is None:
                    raise Forbidden("path is outside the import root")
                while len(stack) > 1:
                    os.close(stack.pop())
                target = inside
            todo[:0] = _parts(target)
        return os.open(".", flags | os.O_CLOEXEC, dir_fd=stack[-1])
    finally:
        for fd in stack:
            os.close(fd)


def _open_component(name: str, dir_fd: int, flags: int) -> int | None:
    """``name`` in ``dir_fd`` opened without following a link; None if it is a link,
    -1 if it changed between the open and the look at it (a link became a folder)."""
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        try:
            mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
        except OSError:
            raise exc from None
        if stat.S_ISLNK(mode):
            return None
        if exc.errno == errno.ELOOP or (flags & os.O_DIRECTORY and stat.S_ISDIR(mode)):
            return -1
        raise
    if flags & _O_PATH and stat.S_ISLNK(os.fstat(fd).st_mode):  # O_PATH|O_NOFOLLOW opens the link itself
        os.close(fd)
        return None
    return fd


def _real(fd_or_root: int, root: Path, relative: str, opened: bool = False) -> str:
    """Where ``relative`` is, relative to the root: read from the kernel's name for the
    open descriptor (``/proc/self/fd``), else ``relative`` made normal. With
    ``opened=False``, ``fd_or_root`` is the root's descriptor and ``relative`` is opened
    (``O_PATH``) first."""
    fd = fd_or_root if opened else _open_beneath(fd_or_root, root, relative, _O_PATH)
    try:
        if _PROC_FD:
            with contextlib.suppress(OSError):
                inside = _under(root, os.readlink(f"/proc/self/fd/{fd}"))
                if inside is not None:
                    return inside
    finally:
        if not opened:
            os.close(fd)
    normal = posixpath.normpath(relative)
    if normal == ".." or normal.startswith("../"):  # moved out of the root since it was opened
        raise Forbidden("path is outside the import root")
    return normal


def _reopen(where: int, root_fd: int, root: Path, relative: str) -> int:
    """The file ``where`` (an ``O_PATH`` descriptor) is, opened for reading: through
    ``/proc/self/fd`` (the same inode, whatever its name now is), or, without /proc,
    by looking it up beneath the root again (the caller compares the two)."""
    if _PROC_FD:
        return os.open(f"/proc/self/fd/{where}", _O_READ | os.O_CLOEXEC)
    return _open_beneath(root_fd, root, relative, _O_READ)


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
