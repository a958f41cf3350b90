"""Encryption of blobs at rest: envelope encryption with AES-256-GCM (NIST SP 800-38D).

Turned on by ``DICOMSVC_ENCRYPTION_KEY`` or ``DICOMSVC_ENCRYPTION_KEY_FILE`` (README
"Encryption at rest"); the AES-GCM itself is the ``cryptography`` package's (OpenSSL),
never ours. Every object gets its own random 256-bit data key, wrapped by the master key.

An encrypted object (all integers big-endian)::

    offset size
    0      8   magic  b"DSVCRYPT"
    8      1   format version (1)
    9      1   log2 of the chunk size (12..24; 16: 64 KiB)
    10     2   reserved, zero
    12     8   key id: the first 8 bytes of SHA-256("dicomsvc key id\\0" || master key)
    20     12  object nonce (random)
    32     12  wrap nonce (random)
    44     48  the data key wrapped: AES-256-GCM under the master key (32 bytes + 16-byte tag),
               associated data = bytes 0..32 of this header + the object id (UTF-8)
    92         the body: chunk 0, chunk 1, ... each ``chunk size`` bytes of plaintext (the last
               one fewer, or none for an empty object) + its 16-byte GCM tag

Chunk ``i`` is AES-256-GCM under the data key with the 96-bit nonce ``object nonce XOR
(0^32 || i as 64 bits)`` (distinct for every chunk of the object: SP 800-38D §8.2.1's
deterministic construction, the data key used for this one object only) and associated
data ``object id || i (64 bits) || last (1 byte: 1 for the final chunk, else 0)``. So
a changed bit fails the chunk's tag; chunks reordered or moved fail their index; a file
cut at a chunk boundary fails the new last chunk's flag (checked at open: the plaintext
size is derived from the file size and authenticated that way); a whole object put in
another's place fails at unwrap (the object id is in the wrap's associated data).

Why AES-GCM for wrapping and not AES-KW (SP 800-38F, RFC 3394): GCM takes associated
data, so the wrap binds the header fields and the object id, and the same primitive
serves both layers. Its random 96-bit wrap nonces stay within SP 800-38D §8.3's bound
(2^32 invocations of one master key with random IVs) for four billion objects and
rotations per master key; rotate the key long before.

Key rotation (``rewrap``) changes only the key id, wrap nonce and wrapped key (bytes
12..20 and 32..92, all inside the header's first 512-byte sector, written with one
``pwrite`` and fsynced): the body is not rewritten. A reader that meets a header
being rewritten (its wrapped key fails) reads it once more.

Random access: ``SealedReader`` is a seekable, read-only file object that decrypts only
the chunks a read touches (two kept), so a frame or a byte range of a 2 GB file costs a
few chunks, never the whole file.
"""

import hashlib
import io
import logging
import os
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import DamagedBlob

log = logging.getLogger("dicomsvc.crypt")

MAGIC = b"DSVCRYPT"
VERSION = 1
TAG = 16  # bytes of a GCM tag (SP 800-38D §5.2.1.2: 128 bits)
KEY_BYTES = 32
_HEAD = struct.Struct(">8sBBH8s12s12s48s")
HEADER = _HEAD.size  # 92
_BOUND = 32  # header bytes under the wrap's associated data (magic .. object nonce)
_KEY_ID = slice(12, 20)
_WRAP = slice(32, 92)
MIN_CHUNK_LOG2, MAX_CHUNK_LOG2 = 12, 24
DEFAULT_CHUNK = 1 << 16


def key_id(master: bytes) -> bytes:
    return hashlib.sha256(b"dicomsvc key id\0" + master).digest()[:8]


@lru_cache(maxsize=64)
def _aead(key: bytes) -> AESGCM:
    return AESGCM(key)


@dataclass(frozen=True)
class Keyring:
    """Master keys: the first wraps new objects; all unwrap (old ones while rotating)."""

    keys: tuple[bytes, ...] = field(repr=False)
    chunk_size: int = DEFAULT_CHUNK

    def __post_init__(self):
        if not self.keys or any(len(k) != KEY_BYTES for k in self.keys):
            raise ValueError("encryption keys must be 32 bytes each")
        log2 = self.chunk_size.bit_length() - 1
        if self.chunk_size != 1 << log2 or not MIN_CHUNK_LOG2 <= log2 <= MAX_CHUNK_LOG2:
            raise ValueError("the encryption chunk size must be a power of two from 4 KiB to 16 MiB")

    @property
    def current(self) -> bytes:
        return self.keys[0]

    def by_id(self, kid: bytes) -> bytes | None:
        return _ids(self.keys).get(kid)


@lru_cache(maxsize=16)
def _ids(keys: tuple[bytes, ...]) -> dict[bytes, bytes]:
    return {key_id(k): k for k in keys}


def is_sealed(head: bytes) -> bool:
    return head[:8] == MAGIC


def _wrap_aad(header: bytes, object_id: str) -> bytes:
    return header[:_BOUND] + object_id.encode()


def _chunk_aad(object_id: bytes, index: int, last: bool) -> bytes:
    return object_id + index.to_bytes(8, "big") + (b"\x01" if last else b"\x00")


def _nonce(object_nonce: bytes, index: int) -> bytes:
    return object_nonce[:4] + (int.from_bytes(object_nonce[4:], "big") ^ index).to_bytes(8, "big")


def _header(keyring: Keyring, master: bytes, object_id: str, data_key: bytes, object_nonce: bytes) -> bytes:
    log2 = keyring.chunk_size.bit_length() - 1
    prefix = MAGIC + struct.pack(">BBH", VERSION, log2, 0) + key_id(master) + object_nonce
    wrap_nonce = secrets.token_bytes(12)
    wrapped = _aead(master).encrypt(wrap_nonce, data_key, _wrap_aad(prefix, object_id))
    return prefix + wrap_nonce + wrapped


class SealingWriter:
    """A write-only file object that encrypts what is written into ``out`` as one object
    (the header at once, each chunk as soon as the next byte shows it is not the last, the
    final chunk at ``close``): a stream whose length nobody knows yet (a request body) is
    sealed as it arrives, never whole in memory. ``close`` closes ``out`` too, when ``owns``."""

    def __init__(self, out: BinaryIO, keyring: Keyring, object_id: str, owns: bool = True):
        data_key, self._object_nonce = secrets.token_bytes(KEY_BYTES), secrets.token_bytes(12)
        self._out, self._oid, self._chunk, self._owns = out, object_id.encode(), keyring.chunk_size, owns
        self._aead = AESGCM(data_key)
        self._held, self._index, self.closed = bytearray(), 0, False
        out.write(_header(keyring, keyring.current, object_id, data_key, self._object_nonce))

    def write(self, data) -> int:
        self._held += data
        size, start = self._chunk, 0
        while len(self._held) - start > size:  # more follows this chunk: it is not the final one
            self._seal(bytes(self._held[start : start + size]), False)
            start += size
        if start:
            del self._held[:start]
        return len(data)

    def _seal(self, piece: bytes, last: bool) -> None:
        nonce = _nonce(self._object_nonce, self._index)
        self._out.write(self._aead.encrypt(nonce, piece, _chunk_aad(self._oid, self._index, last)))
        self._index += 1

    def flush(self) -> None:
        self._out.flush()

    def fileno(self) -> int:
        """The descriptor of the file the sealed bytes go to."""
        return self._out.fileno()

    def close(self) -> None:
        """Seal the final chunk and close ``out`` if it owns it (also after an error)."""
        if self.closed:
            return
        self.closed = True
        try:
            self._seal(bytes(self._held), True)
            self._held.clear()
        finally:
            if self._owns:
                self._out.close()

    def __enter__(self) -> "SealingWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def seal_file(keyring: Keyring, object_id: str, src: BinaryIO, out: BinaryIO) -> None:
    """``src`` (read to its end) encrypted into ``out``, a chunk at a time."""
    with SealingWriter(out, keyring, object_id, owns=False) as sealing:
        while piece := src.read(keyring.chunk_size):
            sealing.write(piece)


def seal_bytes(keyring: Keyring, object_id: str, data: bytes) -> bytes:
    out = io.BytesIO()
    with SealingWriter(out, keyring, object_id, owns=False) as sealing:
        sealing.write(data)
    return out.getvalue()


def _damaged(object_id: str, what: str) -> DamagedBlob:
    log.error("encrypted blob %s failed its integrity check: %s", object_id, what)  # ids are ours, not patient data
    return DamagedBlob(f"the stored object failed its integrity check ({what})")


def _unwrap(keyring: Keyring, object_id: str, header: bytes) -> bytes:
    if len(header) < HEADER or not is_sealed(header):
        raise _damaged(object_id, "no encryption header")
    if header[8] != VERSION:
        raise _damaged(object_id, f"unknown format version {header[8]}")
    master = keyring.by_id(header[_KEY_ID])
    if master is None:
        raise _damaged(object_id, "wrapped by a master key this service does not hold")
    try:
        return _aead(master).decrypt(header[32:44], header[44:92], _wrap_aad(header, object_id))
    except InvalidTag:
        raise _damaged(object_id, "the data key's tag does not match") from None


class SealedReader(io.RawIOBase):
    """A read-only, seekable view of an encrypted object's plaintext (see the module)."""

    def __init__(self, raw: BinaryIO, keyring: Keyring, object_id: str, span: tuple[int, int] | None = None):
        """``span``: (start, length) of the object inside ``raw`` when it is not the whole file
        (records appended to one file: ``dicomsvc.storage.records``)."""
        super().__init__()
        self._cache: dict[int, bytes] = {}
        self._raw, self._oid, self.object_id = raw, object_id.encode(), object_id
        self._base = span[0] if span else 0
        self.name = object_id  # as a file's name (pydicom asks): our own id, no patient data
        try:
            header = os.pread(raw.fileno(), HEADER, self._base)
            try:
                data_key = _unwrap(keyring, object_id, header)
            except DamagedBlob:  # perhaps a header being rotated under us: once more
                header = os.pread(raw.fileno(), HEADER, self._base)
                data_key = _unwrap(keyring, object_id, header)
            log2 = header[9]
            if not MIN_CHUNK_LOG2 <= log2 <= MAX_CHUNK_LOG2:
                raise _damaged(object_id, "a chunk size out of range")
            self._chunk = 1 << log2
            self._aead, self._object_nonce = AESGCM(data_key), header[20:32]
            body = (span[1] if span else os.fstat(raw.fileno()).st_size) - HEADER
            record = self._chunk + TAG
            full, rest = divmod(body, record)
            if body < TAG or 0 < rest < TAG:
                raise _damaged(object_id, "cut short")
            self._count = full + (1 if rest else 0)  # chunks; the last is the final one
            self.size = full * self._chunk + (rest - TAG if rest else 0)
            self._pos = 0
            self._plain(self._count - 1)  # authenticates the final chunk: the size is right
        except BaseException:
            raw.close()
            raise

    def _plain(self, index: int) -> bytes:
        got = self._cache.get(index)
        if got is not None:
            return got
        record = self._chunk + TAG
        start = self._base + HEADER + index * record
        last = index == self._count - 1
        length = (self.size - index * self._chunk + TAG) if last else record
        data = os.pread(self._raw.fileno(), length, start)
        try:
            got = self._aead.decrypt(_nonce(self._object_nonce, index), data, _chunk_aad(self._oid, index, last))
        except InvalidTag:
            raise _damaged(self.object_id, f"chunk {index}'s tag does not match") from None
        if len(self._cache) >= 2:
            self._cache.pop(next(iter(self._cache)))
        self._cache[index] = got
        return got

    def stat(self) -> os.stat_result:
        """The encrypted file's stat, but with the plaintext's size (for HTTP headers)."""
        st = list(os.fstat(self._raw.fileno()))
        st[6] = self.size  # st_size
        return os.stat_result(st)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if pos < 0:
            raise OSError(22, "negative seek position")
        self._pos = pos
        return pos

    def read(self, n: int = -1) -> bytes:
        pos, size = self._pos, self.size
        if n is None or n < 0:
            n = size - pos
        n = min(n, size - pos)
        if n <= 0:
            return b""
        index, within = divmod(pos, self._chunk)
        chunk = self._plain(index)
        if within + n <= len(chunk):  # within one chunk: the common small read
            self._pos = pos + n
            return chunk[within : within + n] if (within or n != len(chunk)) else chunk
        out = bytearray(n)
        got = self.readinto(out)
        return bytes(out[:got])

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), max(self.size - self._pos, 0))
        done = 0
        while done < n:
            index, within = divmod(self._pos, self._chunk)
            chunk = self._plain(index)
            take = min(n - done, len(chunk) - within)
            view[done : done + take] = chunk[within : within + take]
            done += take
            self._pos += take
        return done

    def readall(self) -> bytes:
        return self.read(-1)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
            self._cache.clear()
        super().close()


def open_sealed(path, keyring: Keyring, object_id: str) -> SealedReader:
    return SealedReader(open(path, "rb"), keyring, object_id)


def read_sealed(path, keyring: Keyring, object_id: str) -> bytes:
    with open_sealed(path, keyring, object_id) as reader:
        return reader.read()


def rewrap(path, keyring: Keyring, object_id: str, new_master: bytes) -> bool:
    """Re-wrap the object's data key under ``new_master`` in place (header only, fsynced).
    False if it already was (a resumed rotation skips it)."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        header = os.pread(fd, HEADER, 0)
        if len(header) == HEADER and is_sealed(header) and header[_KEY_ID] == key_id(new_master):
            return False
        data_key = _unwrap(keyring, object_id, header)
        prefix = header[:12] + key_id(new_master) + header[20:32]
        wrap_nonce = secrets.token_bytes(12)
        wrapped = _aead(new_master).encrypt(wrap_nonce, data_key, _wrap_aad(prefix, object_id))
        new = prefix + wrap_nonce + wrapped
        os.pwrite(fd, new, 0)  # within the first 512-byte sector
        os.fsync(fd)
        return True
    finally:
        os.close(fd)


@dataclass
class Rotation:
    rewrapped: int = 0
    skipped: int = 0  # under the new key already (a resumed rotation)
    plaintext: int = 0  # written before encryption was on: left as they are
    damaged: int = 0  # failed to unwrap under every key held (logged by id)


def rotate_tree(root: Path, keyring: Keyring, new_master: bytes, each: Callable[[Path], None] | None = None) -> Rotation:
    """Re-wrap every encrypted blob under ``root`` (not ``.tmp``) with ``new_master``, in path
    order; ``keyring`` unwraps. ``each(path)`` is called after every object (progress, and the
    tests' interruption). Resumable: objects under the new key id already are skipped."""
    root, done = Path(root), Rotation()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] != ".tmp"):
        object_id = path.relative_to(root).as_posix()
        try:
            with open(path, "rb") as fh:
                head = fh.read(HEADER)
            if not is_sealed(head):
                done.plaintext += 1
            elif rewrap(path, keyring, object_id, new_master):
                done.rewrapped += 1
            else:
                done.skipped += 1
        except FileNotFoundError:  # deleted meanwhile
            continue
        except DamagedBlob:
            done.damaged += 1
        if each is not None:
            each(path)
    return done
