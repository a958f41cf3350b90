"""``GET /metrics`` (Prometheus text format) and what the HTTP side counts.

The metrics themselves live in ``dicomsvc.metrics`` (counted in the server process
only: that module says why). A request authentication refused carries the reason in
``scope["state"]["auth_failure"]`` (``http.auth``): the middleware counts it; code that
refuses elsewhere may call ``auth_failure(reason)``.
"""

import time

from starlette.requests import Request
from starlette.responses import Response

from .. import forwarding, metrics
from ..metrics import auth_failure
from ..storage import instances
from ..storage import jobs as job_rows
from . import routing
from .status import ResponseStatus

__all__ = ["auth_failure", "MetricsMiddleware", "get_metrics"]
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
UNMATCHED = "unmatched"  # a path no route serves: never the path itself as a label
TOTALS_MAX_AGE = 30.0  # seconds the stored totals are reused between scrapes while nothing changed


class MetricsMiddleware:
    """Counts every request by method, route template and status, and times it (from its
    arrival to the end of its answer's body). Pure ASGI."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), ResponseStatus(send)
        try:
            await self.app(scope, receive, status)
        finally:
            method = scope["method"] if scope["method"] in METHODS else "other"
            route = routing.settled(scope)[0] or UNMATCHED
            count, latency = metrics.request_children(method, route, status.code)
            count.inc()
            latency.observe(time.perf_counter() - start)
            reason = (scope.get("state") or {}).get("auth_failure")
            if reason:
                auth_failure(reason)


_totals: dict = {"at": float("-inf"), "key": None}


async def _refresh_gauges(svc) -> None:
    """The gauges read from the database: jobs at every scrape (a small table); instances and
    bytes stored (a scan of the instance table: ~0.4 s for a million rows) again only when an
    instance was created or deleted since, or TOTALS_MAX_AGE seconds passed."""
    counts = await job_rows.unfinished_counts(svc.db)
    for state in metrics.JOB_STATES:
        metrics.JOBS.labels(state).set(counts.get(state, 0))
    if svc.config.network_config.destinations:  # forwards queued per destination (routing rules)
        for destination, n in (await forwarding.queue_depths(svc)).items():
            metrics.FORWARD_QUEUE.labels(destination).set(n)
    now, key = time.monotonic(), (svc.config.db_path, metrics.changes())
    if _totals["key"] != key or now - _totals["at"] > TOTALS_MAX_AGE:
        count, size = await svc.io(instances.totals, svc.config.database)
        metrics.STORED_INSTANCES.set(count)
        metrics.STORED_BYTES.set(size)
        _totals.update(at=now, key=key)


async def get_metrics(request: Request) -> Response:
    await _refresh_gauges(request.app.state.svc)
    return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)
