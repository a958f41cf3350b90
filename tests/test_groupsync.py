"""The WAL's group commit across processes (dicomsvc.storage.groupsync)."""

import os
import threading
import time

from dicomsvc.storage.groupsync import GroupSync


def _recording_fdatasync(monkeypatch, gate: threading.Event | None = None):
    """os.fdatasync counted (and the first one held until ``gate`` is set)."""
    calls = []
    real = os.fdatasync

    def fdatasync(fd):
        calls.append(time.monotonic())
        if gate is not None and len(calls) == 1:
            gate.wait(10)
        real(fd)
        calls.append(time.monotonic())

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    return calls


def test_alone_every_call_syncs(tmp_path, monkeypatch):
    target = tmp_path / "db-wal"
    target.write_bytes(b"frames")
    calls = _recording_fdatasync(monkeypatch)
    g = GroupSync(target, tmp_path / "db.sync")
    for _ in range(3):
        g.sync()
    assert len(calls) == 6 and (g.led, g.shared) == (3, 0)


def test_callers_waiting_during_a_flush_share_the_next_one(tmp_path, monkeypatch):
    """A flushes; B and C finish their writes meanwhile. The flush under way may have begun
    before their writes, so one more is needed -- and one is enough for both."""
    target = tmp_path / "db-wal"
    target.write_bytes(b"frames")
    gate = threading.Event()
    calls = _recording_fdatasync(monkeypatch, gate)
    a, b, c = (GroupSync(target, tmp_path / "db.sync") for _ in range(3))  # one lock each, as processes
    returned = {}

    def run(name, g):
        g.sync()
        returned[name] = time.monotonic()

    ta = threading.Thread(target=run, args=("a", a))
    ta.start()
    while not calls:  # A is inside its flush
        time.sleep(0.001)
    tb = threading.Thread(target=run, args=("b", b))
    tc = threading.Thread(target=run, args=("c", c))
    tb.start(), tc.start()
    time.sleep(0.2)  # both have read the counters and wait for the lock
    assert returned == {}  # nobody returns before a flush that began after its write
    gate.set()
    for t in (ta, tb, tc):
        t.join(10)
    assert len(calls) == 4  # two flushes for three callers
    second_flush_end = calls[3]
    assert returned["b"] >= second_flush_end and returned["c"] >= second_flush_end
    assert sorted([a.led, b.led + c.led, b.shared + c.shared]) == [1, 1, 1]


def test_a_missing_wal_needs_no_sync(tmp_path, monkeypatch):
    calls = _recording_fdatasync(monkeypatch)
    GroupSync(tmp_path / "gone-wal", tmp_path / "db.sync").sync()  # checkpointed and removed
    assert calls == []
