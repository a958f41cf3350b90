"""The audit trail's HTTP side: which routes touch patient data and how (``ACTIONS``), the
middleware that records each such request, and ``GET /audit``.

A request's action and the ids it names come from its route template and path
parameters, never from its query's values: a search records the *names* of its
parameters (``PatientID``, ``StudyDate``), because the values are patient IDs, names
and dates. The one exception is ``GET /image`` and ``GET /tags``, whose instance is
``?id=`` -- our own id, taken only if it has that shape. Path parameters are taken only
in the shape they must have (our 22-character ids; UIDs of digits and dots, PS3.5 §9.1),
so text a client puts where an id belongs never reaches the trail.

Uploads and deletes note each instance they touched (``dicomsvc.audit.note``): such a
request is recorded as one record per instance, each with its own outcome (201 created,
200 duplicate, 422 refused...).
"""

import re
from dataclasses import replace
from datetime import datetime, timezone
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse

from .. import audit
from ..errors import BadRequest
from ..storage import audit as audit_rows
from . import routing
from .status import ResponseStatus
from .who import who

UPLOAD, VIEW, DOWNLOAD, ANONYMIZE, DELETE, SEARCH, SEND = audit.ACTIONS
NONE = None  # the route touches no patient data: not recorded

_W = "/dicomweb"
_STUDY = _W + "/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{sop}"
_FRAME = _INSTANCE + "/frames/{frame}"

# (route template, method) -> action. Every route the app serves is here (tests/test_audit.py
# walks the route list): a new route must say whether and how it touches patient data.
ACTIONS: dict[tuple[str, str], str | None] = {
    ("/dicom", "POST"): UPLOAD,
    ("/dicom", "GET"): SEARCH,
    ("/dicom", "DELETE"): DELETE,
    ("/dicom/{id}", "GET"): VIEW,
    ("/dicom/{id}", "DELETE"): DELETE,
    ("/dicom/{id}/file", "GET"): DOWNLOAD,
    ("/dicom/{id}/pixels", "GET"): DOWNLOAD,
    ("/dicom/{id}/bulk/{path}", "GET"): DOWNLOAD,
    ("/dicom/{id}/anonymize", "POST"): ANONYMIZE,
    ("/dicom/send", "POST"): SEND,  # names the job; the job records each instance sent and where
    ("/image", "GET"): DOWNLOAD,
    ("/tags", "GET"): VIEW,
    ("/studies", "POST"): UPLOAD,
    ("/studies/{study}", "POST"): UPLOAD,
    ("/jobs", "GET"): SEARCH,  # jobs list the files uploaded and the instances made
    ("/jobs/{job}", "GET"): VIEW,
    ("/users/{user}/uploads", "GET"): SEARCH,
    ("/users/{user}/jobs", "GET"): SEARCH,
    # Resumable uploads (tus): creating and each chunk are uploads (the completing PATCH notes the
    # instance or job it made); HEAD/GET show offsets and the outcome's ids; DELETE drops received bytes
    ("/uploads/", "POST"): UPLOAD,
    ("/uploads/", "OPTIONS"): NONE,
    ("/uploads/{id}", "GET"): VIEW,
    ("/uploads/{id}", "PATCH"): UPLOAD,
    ("/uploads/{id}", "DELETE"): DELETE,
    # Clinical datasets: uploading one joins clinical data to studies; reading one shows it
    ("/datasets", "POST"): UPLOAD,
    ("/datasets", "GET"): SEARCH,
    ("/datasets/{dataset}", "GET"): VIEW,
    ("/datasets/{dataset}", "DELETE"): DELETE,
    ("/datasets/{dataset}/export", "POST"): DOWNLOAD,  # names the dataset and the export's job
    ("/jobs/{job}/result", "GET"): DOWNLOAD,
    ("/stats", "GET"): NONE,  # counts only
    ("/destinations", "GET"): NONE,  # configuration and reachability: no patient data
    ("/forwarding", "GET"): NONE,  # counts and error codes per destination: no patient data
    ("/audit", "GET"): NONE,
    ("/healthz", "GET"): NONE,
    ("/readyz", "GET"): NONE,
    ("/metrics", "GET"): NONE,
    ("/openapi.json", "GET"): NONE,
    ("/docs", "GET"): NONE,
    ("/", "GET"): NONE,  # the page in the browser and its assets: no data (http/page.py)
    ("/ui/config", "GET"): NONE,
    ("/ui/{name}", "GET"): NONE,
    # DICOMweb (PS3.18): QIDO-RS (§10.6), WADO-RS (§10.4), STOW-RS (§10.5), DELETE
    (_W + "/studies", "GET"): SEARCH,
    (_W + "/series", "GET"): SEARCH,
    (_W + "/instances", "GET"): SEARCH,
    (_STUDY + "/series", "GET"): SEARCH,
    (_STUDY + "/instances", "GET"): SEARCH,
    (_SERIES + "/instances", "GET"): SEARCH,
    (_STUDY, "GET"): DOWNLOAD,
    (_SERIES, "GET"): DOWNLOAD,
    (_INSTANCE, "GET"): DOWNLOAD,
    (_STUDY + "/metadata", "GET"): VIEW,
    (_SERIES + "/metadata", "GET"): VIEW,
    (_INSTANCE + "/metadata", "GET"): VIEW,
    (_INSTANCE + "/frames/{frames}", "GET"): DOWNLOAD,
    (_INSTANCE + "/bulk/{path}", "GET"): DOWNLOAD,
    **{(base + "/rendered", "GET"): DOWNLOAD for base in (_STUDY, _SERIES, _INSTANCE, _FRAME)},
    **{(base + "/thumbnail", "GET"): DOWNLOAD for base in (_STUDY, _SERIES, _INSTANCE, _FRAME)},
    (_W + "/studies", "POST"): UPLOAD,
    (_STUDY, "POST"): UPLOAD,
    (_STUDY, "DELETE"): DELETE,
    (_SERIES, "DELETE"): DELETE,
    (_INSTANCE, "DELETE"): DELETE,
}
QUERY_ID_ROUTES = {"/image", "/tags"}  # the instance is ?id= (the seed routes' shape)
ID = re.compile(r"[0-9A-Za-z]{22}")  # shortuuid: instances and jobs
UID = re.compile(r"[0-9.]{1,64}")  # PS3.5 §9.1: digits and dots, at most 64 characters


def action_of(template: str | None, method: str) -> str | None:
    return ACTIONS.get((template, "GET" if method == "HEAD" else method)) if template else None


def _shaped(value, pattern: re.Pattern) -> str | None:
    return value if isinstance(value, str) and pattern.fullmatch(value) else None


def base_record(scope: dict, when: str, status: int) -> audit.Record | None:
    """The request's record, or None when its route touches no patient data."""
    template, path = routing.settled(scope)
    method = scope["method"]
    action = action_of(template, method)
    if action is None:
        return None
    user, role = who(scope)
    query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    instance = _shaped(path.get("id"), ID)
    if template in QUERY_ID_ROUTES:
        instance = _shaped(dict(query).get("id"), ID)
    client = scope.get("client")
    return audit.Record(
        time=when,
        user=user,
        role=role,
        action=action,
        method="GET" if method == "HEAD" else method,
        route=template,
        instance=instance,
        study=_shaped(path.get("study"), UID),
        series=_shaped(path.get("series"), UID),
        sop=_shaped(path.get("sop"), UID),
        job=_shaped(path.get("job"), ID),
        params=audit.param_names(name for name, _ in query),
        status=status,
        client=client[0] if client else None,
        request_id=(scope.get("state") or {}).get("request_id"),
        dataset=_shaped(path.get("dataset"), ID),
    )


class AuditMiddleware:
    """Records every request to a route that touches patient data, once it is answered
    (refused ones included: 401, 403, 404 are part of the trail). Pure ASGI: it only
    watches the status go by and queues the records (``dicomsvc.audit.Trail``)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        notes = audit.begin_request()
        when, status = audit.now(), ResponseStatus(send)
        try:
            await self.app(scope, receive, status)
        finally:
            trail = audit.trail(getattr(scope["app"].state, "svc", None))
            if trail is not None:
                base = base_record(scope, when, status.code)
                if base is not None:
                    trail.add(_records(base, notes))


def _records(base: audit.Record, notes: audit.Notes) -> list[audit.Record]:
    if not notes.touched:
        return [base]
    return [
        replace(base, instance=t.instance or base.instance, job=t.job or base.job, status=t.status or base.status,
                dataset=t.dataset or base.dataset)
        for t in notes.touched
    ]


# GET /audit ------------------------------------------------------------------------------------

FILTERS = ("user", "action", "resource", "request_id", "since", "until")
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000


def _time(name: str, raw: str) -> str:
    """An ISO 8601 date or date-time (a zone, else UTC) as the trail writes times."""
    try:
        moment = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 date or date-time, such as 2026-01-31T08:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _number(raw: str | None, name: str, default: int | None, high: int) -> int | None:
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 15) or not 1 <= int(raw) <= high:
        raise BadRequest(f"{name} must be a whole number from 1 to {high}")
    return int(raw)


async def get_audit(request: Request) -> JSONResponse:
    """``GET /audit`` (admin): records newest first, filtered by ``user``, ``action``,
    ``resource`` (an instance, job or dataset id, or a study, series or SOP Instance UID), ``request_id``,
    ``since``/``until`` (ISO 8601; since <= time < until); ``limit`` per page and ``before``
    (the ``next_before`` of the previous page)."""
    query = request.query_params
    unknown = sorted(set(query) - set(FILTERS) - {"limit", "before"})
    if unknown:
        raise BadRequest(f"unknown parameter(s): {', '.join(n[:64] for n in unknown)}")
    filters = {name: query[name] for name in FILTERS if name in query}
    if "action" in filters and filters["action"] not in audit.ACTIONS:
        raise BadRequest(f"action must be one of {', '.join(audit.ACTIONS)}")
    for name in ("since", "until"):
        if name in filters:
            filters[name] = _time(name, filters[name])
    limit = _number(query.get("limit"), "limit", DEFAULT_LIMIT, MAX_LIMIT)
    before = _number(query.get("before"), "before", None, 2**62)
    svc = request.app.state.svc
    trail = audit.trail(svc)
    if trail is not None:
        await trail.flush()  # what was done up to now is in the answer
    rows = await audit_rows.page(svc.db, filters, limit + 1, before)
    more = len(rows) > limit
    items = rows[:limit]
    return JSONResponse(
        {"items": items, "limit": limit, "next_before": items[-1]["seq"] if more and items else None}
    )
