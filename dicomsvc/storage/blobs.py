"""Local blob storage: ``<root>/<first 2 chars of id>/<id>.<ext>``.

Blobs are written under ``<root>/.tmp`` and renamed into place, so a reader
never sees half a file; whatever is left in ``.tmp`` after a crash is removed
at the next start.

Durability: a blob's data is synced (``fdatasync``) before it is renamed into
place, and ``sync`` fsyncs every folder renamed into since (once per folder, however
many blobs: a batch shares the syncs) -- callers sync before the row that points at
the blobs commits, so a committed row never points at a name or data a power cut can
lose (POSIX fsync(2): a file's directory entry is durable only once the directory is
synced).

In a worker process, what a task writes carries the task's tag (``begin_task``):
its temporary files are named ``<tag>-...``, and each blob it renames into place
is noted in ``.tmp/<tag>.placed`` first. When a worker dies mid-task, the
service removes those (``task_leftovers``) before it answers the request.
"""

import os
import secrets
import threading
from concurrent.futures import Future, ThreadPoolExecutor
import shutil
import stat
from pathlib import Path
from typing import BinaryIO

from ..errors import TooLarge

COPY_CHUNK = 1 << 20

_task: str | None = None  # the tag of the worker task running in this process

# Data syncs started early (``sync_soon``): a temporary blob's path -> its fdatasync under way.
# One thread per process, made on first use (in a worker, never before it forks).
_early: dict[Path, Future] = {}
_early_lock = threading.Lock()
_syncer: ThreadPoolExecutor | None = None


def begin_task(tag: str | None) -> None:
    """From now on, this process writes for the task ``tag`` (None: no task)."""
    global _task
    _task = tag


def end_task(tmp: Path) -> None:
    """The task finished (answered, even with an error): its notes are no longer needed."""
    global _task
    if _task is not None:
        (tmp / f"{_task}.placed").unlink(missing_ok=True)
    _task = None


class BlobStore:
    def __init__(self, root: Path):
        self.root = root
        self.tmp = root / ".tmp"
        self.unsynced: set[Path] = set()  # folders renamed into (or made) since the last ``sync``

    def open(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()

    @staticmethod
    def key(blob_id: str, ext: str) -> str:
        """The blob's path relative to the root, as the database records it."""
        return f"{blob_id[:2]}/{blob_id}.{ext}"

    def path(self, key: str) -> Path:
        return self.root / key

    def create_temp(self, suffix: str) -> tuple[Path, BinaryIO]:
        """A new, exclusively created file in temp space (cheaper than mkstemp)."""
        path = self.temp_path(suffix)
        return path, open(path, "xb")

    def temp_path(self, suffix: str) -> Path:
        """A new name in temp space, carrying the running task's tag."""
        prefix = f"{_task}-" if _task else ""
        return self.tmp / f"{prefix}{secrets.token_hex(12)}{suffix}"

    def task_leftovers(self, tag: str) -> tuple[list[Path], list[str]]:
        """What the task ``tag`` left: its temporary files, and the keys of the blobs it
        renamed (or was about to rename) into place, which no row may point at."""
        try:
            names = os.listdir(self.tmp)
        except FileNotFoundError:
            return [], []
        temps = [self.tmp / n for n in names if n.startswith(f"{tag}-") or n == f"{tag}.placed"]
        try:
            keys = (self.tmp / f"{tag}.placed").read_text().split()
        except FileNotFoundError:
            keys = []
        return temps, keys

    def write_temp(self, data: bytes, suffix: str = "") -> Path:
        """``data`` in a new temporary blob; on any error (a full disk) none is left."""
        path, out = self.create_temp(suffix)
        try:
            with out:
                out.write(data)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    def spool(self, src: BinaryIO, max_bytes: int, suffix: str = ".dcm") -> Path:
        """Copy a stream to a temporary blob, refusing more than ``max_bytes``."""
        path, out = self.create_temp(suffix)
        try:
            with out:
                size = _regular_file_size(src)
                if size is not None:  # a file: let the kernel copy it
                    if size > max_bytes:
                        raise TooLarge(f"file is larger than the limit of {max_bytes} bytes")
                    _copy_file(src, out, size)
                else:
                    copied = 0
                    while chunk := src.read(COPY_CHUNK):
                        copied += len(chunk)
                        if copied > max_bytes:
                            raise TooLarge(f"more than the limit of {max_bytes} bytes")
                        out.write(chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    @staticmethod
    def sync_soon(temp: Path) -> None:
        """Start syncing a finished temporary blob's data in the background (fdatasync releases
        the GIL), so the disk flush overlaps parsing and rendering; ``commit`` waits for it."""
        global _syncer
        with _early_lock:
            if _syncer is None:
                _syncer = ThreadPoolExecutor(1, thread_name_prefix="blob-sync")
            _early[temp] = _syncer.submit(sync_data, temp)

    def commit(self, temp: Path, key: str) -> None:
        """Rename a temporary blob into place (in a worker task, noting its key first).

        Its data is synced first (or the sync ``sync_soon`` started is waited for, and its
        error raised); the rename itself is durable after ``sync``."""
        self.commit_all([(temp, key)])

    def commit_all(self, blobs: list[tuple[Path, str]]) -> None:
        """``commit`` for several (temp, key): their keys noted in one write."""
        if _task is not None:
            with open(self.tmp / f"{_task}.placed", "a") as note:
                note.write("".join(key + "\n" for _, key in blobs))
        for temp, key in blobs:
            self._place(temp, key)

    def _place(self, temp: Path, key: str) -> None:
        final = self.path(key)
        with _early_lock:
            early = _early.pop(temp, None)
        if early is not None:
            early.result()
        else:
            sync_data(temp)
        try:
            os.replace(temp, final)
        except FileNotFoundError:  # the first blob of its two-character folder
            final.parent.mkdir(exist_ok=True)
            self.unsynced.add(self.root)  # the new folder's own entry
            os.replace(temp, final)
        self.unsynced.add(final.parent)

    def sync(self) -> None:
        """Make the renames since the last call durable: one fsync per folder they touched."""
        while self.unsynced:
            folder = self.unsynced.pop()
            try:
                sync_folder(folder)
            except BaseException:
                self.unsynced.add(folder)
                raise

    def remove(self, *keys: str | None) -> None:
        for key in keys:
            if key:
                self.path(key).unlink(missing_ok=True)

    def renderings(self, blob_id: str) -> Path:
        """Folder of an instance's cached non-default renderings."""
        return self.root / blob_id[:2] / f"{blob_id}.renderings"

    def remove_renderings(self, blob_id: str) -> None:
        self.remove_tree(self.renderings(blob_id))

    @staticmethod
    def remove_tree(path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    @staticmethod
    def discard(*temps: Path | None) -> None:
        for temp in temps:
            if temp is not None:
                with _early_lock:
                    _early.pop(temp, None)  # a sync under way finishes on the unlinked file
                temp.unlink(missing_ok=True)


def sync_data(path: Path) -> None:
    """fdatasync(2) a file written earlier (a read-only descriptor is enough on Linux):
    its bytes and the size that reads them back reach the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def sync_folder(path: Path) -> None:
    """fsync(2) a directory: the names created, renamed or removed in it reach the disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _regular_file_size(src: BinaryIO) -> int | None:
    try:
        st = os.fstat(src.fileno())
    except (AttributeError, OSError, ValueError):  # not backed by a file descriptor
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _copy_file(src: BinaryIO, out: BinaryIO, size: int) -> None:
    """Copy ``size`` bytes from the start of ``src`` in the kernel (sendfile)."""
    offset = 0
    while offset < size:
        sent = os.sendfile(out.fileno(), src.fileno(), offset, size - offset)
        if sent == 0:  # the file shrank while we copied
            break
        offset += sent
