"""Sealed records appended to one file: a resumable upload's bytes with encryption at rest.

A tus upload (``dicomsvc.resumable``) grows one PATCH at a time, at offsets the client
chooses to resume from; a sealed object (``dicomsvc.storage.crypt``) cannot grow once its
final chunk is sealed. So with a key each PATCH appends one *record*::

    offset size
    0      8   L: the sealed object's length in bytes (big-endian)
    8      L   a sealed object (crypt's format) holding the PATCH's bytes, bound to the
               object id ``<upload id>@<plaintext offset of its first byte>``

The record's length is written last (after its final chunk, before the fdatasync that
precedes the offset's commit), so a record cut by a crash is past the committed offset
and is cut off by the next PATCH (``Appender``), as plaintext bytes past it were before.
A record put in another place, or in another upload, fails its tag (the object id).
``Records`` reads the plaintext of every record up to the committed offset, in order.
"""

import io
import os
import struct
from typing import BinaryIO

from ..errors import DamagedBlob
from .crypt import HEADER, TAG, Keyring, SealedReader, SealingWriter

_LENGTH = struct.Struct(">Q")


def _plain_size(sealed_length: int, log2: int) -> int:
    chunk = 1 << log2
    full, rest = divmod(sealed_length - HEADER, chunk + TAG)
    return full * chunk + (rest - TAG if rest else 0)


def _walk(fd: int, upto: int) -> list[tuple[int, int, int]]:
    """(start of the sealed object, its length, plaintext offset) of each record holding the
    first ``upto`` plaintext bytes; DamagedBlob if the records do not add up to exactly that."""
    found, at, plain = [], 0, 0
    while plain < upto:
        head = os.pread(fd, _LENGTH.size + HEADER, at)
        if len(head) < _LENGTH.size + HEADER:
            raise DamagedBlob("a resumable upload's records are cut short")
        (length,) = _LENGTH.unpack_from(head)
        if length < HEADER + TAG:
            raise DamagedBlob("a resumable upload's record has no length")
        found.append((at + _LENGTH.size, length, plain))
        plain += _plain_size(length, head[_LENGTH.size + 9])
        at += _LENGTH.size + length
    if plain != upto:
        raise DamagedBlob("a resumable upload's records do not end at its offset")
    return found


def end_of(fd: int, upto: int) -> int:
    """Where the record after the first ``upto`` plaintext bytes begins."""
    records = _walk(fd, upto)
    return records[-1][0] + records[-1][1] if records else 0


class Appender:
    """One record appended at ``position`` (of a file open on ``fd``, cut there first)."""

    def __init__(self, fd: int, position: int, keyring: Keyring, object_id: str):
        os.ftruncate(fd, position)
        self.fd, self.position = fd, position
        out = open(fd, "wb", closefd=False)
        out.seek(position + _LENGTH.size)
        self._sealing = SealingWriter(out, keyring, object_id)

    def write(self, piece: bytes) -> None:
        self._sealing.write(piece)

    def finish(self) -> None:
        """Seal the final chunk and write the record's length (the caller syncs)."""
        self._sealing.close()
        end = os.lseek(self.fd, 0, os.SEEK_END)
        os.pwrite(self.fd, _LENGTH.pack(end - self.position - _LENGTH.size), self.position)

    def drop(self) -> None:
        """Nothing of this record is kept."""
        self._sealing.close()
        os.ftruncate(self.fd, self.position)


class Records(io.RawIOBase):
    """The plaintext of the records holding an upload's first ``length`` bytes, read in order."""

    def __init__(self, raw: BinaryIO, keyring: Keyring, upload_id: str, length: int):
        super().__init__()
        self._raw, self._keyring, self._id = raw, keyring, upload_id
        self._records = _walk(raw.fileno(), length)
        self._current: SealedReader | None = None
        self._next = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while True:
            if self._current is None:
                if self._next == len(self._records):
                    return 0
                start, length, plain = self._records[self._next]
                self._next += 1
                self._current = SealedReader(_Shared(self._raw), self._keyring, f"{self._id}@{plain}", (start, length))
            got = self._current.readinto(buffer)
            if got:
                return got
            self._current.close()
            self._current = None

    def close(self) -> None:
        if not self.closed:
            if self._current is not None:
                self._current.close()
            self._raw.close()
        super().close()


class _Shared:
    """The upload's file for one record's reader: its descriptor, never closed by it."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw

    def fileno(self) -> int:
        return self._raw.fileno()

    def close(self) -> None:
        pass
