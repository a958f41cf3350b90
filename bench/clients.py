"""N client threads sending a corpus to one server, one request per instance, timed.

Used by bench/ingest.py (dicomsvc reads the file by path) and bench/upload.py
(the file is the request body): each gives a ``send`` for its service.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from corpus import Instance
from procstat import cpu_figures, settle_cpu, tree_cpu_seconds

MAX_ERR_SAMPLES = 5

# send(client, instance) -> (answer, error): answer is kept when error is None
Send = Callable[[httpx.Client, Instance], tuple[object, "str | None"]]


@dataclass
class Sent:
    clients: int
    answers: list  # per instance: what send answered, None where it failed or was not sent
    n_err: int
    error_samples: list[str]
    timed_out: bool
    wall: float  # s, first request to last reply
    client_cpu: float  # s, this process (the bench client) over the same span
    cpu: tuple[float, float, float]  # server tree CPU s: before, after the last reply, settled

    @property
    def ok(self) -> int:
        return sum(1 for a in self.answers if a is not None)

    def summary(self, **after_ok) -> dict:
        """The figures of the run (after_ok: more figures, placed after "ok")."""
        ok = self.ok
        return {
            "clients": self.clients,
            "n": len(self.answers),
            "ok": ok,
            **after_ok,
            "errors": self.n_err,
            "error_samples": self.error_samples,
            "timed_out": self.timed_out,
            "wall_s": round(self.wall, 3),
            "inst_per_s": round(ok / self.wall, 2) if self.wall > 0 and ok else None,
            **cpu_figures(*self.cpu, ok),
        }


def send_each(insts: list[Instance], clients: int, deadline_s: float, open_client: Callable[[], httpx.Client],
              send: Send, server_pid: int | Sequence[int]) -> Sent:
    """Every instance sent once, by ``clients`` threads taking the next one in turn (bounded by the
    count and by deadline_s); with server CPU read before the first and after the last request
    (summed over the servers, when ``server_pid`` lists several: replicas)."""
    pids = [server_pid] if isinstance(server_pid, int) else list(server_pid)
    answers: list = [None] * len(insts)
    errors: list[str] = []
    n_err = 0
    lock = threading.Lock()
    next_i = 0
    deadline = time.monotonic() + deadline_s
    timed_out = False

    def worker():
        nonlocal next_i, n_err, timed_out
        with open_client() as c:
            for _ in range(len(insts)):  # bounded by count
                with lock:
                    if next_i >= len(insts):
                        return
                    i = next_i
                    next_i += 1
                if time.monotonic() > deadline:
                    with lock:
                        timed_out = True
                    return
                try:
                    answer, err = send(c, insts[i])
                except httpx.HTTPError as e:
                    answer, err = None, f"{insts[i].rel}: {e!r}"
                with lock:
                    if err:
                        n_err += 1
                        if len(errors) < MAX_ERR_SAMPLES:
                            errors.append(err)
                    else:
                        answers[i] = answer

    cpu0 = sum(tree_cpu_seconds(pid) for pid in pids)
    ccpu0 = time.process_time()
    t0 = time.perf_counter()
    if clients == 1:
        worker()
    else:
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=max(1.0, deadline - time.monotonic() + 120))
    wall = time.perf_counter() - t0
    cpu1 = sum(tree_cpu_seconds(pid) for pid in pids)
    client_cpu = time.process_time() - ccpu0
    cpu2 = sum(settle_cpu(pid) for pid in pids)
    return Sent(clients, answers, n_err, errors, timed_out, wall, client_cpu, (cpu0, cpu1, cpu2))


def problems(name: str, phase: str, p: dict | None) -> list[str]:
    """Report lines for a summary() that did not store every instance."""
    if not p or not (p.get("errors") or p.get("timed_out") or p.get("ok") != p.get("n")):
        return []
    return [f"{name} {phase}: {p.get('ok')}/{p.get('n')} ok, {p.get('errors')} errors, timed_out={p.get('timed_out')}",
            *(f"    {e}" for e in p.get("error_samples", []))]
