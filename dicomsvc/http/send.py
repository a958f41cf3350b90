"""``POST /dicom/send``: queue the send of stored instances to a configured destination.

Body (JSON): ``{"to": NAME, "ids": [...]}``, or ``"study": UID``, ``"series": UID`` or
``"filter": {...}`` (the parameters ``GET /dicom`` takes: PatientID, StudyInstanceUID,
SeriesInstanceUID, SOPInstanceUID, Modality, AccessionNumber, StudyDate) instead of ``ids``;
optional ``"anonymize": true`` (what leaves is the anonymized copy) and ``"delete_after": true``
(each instance confirmed sent is deleted here; the admin role, as ``DELETE /dicom/{id}``).
Answers 202 ``{"job", "status_url"}``; the work is ``dicomsvc.sendjobs``'s. Refusals: 400 a
malformed body or an unknown destination, 403 ``delete_after`` without the admin role, 404 ids
that name no instance the caller can see or a selection matching none, 413 more than
DICOMSVC_SEND_MAX_INSTANCES.
"""

import re

from starlette.requests import Request

from .. import audit, sendjobs
from ..errors import BadRequest, Forbidden
from ..service import Service
from .auth import identity, owner_of, user_of
from .catalog import filters
from .instances import ID_RE
from .requests import MAX_JSON_BYTES, base_url, read_json_object

FIELDS = {"to", "ids", "study", "series", "filter", "anonymize", "delete_after"}
SELECTORS = ("ids", "study", "series", "filter")
UID = re.compile(r"[0-9.]{1,64}")  # PS3.5 §9.1: digits and dots, at most 64 characters


async def send(svc: Service, request: Request) -> tuple[str, str]:
    """The send job's id and its status URL."""
    limit = max(MAX_JSON_BYTES, svc.config.send_max_instances * 32)  # an id is 22 characters, quoted, a comma
    body = await read_json_object(request, limit)
    unknown = set(body) - FIELDS
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    to = sendjobs.destination(svc, body.get("to"))
    given = [k for k in SELECTORS if k in body]
    if len(given) != 1:
        raise BadRequest("give exactly one of ids, study, series or filter")
    flags = {}
    for name in ("anonymize", "delete_after"):
        if not isinstance(body.get(name, False), bool):
            raise BadRequest(f"{name} must be true or false")
        flags[name] = body.get(name, False)
    if flags["delete_after"] and not identity(request).is_admin:
        raise Forbidden("delete_after deletes the instances here: it needs the admin role (as DELETE /dicom/{id})")
    ids, exact, study_date = None, None, None
    kind = given[0]
    value = body[kind]
    if kind == "ids":
        if not isinstance(value, list) or not value or not all(isinstance(i, str) and ID_RE.fullmatch(i) for i in value):
            raise BadRequest("ids must be a non-empty list of instance ids")
        ids = value
    elif kind in ("study", "series"):
        if not isinstance(value, str) or not UID.fullmatch(value):
            raise BadRequest(f"{kind} must be a UID (digits and dots, at most 64 characters)")
        exact = {"StudyInstanceUID" if kind == "study" else "SeriesInstanceUID": value}
    else:
        if not isinstance(value, dict) or not value or not all(isinstance(v, str) for v in value.values()):
            raise BadRequest("filter must be an object of search parameters (as GET /dicom takes), text values, at least one")
        wanted = filters(value)
        exact, study_date = wanted.exact, wanted.study_date
    chosen = await sendjobs.select(svc, ids, exact, study_date, owner_of(request))
    job_id = await sendjobs.submit(svc, to, chosen, flags["anonymize"], flags["delete_after"], user_of(request))
    audit.note(job=job_id)
    return job_id, f"{base_url(request)}/jobs/{job_id}"
