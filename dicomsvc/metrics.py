"""Prometheus metrics (prometheus-client), counted in the server process only.

Why not prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``): the
worker processes do the CPU work, but everything worth counting is seen by the
server process that hands the work out -- ingest results (created, duplicate,
failed) come back to it, rendering-cache hits and misses are decided in it, the
worker pool that replaces a dead or timed-out worker runs in it, and requests,
auth failures and jobs are its own. One server process owns a data directory
(``dicomsvc.lock``), so there is no second server process to add up either.
Counting there is multiprocess-safe by construction, with no mmap files to clear
at start and none left behind.

No label carries an id, a UID or anything read from a file: routes are route
templates (``/dicom/{id}/file``), the rest are small fixed vocabularies.
"""

import re

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

disable_created_metrics()  # no *_created series: half the output, and Prometheus ignores them
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # the text exposition format Prometheus has always read

# seconds; past 60 s a request is either an upload of a big archive or a problem
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

REQUESTS = Counter(
    "dicomsvc_http_requests", "HTTP requests answered, by method, route template and status",
    ["method", "route", "status"], registry=REGISTRY,
)  # fmt: skip
LATENCY = Histogram(
    "dicomsvc_http_request_duration_seconds", "Time from a request's arrival to the end of its answer",
    ["method", "route"], buckets=LATENCY_BUCKETS, registry=REGISTRY,
)  # fmt: skip
INGEST_OUTCOMES = ("created", "duplicate", "failed", "skipped", "anonymized")
INGESTED = Counter(
    "dicomsvc_instances_ingested",
    "Files ingested, by outcome (anonymized: copies made by POST /dicom/{id}/anonymize)",
    ["outcome"], registry=REGISTRY,
)  # fmt: skip
DELETED = Counter("dicomsvc_instances_deleted", "Instances deleted", registry=REGISTRY)
STORED_INSTANCES = Gauge("dicomsvc_stored_instances", "Instances stored (at scrape time)", registry=REGISTRY)
STORED_BYTES = Gauge(
    "dicomsvc_stored_bytes", "Bytes stored: DICOM files and their PNG renderings (at scrape time)", registry=REGISTRY
)
JOB_STATES = ("queued", "running")
JOBS = Gauge("dicomsvc_jobs", "Background import jobs not finished, by state (at scrape time)", ["state"], registry=REGISTRY)
WORKER_RESTARTS = Counter(
    "dicomsvc_worker_restarts", "Worker processes replaced, by reason (timeout, memory, crash)",
    ["reason"], registry=REGISTRY,
)  # fmt: skip
WORKER_TIMEOUTS = Counter(
    "dicomsvc_worker_timeouts", "Tasks stopped at DICOMSVC_WORKER_TIMEOUT (their worker killed)", registry=REGISTRY
)
GROUPED = Counter(
    "dicomsvc_worker_grouped_tasks", "Worker tasks that ran calls waiting together (single ingests: workers.run_grouped)",
    registry=REGISTRY,
)  # fmt: skip
GROUPED_ITEMS = Counter("dicomsvc_worker_grouped_items", "Calls run in grouped worker tasks", registry=REGISTRY)
RENDER_CACHE = Counter(
    "dicomsvc_rendering_cache", "Renderings other than the stored PNG: from the cache (hit) or made (miss)",
    ["result"], registry=REGISTRY,
)  # fmt: skip
AUTH_FAILURES = Counter(
    "dicomsvc_auth_failures", "Requests refused by authentication or authorization, by reason",
    ["reason"], registry=REGISTRY,
)  # fmt: skip
AUDIT_RECORDS = Counter("dicomsvc_audit_records", "Audit records written to the database", registry=REGISTRY)
AUDIT_ERRORS = Counter(
    "dicomsvc_audit_write_errors", "Audit batches that could not be written (kept and retried)", registry=REGISTRY
)
AUDIT_QUEUE = Gauge("dicomsvc_audit_queue", "Audit records waiting to be written", registry=REGISTRY)
AUDIT_DROPPED = Counter(
    "dicomsvc_audit_dropped", "Audit records dropped past DICOMSVC_AUDIT_QUEUE_MAX (the database refused writes)",
    registry=REGISTRY,
)  # fmt: skip

# DICOM networking (dicomsvc.dimse): counted from the associations' threads (counters are thread-safe)
DIMSE_ASSOCIATIONS = Counter(
    "dicomsvc_dimse_associations", "DICOM associations asked of the SCP, by result (accepted, rejected)",
    ["result"], registry=REGISTRY,
)  # fmt: skip
DIMSE_SERVICES = ("C-ECHO", "C-STORE", "C-FIND", "C-GET", "C-MOVE")
DIMSE_STATUSES = ("success", "warning", "failure", "cancel")  # PS3.7 Annex C status classes
DIMSE_REQUESTS = Counter(
    "dicomsvc_dimse_requests", "DIMSE requests the SCP answered, by service and final status class",
    ["service", "status"], registry=REGISTRY,
)  # fmt: skip
SENT = Counter(
    "dicomsvc_instances_sent", "Instance deliveries to destinations (POST /dicom/send, forwarding), by destination type and "
    "outcome of the attempt: sent, failed, transient (failed, to be retried)",
    ["type", "outcome"], registry=REGISTRY,
)  # fmt: skip
for _type in ("dimse", "stowrs"):
    for _outcome in ("sent", "failed", "transient"):
        SENT.labels(_type, _outcome)
# Forwarding by routing rules (dicomsvc.forwarding); labels: configured destination names only
FORWARD_OUTCOMES = ("sent", "retried", "failed")
FORWARDS = Counter(
    "dicomsvc_forwards", "Forwards this server sent, by destination and outcome (retried: a transient failure, "
    "tried again later; failed: for good)", ["destination", "outcome"], registry=REGISTRY,
)  # fmt: skip
FORWARD_QUEUE = Gauge(
    "dicomsvc_forward_queue", "Forwards queued, by destination (at scrape time)", ["destination"], registry=REGISTRY
)
for _result in ("accepted", "rejected"):
    DIMSE_ASSOCIATIONS.labels(_result)
for _service in DIMSE_SERVICES:
    for _status in DIMSE_STATUSES:
        DIMSE_REQUESTS.labels(_service, _status)

for _outcome in INGEST_OUTCOMES:  # present from the start at 0, so rate() sees the first one
    INGESTED.labels(_outcome)
for _result in ("hit", "miss"):
    RENDER_CACHE.labels(_result)
for _state in JOB_STATES:
    JOBS.labels(_state)

# (method, route template, status) -> the two children a request counts in: ``labels()`` looks
# them up under a lock with its label checks each time; there are a few hundred at most
# (methods x templates x statuses: all small fixed sets), so they are kept
_request_children: dict[tuple[str, str, int], tuple] = {}


def request_children(method: str, route: str, status: int) -> tuple:
    """(the ``REQUESTS`` counter, the ``LATENCY`` histogram) of requests with these labels."""
    key = (method, route, status)
    found = _request_children.get(key)
    if found is None:
        found = _request_children[key] = (REQUESTS.labels(method, route, str(status)), LATENCY.labels(method, route))
    return found


_REASON = re.compile(r"[a-z][a-z0-9_]{0,31}")


def reason_label(reason: str) -> str:
    """A reason as a label value: a short lower-case word, else ``other`` (never free text)."""
    return reason if isinstance(reason, str) and _REASON.fullmatch(reason) else "other"


_changes = 0  # instances created or deleted through this process: the stored totals' cache key


def ingested(outcome: str, count: int = 1) -> None:
    global _changes
    if outcome in INGEST_OUTCOMES and count:
        INGESTED.labels(outcome).inc(count)
        if outcome in ("created", "anonymized"):
            _changes += count


def deleted(count: int) -> None:
    global _changes
    if count:
        DELETED.inc(count)
        _changes += count


def changes() -> int:
    """How many instances were created or deleted through this process so far."""
    return _changes


def count_results(results) -> None:
    """Each file of a batch (``batch.Result``): created, duplicate, failed or skipped."""
    for result in results:
        ingested(result.status)


def worker_restart(reason: str) -> None:
    """A worker process was replaced (``timeout``, ``memory``, ``crash``): dicomsvc.workers."""
    WORKER_RESTARTS.labels(reason_label(reason)).inc()


def worker_timeout() -> None:
    WORKER_TIMEOUTS.inc()


def worker_group(items: int) -> None:
    GROUPED.inc()
    GROUPED_ITEMS.inc(items)


def rendering_cache(hit: bool) -> None:
    RENDER_CACHE.labels("hit" if hit else "miss").inc()


def auth_failure(reason: str) -> None:
    """A request refused by authentication or authorization; ``reason`` a short word
    (``missing_token``, ``expired``, ``bad_signature``, ``forbidden``...), else ``other``."""
    AUTH_FAILURES.labels(reason_label(reason)).inc()


def sent(destination_type: str, outcome: str, count: int = 1) -> None:
    """Attempts to deliver instances to a destination of ``destination_type`` that ended ``outcome``."""
    SENT.labels(destination_type, outcome).inc(count)


def dimse_association(accepted: bool) -> None:
    DIMSE_ASSOCIATIONS.labels("accepted" if accepted else "rejected").inc()


def dimse_request(service: str, status: int) -> None:
    """A DIMSE request answered with the final ``status`` (PS3.7 C: 0x0000 success, 0xFE00 cancel,
    0xB000-0xBFFF and 0x0001 warning, anything else failure)."""
    if service not in DIMSE_SERVICES:
        return
    if status == 0x0000:
        kind = "success"
    elif status == 0xFE00:
        kind = "cancel"
    elif status == 0x0001 or 0xB000 <= status <= 0xBFFF:
        kind = "warning"
    else:
        kind = "failure"
    DIMSE_REQUESTS.labels(service, kind).inc()


def forwarded(destination: str, sent: int, retried: int, failed: int) -> None:
    for outcome, n in zip(FORWARD_OUTCOMES, (sent, retried, failed)):
        if n:
            FORWARDS.labels(destination, outcome).inc(n)


def exposition() -> bytes:
    """Everything, in the Prometheus text format (version 0.0.4)."""
    return generate_latest(REGISTRY)
