"""What the benchmarks print: the machine header, latency figures, result tables, problems."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
from pathlib import Path

import numpy as np

from servers import orthanc_binary, orthanc_version

CAVEAT = "caveat: 2 shared noisy cores: compare ratios within one run, not absolute numbers across runs"


# --------------------------------------------------------------------------
# machine facts
# --------------------------------------------------------------------------
def machine_facts() -> dict:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        nproc = os.cpu_count()
    import pydicom

    return {
        "nproc": nproc,
        "cpu_model": model,
        "mem_gib": mem_gib,
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "numpy": np.__version__,
        "kernel": platform.release(),
    }


def page_cache_cost(folder: Path, mib: int = 64) -> tuple[float, float]:
    """System CPU in ms per MB of writing ``mib`` MiB to a new file, twice: the second time after
    the first file is deleted, reusing the page-cache pages it freed. In a VM whose free memory
    was never touched, the first write also pays the host for backing each new page (measured on
    the bench machine: 6.5 ms/MB, against 0.3-0.5 once the pages had been used): both servers
    pay it for the files they write, until the guest's memory has been touched once. Printed
    with the table, so a run's state can be told; it is not part of any figure."""
    block = b"\xa5" * (1 << 20)

    def write(path: Path) -> float:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            for _ in range(mib):
                os.write(fd, block)
        finally:
            os.close(fd)
        return (resource.getrusage(resource.RUSAGE_SELF).ru_stime - before) * 1000 / (mib * 1.048576)

    first = write(folder / "page-cache-probe-1")
    (folder / "page-cache-probe-1").unlink()
    again = write(folder / "page-cache-probe-2")
    (folder / "page-cache-probe-2").unlink()
    return round(first, 2), round(again, 2)


def begin(no_orthanc: bool, no_ours: bool, code: str | None = None) -> tuple[dict | None, str | None]:
    """Start a dicomsvc-vs-Orthanc run: print the machine (and the commit, when given); return the
    results, with the facts and an empty entry per service taking part (None when none does), and
    Orthanc's binary (None: dicomsvc only)."""
    facts = machine_facts()
    binary = None if no_orthanc else orthanc_binary()
    if binary:
        facts["orthanc"] = orthanc_version(binary)
    if code is not None:
        facts["git"] = code
    print(f"machine: nproc={facts['nproc']}  cpu={facts['cpu_model']}  mem={facts['mem_gib']} GiB  "
          f"python {facts['python']}  pydicom {facts['pydicom']}" + (f"  {facts['orthanc']}" if binary else ""))
    if code is not None:
        print(f"code: {code}")
    print(CAVEAT)
    if not no_orthanc and not binary:
        print("note: Orthanc not installed -> dicomsvc only")
    if no_ours and not binary:
        print("nothing to benchmark", file=sys.stderr)
        return None, None
    out = {"facts": facts, "config": {}, "services": {}}
    if not no_ours:
        out["services"]["dicomsvc"] = {}
    if binary:
        out["services"]["orthanc"] = {}
    return out, binary


# --------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------
def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values), p, method="linear"))


def lat_summary(ms: list[float]) -> dict:
    return {
        "n": len(ms),
        "p50_ms": round(pct(ms, 50), 3) if ms else None,
        "p95_ms": round(pct(ms, 95), 3) if ms else None,
        "mean_ms": round(float(np.mean(ms)), 3) if ms else None,
    }


def fmt(x, spec="{:.1f}"):
    return "-" if x is None else spec.format(x)


def ratio(num, den):
    if num is None or den is None or den == 0:
        return None
    return round(num / den, 2)


def dig(d, ks):
    for k in ks:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


# --------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------
class Table:
    """One column per service, one row per figure; with two services (dicomsvc first) a ratio
    column, oriented so that > 1 means dicomsvc is better."""

    def __init__(self, services: dict):
        self.services = services
        self.names = list(services)
        self.rows: list[tuple[str, list[str] | None, float | None]] = []

    def row(self, label: str, keys: tuple, spec: str = "{:.1f}", better: str = "hi", compare: bool = True) -> None:
        """The figure at keys (a path into each service's results); better: "hi" or "lo"."""
        vals = [dig(self.services[n], keys) for n in self.names]
        r = None
        if len(self.names) == 2 and compare:
            r = ratio(vals[0], vals[1]) if better == "hi" else ratio(vals[1], vals[0])
        self.rows.append((label, [fmt(v, spec) for v in vals], r))

    def section(self, title: str) -> None:
        self.rows.append((title, None, None))

    def print(self) -> None:
        paired = len(self.names) == 2
        w0 = max(len(r[0]) for r in self.rows if r[1] is not None)
        head = f"{'':{w0}}  " + "  ".join(f"{n:>10}" for n in self.names)
        if paired:
            head += f"  {'ratio':>7}"
        print(head)
        print("-" * max(len(head), 40))
        for label, vals, r in self.rows:
            if vals is None:
                print(label)
                continue
            line = f"{label:{w0}}  " + "  ".join(f"{v:>10}" for v in vals)
            if paired:
                line += f"  {fmt(r, '{:.2f}'):>7}"
            print(line)


# --------------------------------------------------------------------------
# problems
# --------------------------------------------------------------------------
def problems_exit_code(errs: list[str], rc: int) -> int:
    """Print the problems; 1 when dicomsvc had any, 3 when only the peer did."""
    if not errs:
        return rc
    print("\nPROBLEMS:")
    for line in errs:
        print("  " + line)
    if any(line.startswith("dicomsvc") for line in errs):
        return rc or 1
    return rc or 3


def finish(out: dict, rc: int, print_report, errors: list[str], json_path: str | None, notes: tuple = ()) -> int:
    """Print the report, the problems, notes and, as the last stdout line, the results as JSON
    (also written indented to json_path when given); return the exit code."""
    print()
    print_report(out)
    rc = problems_exit_code(errors, rc)
    for line in notes:
        print(line)

    def _plain(o):
        return str(o) if isinstance(o, Path) else o

    text = json.dumps(out, separators=(",", ":"), default=_plain)
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=2, default=_plain) + "\n")
    print(text)
    return rc
