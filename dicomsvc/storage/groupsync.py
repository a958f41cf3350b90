"""One fdatasync shared by every process that needs the same file synced at the same time.

The group commit of the write-ahead log across worker processes. A worker's
``COMMIT`` appends its frames to ``<db>-wal`` and, with ``synchronous = NORMAL``,
returns without syncing (so the WAL write lock is held for the append only, not for
the disk flush); the worker then calls ``GroupSync.sync`` before it answers. Whoever
syncs the WAL file makes every frame appended before that sync began durable, so
concurrent committers share one flush (PostgreSQL's and InnoDB's group commit;
sqlite.org/wal.html: the WAL is one file, appended in commit order).

Two counters live in a small shared file (``<db>.sync``, mapped): ``started`` and
``done`` -- how many syncs have begun and the number of the last one completed.
A caller whose append is finished reads ``started`` (S), then takes the file's lock
(``flock``; one open file description per ``GroupSync``, so threads and processes
exclude each other). If ``done`` > S, sync number S + 1 began after the caller's
append and has completed: its frames are on disk already, nothing to do. Otherwise it
leads: ``started`` += 1, fdatasync, ``done`` = its number. Callers that queued on the
lock during a leader's flush mostly find themselves covered when they get it.
"""

import fcntl
import mmap
import os
import struct
from pathlib import Path

_COUNTERS = struct.Struct("<QQ")  # started, done


class GroupSync:
    def __init__(self, target: Path, counters: Path) -> None:
        self.target = target
        self._fd = os.open(counters, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size < _COUNTERS.size:
            os.ftruncate(self._fd, _COUNTERS.size)  # zero-filled: nothing started, nothing done
        self._map = mmap.mmap(self._fd, _COUNTERS.size)
        self.led = 0  # syncs this instance made itself (the rest it shared: tests, metrics)
        self.shared = 0

    def sync(self) -> None:
        """Return once everything written to ``target`` before this call is on disk."""
        seen_started, _ = _COUNTERS.unpack_from(self._map)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            started, done = _COUNTERS.unpack_from(self._map)
            if done > seen_started:  # a sync that began after our write has completed
                self.shared += 1
                return
            mine = started + 1
            _COUNTERS.pack_into(self._map, 0, mine, done)
            try:
                fd = os.open(self.target, os.O_RDONLY)
            except FileNotFoundError:  # SQLite removed its WAL: checkpointed into the synced database
                fd = None
            if fd is not None:
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
            _COUNTERS.pack_into(self._map, 0, mine, mine)
            self.led += 1
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)
