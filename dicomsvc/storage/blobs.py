"""Local blob storage: ``<root>/<first 2 chars of id>/<id>.<ext>``.

Blobs are written under ``<root>/.tmp`` and renamed into place, so a reader
never sees half a file; whatever is left in ``.tmp`` after a crash is removed
at the next start.

Durability: a blob's data is synced (``fdatasync``) before it is renamed into
place, and ``sync`` fsyncs every folder renamed into since (once per folder, however
many blobs: a batch shares the syncs) -- callers sync before the row that points at
the blobs commits, so a committed row never points at a name or data a power cut can
lose (POSIX fsync(2): a file's directory entry is durable only once the directory is
synced). In a local store without a key, ``commit_at_sync`` (what ingest uses) only notes
its blobs and ``sync`` places all of them: every one's data synced first, then every
rename, then the folders. A group commit's files are then all created before the first
sync, and they share the inode table blocks and bitmaps a sync writes: on ext4 without a
journal (issue 12's machine) each fdatasync of a new file writes its inode table block and
waits (perf sched_switch in the workers: ``ext4_write_inode`` → ``__sync_dirty_buffer``),
and a rename dirties the renamed inode's block again, so one file at a time each sync wrote
those blocks anew (folder import of 500 CTs, 6 rounds in rotated order: 526 against 461
instances/s).

In a worker process, what a task writes carries the task's tag (``begin_task``;
``<worker>.<task>``, the worker's name first: ``dicomsvc.workers``): its temporary files
are named ``<tag>-...``, and each blob it renames into place is noted first, as a line
``<tag> <key>`` appended to the worker's note (``.tmp/<worker>.placed``, one per process,
kept open and reused by every task; cut back to empty once past ``NOTE_LIMIT``; removed
when the worker leaves). When a worker dies mid-task, the service removes the task's
temporaries, the blobs its lines name that no row points at, and the dead worker's note
(``task_leftovers``) before it answers the request. One note per process, not one per
task: a note made and removed each task was an inode allocated and freed per instance (with
its bitmap, inode table and folder blocks dirtied for writeback): ``openat`` and ``unlink``
took 1.9 % of a worker's CPU in a 2,500-upload run, 1.2 % with the kept note (perf). On ext4
without a journal (issue 12's machine) a freed inode is also skipped by the file creations of
its block group for 5 s, or 5 min while its inode table block is dirty (``recently_deleted``
in fs/ext4/ialloc.c); a create reuses the inode freed in the same second, so a steady ingest
hardly paid for that, but each freed inode adds to what a burst of deletions costs.

Encryption at rest (``dicomsvc.storage.crypt``, on when the config holds a master key):
a blob is encrypted as it is placed (``_place``: the plaintext temporary sealed into a
second temporary, that one synced and renamed, the first removed; the order of
fdatasync and rename is the same) or, for renderings, as it is written
(``write_temp(..., final=)``). Its object id, bound into the encryption, is its path
relative to the root (the key the database records), so a file moved to another name
does not decrypt. Readers get ``reader(path)``: the path itself without a key (the
code paths of before, unchanged), else a ``Sealed`` blob whose ``open_binary`` is a
decrypting, seekable file object (``dicomsvc.dicom.parse.open_source`` opens either).
Temporaries in ``.tmp`` (upload spools, the PNG being rendered) are still plaintext.

Page cache: once a stored DICOM blob's data is synced and it is placed, its pages are
dropped from the page cache (``drop_cached``: ``posix_fadvise`` POSIX_FADV_DONTNEED, which
drops clean pages only), so the next ingest writes into pages the kernel just freed. Issue 12
measured why: on a virtual machine whose free memory goes back to the host (virtio-balloon
free page reporting, as here), a page the guest never touched, or freed a while ago, costs a
fault in the host on its first write: 0.5 MB files written one after another into fresh pages
took 1.4-1.9 ms of CPU each, into pages just freed 0.6-1.2 ms. ``bench/ingest_stages.py``
(``--keep-cached`` for the A/B) measured the copy into the store at 0.3-1.6 ms with the pages
kept, 0.24-0.35 ms with them dropped, and a whole CT ingest 0.8-1.3 ms of CPU cheaper in 4 of 6
alternating pairs (in the other 2, run while the kernel held many recently freed pages, the two
were within the host's noise). The stored DICOM file is what an ingest rarely reads again soon (its tags
are in the database); renderings keep their pages (``GET /image`` reads them). On a host where
fresh pages are cheap this changes little either way; a later read of the file comes from the
disk.

S3-compatible storage (``remote``, DICOMSVC_BLOB_URL=s3://...; ``dicomsvc.storage.objects``):
the bucket holds the durable copy under the same key, the folder is a bounded read-through
cache of it (``dicomsvc.storage.blobcache``). ``_place`` uploads the (sealed) temporary -- one
conditional PUT, or a multipart upload streamed from the file -- and only then renames it into
the cache: no fdatasync and no folder sync (``sync`` has nothing to do), the durable copy being
the bucket's, acknowledged before the row commits. Readers get ``Remote`` objects (as they get
``Sealed`` ones) that fetch a missing copy when opened, so no download happens where a reader
is merely named (on the event loop); ``open_file`` and ``read_bytes`` fetch too. ``remove``
deletes the object and the copy; renderings kept here are uploaded too (best effort).
"""

import contextlib
import ctypes
import errno
import functools
import os
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import shortuuid

from ..errors import StorageUnavailable, TooLarge

if TYPE_CHECKING:  # crypt (and ``cryptography``) is imported only when a key is set; objects with S3
    from .blobcache import BlobCache
    from .crypt import Keyring
    from .objects import ObjectStore

COPY_CHUNK = 1 << 20
DICOM_SUFFIX = ".dcm"  # a stored instance's key ends so (ingest: ``BlobStore.key(id, "dcm")``)
# A blob id is a shortuuid (ingest: 22 characters of this alphabet); its first two name its folder
FANOUT = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

_task: str | None = None  # the tag of the worker task running in this process
_notes: dict[Path, "_Note"] = {}  # this process's placement note, by temp folder
NOTE_LIMIT = 1 << 16  # a note longer than this is cut back to empty when its task ends
NOTE_SUFFIX = ".placed"
_caches: dict[tuple[Path, int], "BlobCache"] = {}  # with S3: one cache bound per folder in a process

_uploader: ThreadPoolExecutor | None = None  # with S3: a commit's blobs uploaded side by side
_uploader_lock = threading.Lock()  # made on first use (in a worker, never before it forks)


def begin_task(tag: str | None) -> None:
    """From now on, this process writes for the task ``tag`` (None: no task)."""
    global _task
    _task = tag


def end_task() -> None:
    """The task finished (answered, even with an error): its notes are no longer needed.
    They stay in the process's note (another task's tag never matches them) until it is
    longer than ``NOTE_LIMIT``, then it is truncated: no file is removed (module docstring)."""
    global _task
    _task = None
    for note in _notes.values():
        if note.size > NOTE_LIMIT:
            os.ftruncate(note.fd, 0)
            note.size = 0


def drop_notes() -> None:
    """This process leaves (a worker stopped or retired): its notes are closed and removed."""
    while _notes:
        _, note = _notes.popitem()
        with contextlib.suppress(OSError):
            os.close(note.fd)
            note.path.unlink(missing_ok=True)


def _note(tmp: Path, lines: str) -> None:
    """Append ``lines`` to this process's note in ``tmp`` (made on first use, in the worker:
    never before it forks). One write(2) of O_APPEND: whole lines, even if the process dies."""
    note = _notes.get(tmp)
    if note is None:
        path = tmp / _note_name(_task)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        note = _notes[tmp] = _Note(fd, path)
    data = lines.encode()
    if os.write(note.fd, data) != len(data):  # a regular file: only when the disk is full
        raise OSError(errno.ENOSPC, "the note of placed blobs was cut short")
    note.size += len(data)


def _note_name(tag: str) -> str:
    """The note of the worker that runs the task ``tag`` (its first part, the worker's name)."""
    return tag.partition(".")[0] + NOTE_SUFFIX


@dataclass
class _Note:
    fd: int  # open O_APPEND for the life of the process
    path: Path
    size: int = 0  # bytes written since it was last cut back


@dataclass(frozen=True)
class Sealed:
    """An encrypted blob to read: ``open_binary()`` is its plaintext as a seekable file object."""

    path: Path
    object_id: str
    keyring: "Keyring"

    def open_binary(self) -> BinaryIO:
        from .crypt import open_sealed

        return open_sealed(self.path, self.keyring, self.object_id)

    def read_bytes(self) -> bytes:
        with self.open_binary() as reader:
            return reader.read()

    def size(self) -> int:
        with self.open_binary() as reader:
            return reader.size

    def exists(self) -> bool:
        return self.path.exists()

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class Remote:
    """A blob whose durable copy is in the bucket: opening it fetches a missing local copy
    first (so naming one never downloads); then as the path (or ``Sealed``) it stands for."""

    path: Path
    blobs: "BlobStore"

    def local(self) -> "Path | Sealed":
        self.blobs.fetch(self.path)
        return self.path if self.blobs.keyring is None else Sealed(self.path, self.blobs.object_id(self.path), self.blobs.keyring)

    def open_binary(self) -> BinaryIO:
        local = self.local()
        return open(local, "rb") if isinstance(local, Path) else local.open_binary()

    def read_bytes(self) -> bytes:
        return self.local().read_bytes()

    def size(self) -> int:
        local = self.local()
        return local.stat().st_size if isinstance(local, Path) else local.size()

    def exists(self) -> bool:
        return self.path.exists() or self.blobs.remote.exists(self.blobs.object_id(self.path))

    def __str__(self) -> str:
        return str(self.path)


class BlobStore:
    def __init__(self, root: Path, keyring: "Keyring | None" = None, remote: "ObjectStore | None" = None,
                 cache: "BlobCache | None" = None, folders_at_start: bool = False):  # fmt: skip
        self.root = root
        self.folders_at_start = folders_at_start  # ``open`` makes every fan-out folder (DICOMSVC_BLOB_FOLDERS)
        self.tmp = root / ".tmp"
        self.unsynced: set[Path] = set()  # folders renamed into (or made) since the last ``sync``
        self.pending: dict[str, Path] = {}  # key -> temporary: ``commit_at_sync``, placed by ``sync``
        self.keyring = keyring  # None: blobs in the clear
        self._presealed: set[Path] = set()  # temporaries written encrypted already (``write_temp``)
        self.remote = remote  # None: the folder is the store (no S3)
        self.cache = cache  # with ``remote``: the folder's bound
        self._folder: str | None = None  # the fan-out folder of the ids ``new_id`` hands out

    @classmethod
    def of(cls, config) -> "BlobStore":
        """The blob store of ``config`` (dicomsvc.config.Config), encrypting when it holds a key,
        in the bucket of DICOMSVC_BLOB_URL when set."""
        keyring = remote = cache = None
        if config.encryption_keys:
            from .crypt import Keyring

            keyring = Keyring(config.encryption_keys, config.encryption_chunk_bytes)
        if config.blob_url:
            from .blobcache import BlobCache
            from .objects import ObjectStore

            remote = ObjectStore.of(config)
            cache = _caches.setdefault((config.blob_dir, config.blob_cache_bytes), BlobCache(config.blob_dir, config.blob_cache_bytes))
        return cls(config.blob_dir, keyring, remote, cache, config.blob_folders == "start")

    def fetch(self, path: Path) -> None:
        """With S3: make sure the local copy of the stored blob at ``path`` is there (a miss
        downloads it). FileNotFoundError when the bucket has no such object."""
        if self.remote is None or self.cache.hit(path):
            return
        key = self.object_id(path)
        self.cache.fill(path, self.tmp, lambda out: self.remote.get_file(key, out))

    def share(self, path: Path) -> None:
        """With S3: upload a rendering just kept at ``path`` (so every replica serves it). Best
        effort, like keeping it: an object store that fails is logged, not raised."""
        if self.remote is None:
            return
        try:
            self.remote.put_file(self.object_id(path), path)
        except StorageUnavailable:
            return
        self.cache.added(path.stat().st_size)

    def object_id(self, path: Path) -> str:
        """What an encrypted blob is bound to: its path relative to the root (for a placed
        blob, its key)."""
        return path.relative_to(self.root).as_posix()

    def reader(self, path: Path) -> "Path | Sealed | Remote":
        """What readers open a stored blob through: the path itself without a key (nor S3)."""
        if self.remote is not None:
            return Remote(path, self)
        if self.keyring is None:
            return path
        return Sealed(path, self.object_id(path), self.keyring)

    def stored(self, key: str) -> "Path | Sealed | Remote":
        """``reader`` of the blob the database records as ``key``."""
        return self.reader(self.path(key))

    def read_bytes(self, path: Path) -> bytes:
        """A stored blob's bytes (decrypted)."""
        self.fetch(path)
        return path.read_bytes() if self.keyring is None else self.reader(path).read_bytes()

    def open_file(self, path: Path) -> BinaryIO:
        """A stored blob open for reading (decrypting, seekable); FileNotFoundError if gone."""
        self.fetch(path)
        return open(path, "rb") if self.keyring is None else self.reader(path).open_binary()

    def open(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        if self.folders_at_start:
            self.make_folders()

    def make_folders(self) -> int:
        """Make every two-character fan-out folder missing (``<root>/<aa>/``, aa from FANOUT) and,
        when one was made, fsync the root once (POSIX fsync(2): a new folder's entry is durable
        once its parent is synced), so no ingest makes a folder or syncs the root; ``_place``
        still makes one that is missing (removed by hand), syncing the root then. One listing
        when all are there. With S3 nothing is synced (the folder is a cache). Returns how many
        were made."""
        present = set(os.listdir(self.root))
        made = 0
        for a in FANOUT:
            for b in FANOUT:
                if a + b not in present:
                    try:
                        os.mkdir(self.root / (a + b))
                    except FileExistsError:
                        continue
                    made += 1
        if made and self.remote is None:
            sync_folder(self.root)
        return made

    def new_id(self) -> str:
        """A new blob id: a shortuuid, which is the instance's public id too. The ids one store
        hands out share their first two characters, their fan-out folder (``key``), so the
        blobs of one group commit (a batch's chunk, single ingests that waited for a worker
        together) are renamed into one folder and made durable by one directory fsync
        (``sync``), not one each: the syncs batched, as issue 12 asks. The other 20 characters
        stay random (some 110 bits: shortuuid encodes a uuid4 most significant digit first);
        a store is made per worker task (``BlobStore.of``), so tasks spread over the folders."""
        blob_id = shortuuid.uuid()
        if self._folder is None:
            self._folder = blob_id[:2]
            return blob_id
        return self._folder + blob_id[2:]

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
        """What the task ``tag`` left: its temporary files (its worker's note among them: the
        worker is dead), and the keys of the blobs it renamed (or was about to rename) into
        place, which no row may point at."""
        try:
            names = os.listdir(self.tmp)
        except FileNotFoundError:
            return [], []
        temps = [self.tmp / n for n in names if n.startswith(f"{tag}-")]
        note = self.tmp / _note_name(tag)
        try:
            lines = note.read_text().splitlines()
        except FileNotFoundError:
            return temps, []
        keys = [line[len(tag) + 1 :] for line in lines if line.startswith(f"{tag} ")]
        return [*temps, note], keys  # the dead worker's note goes too

    def write_temp(self, data: bytes, suffix: str = "", final: Path | None = None) -> Path:
        """``data`` in a new temporary blob; on any error (a full disk) none is left. With a
        key and the ``final`` path it will be renamed to, it is written encrypted for it."""
        path, out = self.create_temp(suffix)
        try:
            with out:
                if self.keyring is not None and final is not None:
                    from .crypt import seal_bytes

                    out.write(seal_bytes(self.keyring, self.object_id(final), data))
                    self._presealed.add(path)
                else:
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

    def sync_soon(self, temp: Path) -> None:
        """Start writing a finished temporary blob's data to the disk, without waiting
        (``start_writeback``): the disk works while the instance is parsed and rendered, and the
        fdatasync ``commit`` makes finds little left to write. (Not with a key: what is synced
        then is the encrypted copy ``_place`` makes; nor with S3.)

        An fdatasync in a thread of its own did the same, but cost its thread hand-offs: path
        ingest of 1,000 CTs, three A/B pairs: 4.5 against 4.9 ms of CPU per instance, 6 % more
        instances/s with 4 clients, 5 % with one (issue 12)."""
        if self.keyring is not None or self.remote is not None:
            return
        try:
            fd = os.open(temp, os.O_RDONLY)
        except OSError:  # only a head start; the commit's fdatasync reports what is wrong
            return
        try:
            start_writeback(fd)
        finally:
            os.close(fd)

    def commit(self, temp: Path, key: str) -> None:
        """Rename a temporary blob into place (in a worker task, noting its key first).

        Its data is synced first (fdatasync); the rename itself is durable after ``sync``."""
        self.commit_all([(temp, key)])

    def commit_at_sync(self, blobs: list[tuple[Path, str]]) -> None:
        """``commit_all``, the placing left to the next ``sync`` in a local store without a key
        (``pending``), which places all such blobs together (see the module's Durability)."""
        if self.keyring is not None or self.remote is not None:
            self.commit_all(blobs)
            return
        self._note_keys(blobs)
        self.pending.update((key, temp) for temp, key in blobs)

    def commit_all(self, blobs: list[tuple[Path, str]]) -> None:
        """``commit`` for several (temp, key): their keys noted in one write."""
        self._note_keys(blobs)
        if self.remote is not None and len(blobs) > 1:  # S3: the uploads at once (each one a round trip)
            self._place_together(blobs)
            return
        for temp, key in blobs:
            self._place(temp, key)

    def _note_keys(self, blobs: list[tuple[Path, str]]) -> None:
        """In a worker task, the keys about to be placed, noted in one write (see the module)."""
        if _task is not None:
            _note(self.tmp, "".join(f"{_task} {key}\n" for _, key in blobs))

    @staticmethod
    def _sync_data(temp: Path, key: str) -> None:
        """fdatasync a temporary blob; a DICOM blob's pages, clean then, dropped from the cache."""
        sync_data(temp)
        if key.endswith(DICOM_SUFFIX):
            drop_cached(temp)

    def _place_together(self, blobs: list[tuple[Path, str]]) -> None:
        """``_place`` of each in a thread of its own; all have finished before the first error is
        raised (the caller removes every key then: none is left uploading behind its back)."""
        global _uploader
        with _uploader_lock:
            if _uploader is None:
                _uploader = ThreadPoolExecutor(4, thread_name_prefix="blob-upload")
        futures = [_uploader.submit(self._place, temp, key) for temp, key in blobs]
        errors = [f.exception() for f in futures]
        for error in errors:
            if error is not None:
                raise error

    def _place(self, temp: Path, key: str) -> None:
        final = self.path(key)
        plain = None
        if self.keyring is not None and temp not in self._presealed:
            plain, temp = temp, self._seal(temp, key)
        self._presealed.discard(temp)
        if self.remote is not None:
            self._upload(temp, key, plain)
            return
        try:
            self._sync_data(temp, key)
            self._rename(temp, final)
        except BaseException:
            if plain is not None:  # the encrypted copy is ours to remove; the caller discards ``plain``
                temp.unlink(missing_ok=True)
            raise
        if plain is not None:
            plain.unlink(missing_ok=True)

    def _rename(self, temp: Path, final: Path) -> None:
        """Rename a synced temporary to ``final``, its folder (made if need be) left to ``sync``."""
        try:
            os.replace(temp, final)
        except FileNotFoundError:  # the first blob of its two-character folder
            final.parent.mkdir(exist_ok=True)
            self.unsynced.add(self.root)  # the new folder's own entry
            os.replace(temp, final)
        self.unsynced.add(final.parent)

    def _upload(self, temp: Path, key: str, plain: Path | None) -> None:
        """``_place`` with S3: the object uploaded (durable once acknowledged), then the
        temporary renamed into the cache (no syncs: the bucket holds the durable copy)."""
        final = self.path(key)
        try:
            size = os.path.getsize(temp)
            self.remote.put_file(key, temp)
            try:
                os.replace(temp, final)
            except FileNotFoundError:  # the first blob of its two-character folder
                final.parent.mkdir(exist_ok=True)
                os.replace(temp, final)
        except BaseException:
            if plain is not None:
                temp.unlink(missing_ok=True)
            raise
        if plain is not None:
            plain.unlink(missing_ok=True)
        self.cache.added(size)

    def _seal(self, plain: Path, key: str) -> Path:
        """The plaintext temporary ``plain`` encrypted for ``key`` into a new temporary."""
        from .crypt import seal_file

        sealed, out = self.create_temp(".sealed")
        try:
            with out, open(plain, "rb") as src:
                seal_file(self.keyring, key, src, out)
        except BaseException:
            sealed.unlink(missing_ok=True)
            raise
        return sealed

    def sync(self) -> None:
        """Place the blobs ``commit_at_sync`` left pending (each one's data synced, then each
        renamed into place) and make the renames since the last call durable: one fsync per folder they
        touched. On an error what is still pending stays so (``remove`` removes it)."""
        for key, temp in self.pending.items():
            self._sync_data(temp, key)
        while self.pending:
            key, temp = next(iter(self.pending.items()))
            self._rename(temp, self.path(key))
            del self.pending[key]
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
                pending = self.pending.pop(key, None)
                if pending is not None:
                    pending.unlink(missing_ok=True)
                self.path(key).unlink(missing_ok=True)
        if self.remote is not None:
            self.remote.delete(*[key for key in keys if key])

    def renderings(self, blob_id: str) -> Path:
        """Folder of an instance's cached non-default renderings."""
        return self.root / blob_id[:2] / f"{blob_id}.renderings"

    def remove_renderings(self, blob_id: str) -> None:
        self.remove_tree(self.renderings(blob_id))
        if self.remote is not None:
            self.remote.delete_under(self.object_id(self.renderings(blob_id)) + "/")

    # Job spools with S3 (dicomsvc.jobs): a job's uploaded input goes to the bucket too, under
    # ``spool/<folder>/<name>`` (the object id it is sealed for, when encrypted), before the job's
    # row is written, so whichever replica runs the job -- or takes it over -- can read it.

    def push_spool(self, folder: Path) -> None:
        """Upload every file of the spool ``folder`` (S3 only)."""
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.is_file(follow_symlinks=False):
                self.remote.put_file(f"spool/{folder.name}/{entry.name}", Path(entry.path))

    def pull_spool(self, recorded: str, spool_root: Path) -> str:
        """The local path of a spooled file a job recorded (maybe on another replica): here under
        ``spool_root``, fetched from the bucket when missing (S3 only)."""
        path = Path(recorded)
        local = spool_root / path.parent.name / path.name
        if local.exists():
            return str(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        temp = local.with_name(f".{local.name}.{secrets.token_hex(6)}")
        try:
            with open(temp, "xb") as out:
                self.remote.get_file(f"spool/{path.parent.name}/{path.name}", out)
            os.replace(temp, local)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return str(local)

    def drop_spool(self, folder: Path) -> None:
        """Remove a finished job's spool from the bucket (S3 only)."""
        self.remote.delete_under(f"spool/{folder.name}/")

    # Finished dataset exports (dicomsvc.exports): sealed in place when encrypting, each for its
    # object id ``<prefix>/<path relative to the folder>`` -- its key in the bucket too, so with
    # S3 the sealed files go up and come down as they are (any replica can send the result).

    def seal_folder(self, folder: Path, prefix: str) -> None:
        """With a key: replace every file under ``folder`` by its sealed form (written aside,
        then renamed over it)."""
        from .crypt import seal_file

        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            aside = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
            try:
                with open(path, "rb") as src, open(aside, "xb") as out:
                    seal_file(self.keyring, f"{prefix}/{path.relative_to(folder).as_posix()}", src, out)
                os.replace(aside, path)
            finally:
                aside.unlink(missing_ok=True)

    def open_member(self, path: Path, object_id: str) -> tuple[BinaryIO, int]:
        """A file of a finished export open for reading (decrypting when it is sealed), and its
        plaintext size."""
        if self.keyring is not None:
            from .crypt import is_sealed, open_sealed

            with open(path, "rb") as probe:
                sealed = is_sealed(probe.read(8))
            if sealed:
                reader = open_sealed(path, self.keyring, object_id)
                return reader, reader.size
        src = open(path, "rb")
        return src, os.fstat(src.fileno()).st_size

    def push_folder(self, folder: Path, prefix: str) -> None:
        """Upload every file under ``folder`` as ``<prefix>/<path relative to folder>`` (S3 only)."""
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            self.remote.put_file(f"{prefix}/{path.relative_to(folder).as_posix()}", path)

    def pull_folder(self, prefix: str, folder: Path) -> bool:
        """Download every object under ``prefix/`` into ``folder`` as it is (sealed stays sealed),
        made whole or not at all (written aside, then renamed); False when the bucket holds
        nothing there (S3 only)."""
        aside = folder.with_name(f".{folder.name}.{secrets.token_hex(6)}")
        found = False
        try:
            for entry in self.remote.listing(prefix + "/"):
                parts = entry.key[len(prefix) + 1 :].split("/")
                if any(part in ("", ".", "..") for part in parts):
                    continue  # not one this service wrote
                found = True
                target = aside.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "xb") as out:
                    self.remote.get_file(entry.key, out)
            if found:
                try:
                    os.rename(aside, folder)
                except OSError:  # another request fetched it meanwhile
                    if not folder.is_dir():
                        raise
        finally:
            shutil.rmtree(aside, ignore_errors=True)
        return found

    @staticmethod
    def remove_tree(path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    @staticmethod
    def discard(*temps: Path | None) -> None:
        for temp in temps:
            if temp is not None:
                temp.unlink(missing_ok=True)


def sync_data(path: Path) -> None:
    """fdatasync(2) a file written earlier (a read-only descriptor is enough on Linux):
    its bytes and the size that reads them back reach the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start writing the range's dirty pages, do not wait


def start_writeback(fd: int) -> None:
    """Start writing a file's dirty pages to the disk now, without waiting for them
    (sync_file_range(2), SYNC_FILE_RANGE_WRITE, over the whole file), so the fdatasync that
    makes it durable later finds little left to write. Only a head start: it does nothing
    where there is no such call (Python's os module has none), and its errors change nothing."""
    call = _sync_file_range()
    if call is not None:
        call(fd, 0, 0, SYNC_FILE_RANGE_WRITE)  # 0 bytes: to the end of the file


@functools.cache
def _sync_file_range():
    """glibc's sync_file_range (Linux), or None."""
    try:
        call = ctypes.CDLL(None).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    call.restype = ctypes.c_int
    return call


def drop_cached(path: Path) -> None:
    """Ask the kernel to drop a synced file's pages from the page cache (posix_fadvise(2)
    POSIX_FADV_DONTNEED; dirty pages stay): advice, so a refusal (a file system without it,
    no posix_fadvise on this platform) changes nothing."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        advise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass
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


CACHED_READ_MAX = 1 << 20  # bytes: larger files are read in an I/O thread, not on the event loop


def read_if_cached(path: Path) -> bytes | None:
    """The whole (plaintext) file if the page cache holds all of it, else None: ``preadv`` with
    ``RWF_NOWAIT`` (Linux 4.14) answers EAGAIN rather than wait for the disk, so this may run
    on the event loop -- a stored PNG read again and again costs no trip to an I/O thread.
    None too for a file over CACHED_READ_MAX or where the flag is unknown. A missing file
    raises FileNotFoundError, as a read would."""
    flag = getattr(os, "RWF_NOWAIT", None)
    if flag is None:
        return None
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size > CACHED_READ_MAX:
            return None
        buf = bytearray(size)
        try:
            done = os.preadv(fd, [buf], 0, flag)
        except (BlockingIOError, OSError):  # EAGAIN: not all cached; EOPNOTSUPP: a file system without it
            return None
        return bytes(buf) if done == size else None
    finally:
        os.close(fd)
