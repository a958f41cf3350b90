"""Local blob storage: ``<root>/<first 2 chars of id>/<id>.<ext>``.

Blobs are written under ``<root>/.tmp`` and renamed into place, so a reader
never sees half a file; whatever is left in ``.tmp`` after a crash is removed
at the next start.
"""

import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import BinaryIO

from ..errors import TooLarge

COPY_CHUNK = 1 << 20


class BlobStore:
    def __init__(self, root: Path):
        self.root = root
        self.tmp = root / ".tmp"

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
        path = self.tmp / f"{secrets.token_hex(12)}{suffix}"
        return path, open(path, "xb")

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

    def commit(self, temp: Path, key: str) -> None:
        """Rename a temporary blob into place."""
        final = self.path(key)
        try:
            os.replace(temp, final)
        except FileNotFoundError:  # the first blob of its two-character folder
            final.parent.mkdir(exist_ok=True)
            os.replace(temp, final)

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
                temp.unlink(missing_ok=True)


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
