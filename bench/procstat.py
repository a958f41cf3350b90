"""What /proc says about a server's process tree: CPU seconds and memory.

Reads only; every pid it is given is one the benchmarks started themselves.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
SAMPLE_PERIOD_S = 0.2


# --------------------------------------------------------------------------
# the tree
# --------------------------------------------------------------------------
def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces/parens: split after the last ')'
    return raw[raw.rindex(")") + 2 :].split()


def descendants(root: int) -> list[int]:
    """root plus all live descendants (by scanning /proc for ppid links)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        f = _stat_fields(int(entry))
        if f is None:
            continue
        children.setdefault(int(f[1]), []).append(int(entry))  # f[1] = ppid
    out, todo = [], [root]
    while todo and len(out) < 10_000:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


# --------------------------------------------------------------------------
# CPU
# --------------------------------------------------------------------------
def tree_cpu_seconds(root: int) -> float:
    """utime+stime of root and live descendants, plus reaped children (cutime+cstime)."""
    total = 0
    for pid in descendants(root):
        f = _stat_fields(pid)
        if f is None:
            continue
        # after comm: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
        total += int(f[11]) + int(f[12])
        if pid == root:
            total += int(f[13]) + int(f[14])
    return total / CLK_TCK


def settle_cpu(pid: int, max_s: float = 3.0) -> float:
    """Wait (<= max_s) until the server tree stops burning CPU; return its CPU seconds."""
    last = tree_cpu_seconds(pid)
    for _ in range(int(max_s / 0.25)):
        time.sleep(0.25)
        now = tree_cpu_seconds(pid)
        if now - last < 0.02:
            return now
        last = now
    return last


def cpu_figures(start: float, at_reply: float | None, settled: float | None, n: int) -> dict:
    """Server CPU of a phase from three readings (before the first request, after the last
    reply, after settling); all None when the server was gone before the readings."""
    if settled is None:
        return {"server_cpu_s": None, "server_cpu_ms_per_inst": None, "server_cpu_after_reply_s": None}
    return {
        "server_cpu_s": round(settled - start, 3),
        "server_cpu_ms_per_inst": round(1000 * (settled - start) / n, 2) if n else None,
        "server_cpu_after_reply_s": round(settled - at_reply, 3),
    }


# --------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------
def status_kib(pid: int, key: str) -> int:
    """A kB field of /proc/<pid>/status (key with its colon, e.g. "VmRSS:"); 0 when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def tree_peak_rss_mib(root: int) -> dict:
    """VmHWM (peak RSS) of root and of each live descendant, in MiB.

    The sum counts a page shared by several processes once per process: dicomsvc's workers
    are forked from a fork server (dicomsvc/workers.py) and share its imports, so the fork
    server and each worker count those pages in full. TreeSampler's pss_sum_mib counts
    each page once (shared pages split among the processes mapping them)."""
    per = {}
    for pid in descendants(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    per[pid] = int(line.split()[1]) / 1024
        except OSError:
            continue
    return {
        "sum_mib": round(sum(per.values()), 1),
        "max_mib": round(max(per.values()), 1) if per else None,
        "nproc": len(per),
        "per": per,
    }


def reset_peak_rss(root: int) -> bool:
    """Set VmHWM of root and of each live descendant back to its current RSS (writing 5 to
    /proc/<pid>/clear_refs, Linux 4.0+), so that ``tree_peak_rss_mib`` read later gives the
    peak since now: of an ingest, not of the start-up before it. Whether every process took it."""
    done = True
    for pid in descendants(root):
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            done = False
    return done


def per_process(root: int) -> list[dict]:
    """VmHWM and current RSS of each process of the tree, with a short command line."""
    out = []
    for pid in descendants(root):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        cmd = " ".join(a.decode(errors="replace") for a in argv if a)
        cmd = cmd.replace(sys.executable, "python")
        out.append({"pid": pid, "cmd": cmd[:90], "hwm_mib": round(status_kib(pid, "VmHWM:") / 1024, 1),
                    "rss_mib": round(status_kib(pid, "VmRSS:") / 1024, 1)})
    return out


class TreeSampler:
    """Samples summed RSS and PSS of a process tree every SAMPLE_PERIOD_S in a thread."""

    def __init__(self, root: int, max_s: float):
        self.root = root
        self.max_iter = int(max_s / SAMPLE_PERIOD_S) + 1
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_nproc = 0
        self.samples = 0
        self.last_rss = 0
        self.th = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        for _ in range(self.max_iter):
            if self.stop_ev.is_set():
                return
            self.sample()
            self.stop_ev.wait(SAMPLE_PERIOD_S)

    def sample(self):
        pids = descendants(self.root)
        rss = sum(status_kib(p, "VmRSS:") for p in pids)
        pss = sum(pss_kib(p) for p in pids)
        with self.lock:
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self.peak_nproc = max(self.peak_nproc, len(pids))
            self.last_rss = rss
            self.samples += 1

    def reset(self):
        """Forget the peaks so far (call once the server is up, before the measured work)."""
        with self.lock:
            self.peak_rss = self.peak_pss = self.peak_nproc = self.samples = 0

    def start(self):
        self.th.start()

    def stop(self) -> dict:
        self.stop_ev.set()
        self.th.join(timeout=5)
        with self.lock:
            return {
                "rss_sum_mib": round(self.peak_rss / 1024, 1),
                "pss_sum_mib": round(self.peak_pss / 1024, 1),
                "nproc": self.peak_nproc,
                "samples": self.samples,
            }
