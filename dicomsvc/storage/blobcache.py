"""With S3 blobs, the local blob folder is a bounded read-through cache of the bucket.

The bucket holds the durable copy of every blob (``dicomsvc.storage.objects``); the folder
(DICOMSVC_BLOB_CACHE_DIR, default ``<data>/blobs``) keeps copies of those placed or read here,
under the same ``<aa>/<id>.<ext>`` names, so every reader that wants a file still gets one.
A miss downloads the object into a temporary file in ``.tmp`` and renames it into place (a
reader never sees half a copy). No fsync: a copy lost to a power cut is fetched again.

Bound: DICOMSVC_BLOB_CACHE_BYTES, least recently used first out (a hit sets the file's mtime,
the order eviction goes by). Several processes (the server and its workers) fill the folder:
each counts what it adds since its last scan, and once its count passes the bound it scans the
folder (the true total, everyone's copies) and removes the oldest down to 80 % of the bound; so
the folder may exceed the bound by what the other processes added since their own last scans,
at most one bound per process. A copy removed while a reader holds it open stays readable by
that reader (POSIX unlink); a reader about to open it fetches it again.
"""

import contextlib
import os
import threading
import time
from pathlib import Path

LOW_WATER = 0.8  # eviction goes down to this fraction of the bound


class BlobCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root, self.max_bytes = root, max_bytes
        self._counted: int | None = None  # bytes in the folder as this process last knew it
        self._lock = threading.Lock()

    def hit(self, path: Path) -> bool:
        """Whether ``path`` is here; if so it becomes the most recently used."""
        try:
            os.utime(path)
        except FileNotFoundError:
            return False
        return True

    def added(self, size: int) -> None:
        """A copy of ``size`` bytes was put in the folder: evict if past the bound."""
        with self._lock:
            if self._counted is None:
                self._counted = self._scan_total()
            self._counted += size
            if self._counted <= self.max_bytes:
                return
            self._counted = self._evict()

    def _entries(self) -> list[tuple[float, int, Path]]:
        """(mtime, size, path) of every cached file: ``<aa>/<id>.<ext>`` and renderings."""
        found = []
        try:
            folders = list(os.scandir(self.root))
        except FileNotFoundError:
            return found
        for folder in folders:
            if len(folder.name) != 2 or not folder.is_dir(follow_symlinks=False):
                continue  # .tmp and anything else
            for entry in _walk(folder.path):
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat(follow_symlinks=False)
                    found.append((st.st_mtime, st.st_size, Path(entry.path)))
        return found

    def _scan_total(self) -> int:
        return sum(size for _, size, _ in self._entries())

    def _evict(self) -> int:
        """Remove the least recently used copies down to LOW_WATER of the bound; the total left."""
        entries = sorted(self._entries())
        total = sum(size for _, size, _ in entries)
        target = int(self.max_bytes * LOW_WATER)
        for _, size, path in entries:
            if total <= target:
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                total -= size
        return total

    def fill(self, path: Path, tmp: Path, download) -> None:
        """Put a copy at ``path``: ``download(out)`` writes it into a temporary file in ``tmp``,
        which is then renamed into place. On any error nothing is left."""
        temp = tmp / f"fetch-{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}"
        try:
            with open(temp, "xb") as out:
                size = download(out)
            try:
                os.replace(temp, path)
            except FileNotFoundError:  # the first copy of its folder
                path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        self.added(size)


def _walk(folder: str):
    """The files under ``folder``, one level of subfolders deep (``<id>.renderings/``)."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError), os.scandir(entry.path) as inner:
                    yield from (e for e in inner if e.is_file(follow_symlinks=False))
            else:
                yield entry
