"""The OpenAPI 3 description of every route (``GET /openapi.json``) and a plain HTML page
of it (``GET /docs``, self-contained: no scripts fetched from elsewhere).

Tests check that every route the app serves is described here and that the
document is valid OpenAPI.
"""

import html

from .. import __version__
from . import rules
from .page import OPENAPI as PAGE_PATHS
from .tus import OPENAPI as TUS_PATHS

ERROR = {"$ref": "#/components/schemas/Error"}
JSON_OBJECT = {"type": "object"}


def _param(name: str, where: str, description: str, kind: str = "string", required: bool = False) -> dict:
    return {"name": name, "in": where, "required": required, "description": description, "schema": {"type": kind}}


def _answers(ok: dict[str, tuple[str, str]], errors: dict[str, str]) -> dict:
    """``ok``: status -> (media type, description); ``errors``: status -> description."""
    out = {
        status: {"description": text, "content": {media: {"schema": JSON_OBJECT if "json" in media else {}}}}
        for status, (media, text) in ok.items()
    }
    for status, text in errors.items():
        out[status] = {"description": text, "content": {"application/json": {"schema": ERROR}}}
    return out


ID = _param("id", "path", "the instance's id (22 characters)", required=True)
RANGE = _param("Range", "header", "bytes=first-last,... (RFC 9110 §14.1.2); anything else is ignored")
QUERY_ID = _param("id", "query", "the instance's id (22 characters)", required=True)
FILTERS = [
    _param(k, "query", d)
    for k, d in (
        ("PatientID", "exact match"),
        ("StudyInstanceUID", "exact match"),
        ("SeriesInstanceUID", "exact match"),
        ("SOPInstanceUID", "exact match"),
        ("Modality", "exact match"),
        ("AccessionNumber", "exact match"),
        ("StudyDate", "YYYYMMDD, or a range YYYYMMDD-YYYYMMDD with either end open"),
    )
]
ANON = [
    _param("anonymize", "query", "true: store the PS3.15 Basic-profile anonymized instance", "boolean"),
    _param("allow_burned_in", "query", "true: anonymize kinds that often carry burned-in text too", "boolean"),
]
INGEST_ERRORS = {
    "400": "malformed request",
    "403": "path outside the import root",
    "404": "no such file",
    "413": "over a size or archive limit",
    "415": "unsupported media type",
    "422": "not a DICOM instance, or refused for burned-in annotation",
}

STOW = {
    "requestBody": {"content": {"multipart/related": {"schema": {"type": "string", "format": "binary"}}}},
    "responses": _answers(
        {
            "200": ("application/dicom+json", "all stored"),
            "202": ("application/dicom+json", "some stored"),
            "409": ("application/dicom+json", "none stored"),
        },
        {"415": "not multipart/related of application/dicom"},
    ),
}

PATHS: dict[str, dict] = {
    "/dicom": {
        "post": {
            "summary": "Store instances: a path under the import root, a DICOM body, a ZIP, multipart files, "
            "or a JPEG/PNG made a Secondary Capture instance (attributes by DICOM keyword, study_type, burned_in)",
            "parameters": [_param("async", "query", "true: answer 202 with a job at once", "boolean"), *ANON],
            "requestBody": {
                "content": {
                    "application/json": {"schema": {"type": "object", "properties": {
                        "path": {"type": "string"}, "anonymize": {"type": "boolean"},
                        "allow_burned_in": {"type": "boolean"}}, "required": ["path"]}},
                    "application/dicom": {"schema": {"type": "string", "format": "binary"}},
                    "application/zip": {"schema": {"type": "string", "format": "binary"}},
                    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                    "image/png": {"schema": {"type": "string", "format": "binary"}},
                    "multipart/form-data": {"schema": {"type": "object", "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "anonymize": {"type": "string"}}}},
                }  # fmt: skip
            },
            "responses": _answers(
                {
                    "201": ("application/json", "stored: {id}"),
                    "200": ("application/json", "already stored {id}, or per-file results of several"),
                    "202": ("application/json", "a background job: {job, status_url}"),
                },
                INGEST_ERRORS,
            ),
        },
        "get": {
            "summary": "Search stored instances, newest first",
            "parameters": [
                *FILTERS,
                _param("mine", "query", "true: only instances the caller uploaded", "boolean"),
                _param("limit", "query", "page size, 1-1000 (default 100)", "integer"),
                _param("offset", "query", "instances to skip", "integer"),
            ],
            "responses": _answers({"200": ("application/json", "{items, limit, offset, next_offset}")}, {"400": "bad filter"}),
        },
        "delete": {
            "summary": "Delete every instance matching a filter (a filter is required)",
            "parameters": FILTERS,
            "responses": _answers({"200": ("application/json", "{deleted}")}, {"400": "no or bad filter"}),
        },
    },
    "/dicom/{id}": {
        "get": {
            "summary": "An instance's metadata summary",
            "parameters": [ID],
            "responses": _answers({"200": ("application/json", "metadata")}, {"404": "unknown id"}),
        },
        "delete": {
            "summary": "Delete an instance, its tags and every blob",
            "parameters": [ID],
            "responses": {"204": {"description": "deleted"}, "404": _answers({}, {"404": "unknown id"})["404"]},
        },
    },
    "/dicom/{id}/file": {
        "get": {
            "summary": "The stored DICOM file",
            "parameters": [ID, RANGE],
            "responses": _answers(
                {"200": ("application/dicom", "the file (also when Range is not a byte-range list: ignored)"),
                 "206": ("application/dicom", "the ranges asked for (multipart/byteranges for several)")},
                {"404": "unknown id", "416": "no range asked for lies within the file"},
            ),  # fmt: skip
        }
    },
    "/dicom/{id}/anonymize": {
        "post": {
            "summary": "Store an anonymized copy of an instance",
            "parameters": [ID, ANON[1]],
            "responses": _answers(
                {"201": ("application/json", "{id, source}"), "200": ("application/json", "that copy exists: {id, source}")},
                {"404": "unknown id", "422": "refused for burned-in annotation"},
            ),
        }
    },
    "/image": {
        "get": {
            "summary": "A rendering: by default frame 1 as PNG as rendered at ingest (modality LUT, VOI, "
            "MONOCHROME1 inversion); other frames, windows, sizes and JPEG are rendered once and kept",
            "parameters": [
                QUERY_ID,
                _param("frame", "query", "1-based frame number", "integer"),
                _param("window", "query", "center,width (aliases windowCenter and windowWidth)"),
                _param("windowCenter", "query", "window center", "number"),
                _param("windowWidth", "query", "window width", "number"),
                _param("width", "query", "fit into this width, aspect kept", "integer"),
                _param("height", "query", "fit into this height, aspect kept", "integer"),
                _param("format", "query", "png or jpeg (else the Accept header decides)"),
                _param("quality", "query", "JPEG quality 1-100 (default 90)", "integer"),
                _param("If-None-Match", "header", "an ETag from an earlier answer"),
            ],
            "responses": _answers(
                {"200": ("image/png", "the rendering (image/jpeg when asked)"), "304": ("image/png", "not modified")},
                {"400": "missing id or bad parameter", "404": "unknown id, or no pixel data",
                 "415": "pixel data that cannot be decoded"},
            ),  # fmt: skip
        }
    },
    "/tags": {
        "get": {
            "summary": "Every data element as a row: {uuid, tags: [{ID, Tag, VR, Value, Name, Bytes?, Parent?, Item?}]}",
            "parameters": [
                QUERY_ID,
                _param("format", "query", "rows (default) or dicomjson: the DICOM JSON model (PS3.18 F)"),
            ],
            "responses": _answers(
                {"200": ("application/json", "the rows, in file order (application/dicom+json for dicomjson)")},
                {"400": "missing id or bad format", "404": "unknown id"},
            ),
        }
    },
    "/dicom/{id}/pixels": {
        "get": {
            "summary": "The pixel values as a .npy file (frames x rows x columns x samples, squeezed)",
            "parameters": [
                ID,
                _param("frame", "query", "1-based: one frame only", "integer"),
                _param("rescale", "query", "true: apply the modality LUT (float32)", "boolean"),
                RANGE,
            ],
            "responses": _answers(
                {"200": ("application/octet-stream", ".npy"), "206": ("application/octet-stream", "the ranges asked for")},
                {"400": "bad frame", "404": "unknown id or no pixel data",
                 "415": "undecodable pixel data, or cut short or inconsistent", "416": "no range asked for lies within it"},
            ),  # fmt: skip
        }
    },
    "/dicom/{id}/bulk/{path}": {
        "get": {
            "summary": "One binary value (BulkDataURI of the DICOM JSON model), as stored",
            "parameters": [ID, _param("path", "path", "tag, or tag/item/tag/... inside sequences", required=True)],
            "responses": _answers({"200": ("application/octet-stream", "the bytes")}, {"404": "no such element"}),
        }
    },
    "/jobs": {
        "get": {
            "summary": "Background jobs, newest first (under DICOMSVC_VISIBILITY=own, the caller's)",
            "parameters": [
                _param("mine", "query", "true: only jobs the caller asked for", "boolean"),
                _param("limit", "query", "page size, 1-1000 (default 100)", "integer"),
                _param("offset", "query", "jobs to skip", "integer"),
            ],
            "responses": _answers({"200": ("application/json", "{items, limit, offset, next_offset}")}, {"400": "bad parameter"}),
        }
    },
    "/datasets": {
        "post": {
            "summary": "Join a clinical CSV to stored studies by PatientID, AccessionNumber or StudyInstanceUID; "
            "the other columns kept as the matched studies' clinical attributes (anonymize: keys stored as pseudonyms)",
            "requestBody": {"content": {"multipart/form-data": {"schema": {"type": "object", "properties": {
                "csv": {"type": "string", "format": "binary"},
                "key": {"type": "string", "enum": ["PatientID", "AccessionNumber", "StudyInstanceUID"]},
                "column": {"type": "string"}, "anonymize": {"type": "string"}}, "required": ["csv", "key"]}}}},
            "responses": _answers(
                {"201": ("application/json", "{id, rows, matched, unmatched, ambiguous, duplicates, ragged} (row numbers)")},
                {"400": "no header, unknown key or column, malformed CSV", "413": "DICOMSVC_DATASET_MAX_BYTES/_ROWS/_COLUMNS",
                 "415": "not multipart/form-data"},
            ),
        },
        "get": {
            "summary": "Clinical datasets, newest first (under DICOMSVC_VISIBILITY=own, the caller's)",
            "parameters": [
                _param("limit", "query", "page size, 1-1000 (default 100)", "integer"),
                _param("offset", "query", "datasets to skip", "integer"),
            ],
            "responses": _answers({"200": ("application/json", "{items, limit, offset, next_offset}")}, {"400": "bad parameter"}),
        },
    },
    "/datasets/{dataset}": {
        "get": {
            "summary": "A clinical dataset's summary and the UIDs of the studies it is joined to",
            "parameters": [_param("dataset", "path", "the dataset id", required=True)],
            "responses": _answers({"200": ("application/json", "{id, key, column, matched, ..., studies}")}, {"404": "unknown dataset"}),
        },
        "delete": {
            "summary": "Remove a clinical dataset and its joined rows (never the studies); its exports' results go "
            "too (410 afterwards). Its uploader or an admin",
            "parameters": [_param("dataset", "path", "the dataset id", required=True)],
            "responses": {"204": {"description": "deleted"}} | _answers({}, {"403": "someone else's dataset (not an admin)",
                                                                              "404": "unknown dataset"}),
        },
    },
    "/datasets/{dataset}/export": {
        "post": {
            "summary": "Export a dataset's studies for ML as a background job: .npy/.png/.dcm files per study and "
            "series and manifest.csv (paths, UIDs, geometry, the joined clinical columns; formula-escaped)",
            "parameters": [_param("dataset", "path", "the dataset id", required=True)],
            "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {
                "include": {"type": "array", "items": {"type": "string", "enum": ["npy", "png", "dicom"]}},
                "rescale": {"type": "boolean"}, "anonymize": {"type": "boolean"},
                "allow_burned_in": {"type": "boolean"}, "filter": {"type": "object"}}}}}},
            "responses": _answers({"202": ("application/json", "{job, status_url}")},
                                  {"400": "bad parameters", "404": "unknown dataset"}),
        }
    },
    "/jobs/{job}/result": {
        "get": {
            "summary": "A finished dataset export as a ZIP, streamed",
            "parameters": [_param("job", "path", "the export's job id", required=True)],
            "responses": _answers({"200": ("application/zip", "manifest.csv and the files")},
                                  {"404": "no export with that job id", "409": "the export is not done yet",
                                   "410": "the result expired (DICOMSVC_EXPORT_RESULT_SECONDS) or its dataset was deleted"}),
        }
    },
    "/users/{user}/uploads": {
        "get": {
            "summary": "Instances a user uploaded, newest first (that user, or an admin)",
            "parameters": [
                _param("user", "path", "the user (a token's subject)", required=True),
                *FILTERS,
                _param("limit", "query", "page size, 1-1000 (default 100)", "integer"),
                _param("offset", "query", "instances to skip", "integer"),
            ],
            "responses": _answers({"200": ("application/json", "{items, limit, offset, next_offset}")}, {"400": "bad filter"}),
        }
    },
    "/users/{user}/jobs": {
        "get": {
            "summary": "Background jobs a user asked for, newest first (that user, or an admin)",
            "parameters": [
                _param("user", "path", "the user (a token's subject)", required=True),
                _param("limit", "query", "page size, 1-1000 (default 100)", "integer"),
                _param("offset", "query", "jobs to skip", "integer"),
            ],
            "responses": _answers({"200": ("application/json", "{items, limit, offset, next_offset}")}, {"400": "bad parameter"}),
        }
    },
    "/jobs/{job}": {
        "get": {
            "summary": "A background job's progress and per-file results",
            "parameters": [
                _param("job", "path", "the job id", required=True),
                _param("wait", "query", "seconds, 0-60: the answer held until the job is done or failed, at most that long", "number"),
                _param("results", "query", "false: without the per-file results (a progress poll)", "boolean"),
            ],
            "responses": _answers(
                {"200": ("application/json", "{id, status, total, processed, ..., results}")},
                {"400": "bad wait or results", "404": "unknown job"},
            ),
        }
    },
    "/studies": {
        "post": {
            "summary": "STOW-RS: store instances (multipart/related; type=\"application/dicom\")",
            "parameters": [ANON[0]],
            **STOW,
        }
    },
    "/studies/{study}": {
        "post": {
            "summary": "STOW-RS into one study: instances of other studies fail",
            "parameters": [_param("study", "path", "Study Instance UID", required=True), ANON[0]],
            **STOW,
        }
    },
    "/stats": {
        "get": {
            "summary": "Counts: instances, series, studies, patients, bytes, by modality and by uploader (users, "
            "by_user); first and last ingest (under DICOMSVC_VISIBILITY=own, of the caller's uploads)",
            "responses": _answers({"200": ("application/json", "statistics")}, {}),
        }
    },
    "/dicom/send": {
        "post": {
            "summary": "Send stored instances to a configured destination (DIMSE C-STORE or STOW-RS) as a background "
            "job: batches, per-instance outcomes at /jobs/{job}, transient failures retried with backoff",
            "requestBody": {"content": {"application/json": {"schema": {"type": "object", "required": ["to"], "properties": {
                "to": {"type": "string", "description": "a destination's name (GET /destinations)"},
                "ids": {"type": "array", "items": {"type": "string"}}, "study": {"type": "string"},
                "series": {"type": "string"}, "filter": {"type": "object", "description": "GET /dicom's parameters"},
                "anonymize": {"type": "boolean"},
                "delete_after": {"type": "boolean", "description": "delete each instance here once its send is confirmed (admin)"},
            }}}}},
            "responses": _answers({"202": ("application/json", "{job, status_url}")},
                                  {"400": "malformed body or unknown destination", "403": "delete_after without the admin role",
                                   "404": "ids or a selection naming no stored instance",
                                   "413": "more than DICOMSVC_SEND_MAX_INSTANCES instances"}),
        }
    },
    "/destinations": {
        "get": {
            "summary": "The destinations of DICOMSVC_NETWORK_CONFIG, each checked: C-ECHO for a DIMSE peer, a QIDO-RS "
            "request for a STOW-RS service (uploaders; tokens are never shown)",
            "responses": _answers(
                {"200": ("application/json", "{destinations: [{name, type, ae_title/host/port or url/token, reachable, "
                                             "check, status, detail, ms}]}")},
                {},
            ),
        }
    },
    "/forwarding": {
        "get": {
            "summary": "The routing rules' forwarding queue: per destination, forwards queued, sent and failed, the "
            "oldest queued one's age and the last failure's detail; the rules (match keys, destination, anonymize)",
            "responses": _answers(
                {"200": ("application/json", "{destinations: [{name, configured, queued, sent, failed, "
                                             "oldest_queued_seconds, last_error: {detail, seconds_ago}}], "
                                             "rules: [{match, to, anonymize}]}")},
                {},
            ),
        }
    },
    "/healthz": {"get": {"summary": "Liveness", "responses": _answers({"200": ("application/json", "{status: ok}")}, {})}},
    "/readyz": {
        "get": {
            "summary": "Readiness: the database takes writes, DICOMSVC_MIN_FREE_BYTES are free, a worker lives",
            "responses": _answers(
                {"200": ("application/json", "{status: ready, checks: {database, disk, workers}}")},
                {"503": "not ready: {error: not_ready, detail, checks}"},
            ),
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics (text format 0.0.4); a token only with DICOMSVC_METRICS_AUTH=true",
            "responses": _answers({"200": ("text/plain", "Prometheus text exposition format")}, {}),
        }
    },
    "/audit": {
        "get": {
            "summary": "The audit trail, newest first (admins): who did what to which instance, study, series or job",
            "parameters": [
                _param("user", "query", "records of this user"),
                _param("action", "query", "upload, view, download, anonymize, delete or search"),
                _param("resource", "query", "an instance, job or dataset id, or a Study, Series or SOP Instance UID"),
                _param("request_id", "query", "records of this request (X-Request-ID)"),
                _param("since", "query", "ISO 8601 date or date-time: records at or after it"),
                _param("until", "query", "ISO 8601 date or date-time: records before it"),
                _param("limit", "query", "page size, 1-1000 (default 100)", "integer"),
                _param("before", "query", "the previous page's next_before", "integer"),
            ],
            "responses": _answers({"200": ("application/json", "{items, limit, next_before}")}, {"400": "bad parameter"}),
        }
    },
    "/openapi.json": {"get": {"summary": "This document", "responses": _answers({"200": ("application/json", "OpenAPI 3")}, {})}},
    "/docs": {"get": {"summary": "This document as a web page", "responses": _answers({"200": ("text/html", "HTML")}, {})}},
}


# DICOMweb WADO-RS (PS3.18 §10.4), under /dicomweb: dicomsvc/http/dicomweb/wado.py -------------

STUDY = _param("study", "path", "Study Instance UID (0020,000D)", required=True)
SERIES = _param("series", "path", "Series Instance UID (0020,000E)", required=True)
SOP = _param("sop", "path", "SOP Instance UID (0008,0018)", required=True)
ACCEPT = _param("Accept", "header", "media types, quoted or not, with q-values and transfer-syntax parameters")
IF_NONE_MATCH = _param("If-None-Match", "header", "an ETag from an earlier answer")
RENDER_PARAMS = [
    _param("viewport", "query", "vw,vh: fit into this box, aspect kept (PS3.18 8.3.5.1.2)"),
    _param("window", "query", "center,width,function (linear, linear-exact, sigmoid; PS3.18 8.3.5.1.3)"),
    _param("quality", "query", "JPEG quality 1-100 (default 90)", "integer"),
    _param("accept", "query", "image/jpeg (default) or image/png, instead of the Accept header"),
    ACCEPT,
    IF_NONE_MATCH,
]
RETRIEVE_ANSWERS = _answers(
    {"200": ("multipart/related", 'multipart/related; type="application/dicom": one part per instance, streamed')},
    {"404": "no such study, series or instance", "406": "no acceptable media type or transfer syntax can be produced",
     "415": "pixel data that cannot be decoded"},
)  # fmt: skip
IMAGE_ANSWERS = _answers(
    {"200": ("image/jpeg", "the rendering (image/png when asked)"), "304": ("image/jpeg", "not modified")},
    {"400": "bad parameter", "404": "no such resource, frame or pixel data", "406": "neither JPEG nor PNG acceptable",
     "415": "pixel data that cannot be decoded"},
)  # fmt: skip


def _rendered(what: str, params: list[dict], thumbnail: bool) -> dict:
    kind = "A thumbnail (fits DICOMSVC_THUMBNAIL_SIZE unless viewport says)" if thumbnail else "Rendered"
    shown = [p for p in RENDER_PARAMS if not (thumbnail and p["name"] == "window")]
    return {"get": {"summary": f"{kind}: {what}", "parameters": [*params, *shown], "responses": IMAGE_ANSWERS}}


_WADO_STUDY = "/dicomweb/studies/{study}"
_WADO_SERIES = _WADO_STUDY + "/series/{series}"
_WADO_INSTANCE = _WADO_SERIES + "/instances/{sop}"
_FRAME = _param("frame", "path", "one 1-based frame number", "integer", required=True)
WADO_PATHS: dict[str, dict] = {
    _WADO_STUDY: {"get": {
        "summary": "WADO-RS retrieve study: every instance; transfer syntax from Accept (transfer-syntax=* as "
        "stored, else Explicit VR Little Endian, decompressed; lossy data as stored)",
        "parameters": [STUDY, ACCEPT], "responses": RETRIEVE_ANSWERS}},
    _WADO_SERIES: {"get": {
        "summary": "WADO-RS retrieve series", "parameters": [STUDY, SERIES, ACCEPT], "responses": RETRIEVE_ANSWERS}},
    _WADO_INSTANCE: {"get": {
        "summary": "WADO-RS retrieve instance (also application/dicom, single part)",
        "parameters": [STUDY, SERIES, SOP, ACCEPT], "responses": RETRIEVE_ANSWERS}},
    _WADO_INSTANCE + "/frames/{frames}": {"get": {
        "summary": "WADO-RS frames: one part each, uncompressed (application/octet-stream) or, when Accept allows "
        "it (transfer-syntax=*, image/jls, image/jp2, image/jpeg, image/dicom-rle...), as stored; strong ETag",
        "parameters": [STUDY, SERIES, SOP, _param("frames", "path", "1-based frame numbers: 1 or 1,3,5", required=True),
                       ACCEPT, IF_NONE_MATCH],
        "responses": _answers(
            {"200": ("multipart/related", "one part per frame"), "304": ("multipart/related", "not modified")},
            {"400": "malformed frame list", "404": "no such instance, frame or pixel data",
             "406": "no acceptable representation", "415": "pixel data that cannot be decoded"})}},
    _WADO_INSTANCE + "/bulk/{path}": {"get": {
        "summary": "WADO-RS bulk data (a BulkDataURI of the metadata); the Pixel Data URI answers the frames",
        "parameters": [STUDY, SERIES, SOP, _param("path", "path", "tag, or tag/item/tag/... inside sequences",
                                                  required=True), ACCEPT],
        "responses": _answers(
            {"200": ("multipart/related", 'multipart/related; type="application/octet-stream" (or one '
                     "application/octet-stream body when asked)")},
            {"404": "no such instance or element", "406": "no acceptable representation"})}},
    _WADO_STUDY + "/rendered": _rendered("a representative image of the study: frame 1 of the middle instance of "
                                         "its first series", [STUDY], False),
    _WADO_SERIES + "/rendered": _rendered("frame 1 of the middle instance of the series", [STUDY, SERIES], False),
    _WADO_INSTANCE + "/rendered": _rendered("frame 1 of the instance", [STUDY, SERIES, SOP], False),
    _WADO_INSTANCE + "/frames/{frame}/rendered": _rendered("one frame", [STUDY, SERIES, SOP, _FRAME], False),
    _WADO_STUDY + "/thumbnail": _rendered("the study", [STUDY], True),
    _WADO_SERIES + "/thumbnail": _rendered("the series", [STUDY, SERIES], True),
    _WADO_INSTANCE + "/thumbnail": _rendered("the instance", [STUDY, SERIES, SOP], True),
    _WADO_INSTANCE + "/frames/{frame}/thumbnail": _rendered("one frame", [STUDY, SERIES, SOP, _FRAME], True),
}  # fmt: skip
for _path, _ops in WADO_PATHS.items():  # merged: other DICOMweb methods may share these paths
    PATHS.setdefault(_path, {}).update(_ops)


# DICOMweb QIDO-RS (§10.6), metadata (§10.4), STOW-RS (§10.5), DELETE: http/dicomweb/ (part 1) ------

_UID = {"study": "Study Instance UID (0020,000D)", "series": "Series Instance UID (0020,000E)",
        "sop": "SOP Instance UID (0008,0018)"}  # fmt: skip
_IN_PATH = {name: _param(name, "path", text, required=True) for name, text in _UID.items()}
QIDO_PARAMS = [
    _param("{attributeID}", "query", "a matching key by keyword or tag (PatientName=doe* or 00100010=doe*): "
           "single value, UID list (\\ or ,), * and ? wildcards, DA/TM ranges low-high with either end open; "
           "PN without regard to case; an empty value only asks for the attribute (PS3.4 C.2.2.2)"),
    _param("includefield", "query", "keywords or tags, comma-separated or repeated, or all"),
    _param("fuzzymatching", "query", "true is accepted but not applied (Warning: 299 says so)", "boolean"),
    _param("limit", "query", "results at most (up to DICOMSVC_QIDO_MAX_RESULTS; Warning: 299 when more match)", "integer"),
    _param("offset", "query", "results to skip", "integer"),
]  # fmt: skip
QIDO_ANSWERS = _answers(
    {"200": ("application/dicom+json", "matching results (an empty array for none); Warning: 299 when cut "
             "or fuzzymatching was asked for")},
    {"400": "unknown parameter, or a value of the wrong form (the detail names it)"},
)  # fmt: skip


def _qido(what: str, keys: str, params: list[dict]) -> dict:
    return {"get": {"summary": f"QIDO-RS: search for {what} (matching keys: {keys})",
                    "parameters": [*params, *QIDO_PARAMS], "responses": QIDO_ANSWERS}}  # fmt: skip


def _metadata(what: str, params: list[dict]) -> dict:
    return {"get": {
        "summary": f"WADO-RS metadata of {what}: DICOM JSON as stored at ingest, bulk data as BulkDataURIs; strong ETag",
        "parameters": [*params, _param("If-None-Match", "header", "an ETag from an earlier answer")],
        "responses": _answers({"200": ("application/dicom+json", "an array, one object per instance"),
                               "304": ("application/dicom+json", "not modified")}, {"404": f"no such {what}"})}}  # fmt: skip


def _delete(what: str, params: list[dict]) -> dict:
    return {"delete": {"summary": f"Delete {what}: every instance, its blobs and cached renderings",
                       "parameters": params,
                       "responses": {"204": {"description": "deleted"}, "404": _answers({}, {"404": f"no such {what}"})["404"]}}}  # fmt: skip


_STUDY_KEYS = "StudyInstanceUID, PatientID, PatientName, PatientBirthDate, PatientSex, StudyDate, StudyTime, " \
    "AccessionNumber, ReferringPhysicianName, StudyID, StudyDescription, ModalitiesInStudy"  # fmt: skip
_SERIES_KEYS = "SeriesInstanceUID, Modality, SeriesNumber, SeriesDescription, PerformedProcedureStepStartDate/Time"
_INSTANCE_KEYS = "SOPInstanceUID, SOPClassUID, InstanceNumber"
_S, _SE, _I = _IN_PATH["study"], _IN_PATH["series"], _IN_PATH["sop"]
_STOW_WEB = {"post": {"summary": "STOW-RS: store instances; each Retrieve URL is its WADO-RS URL",
                      "parameters": [ANON[0]], **STOW}}  # fmt: skip
DICOMWEB_PATHS: dict[str, dict] = {
    "/dicomweb/studies": _qido("studies", _STUDY_KEYS, []) | _STOW_WEB,
    "/dicomweb/studies/{study}": _delete("a study", [_S]) | {"post": {
        "summary": "STOW-RS into one study: instances of other studies fail", "parameters": [_S, ANON[0]], **STOW}},
    "/dicomweb/studies/{study}/metadata": _metadata("a study", [_S]),
    "/dicomweb/studies/{study}/series": _qido("a study's series", f"{_SERIES_KEYS}; and the study's", [_S]),
    "/dicomweb/studies/{study}/instances": _qido("a study's instances", f"{_INSTANCE_KEYS}; and the series'", [_S]),
    "/dicomweb/series": _qido("series (with their study's attributes)", f"{_SERIES_KEYS}, {_STUDY_KEYS}", []),
    "/dicomweb/instances": _qido("instances (with their series' and study's attributes)", "any of the above", []),
    "/dicomweb/studies/{study}/series/{series}": _delete("a series", [_S, _SE]),
    "/dicomweb/studies/{study}/series/{series}/metadata": _metadata("a series", [_S, _SE]),
    "/dicomweb/studies/{study}/series/{series}/instances": _qido("a series' instances", _INSTANCE_KEYS, [_S, _SE]),
    "/dicomweb/studies/{study}/series/{series}/instances/{sop}": _delete("an instance", [_S, _SE, _I]),
    "/dicomweb/studies/{study}/series/{series}/instances/{sop}/metadata": _metadata("an instance", [_S, _SE, _I]),
}  # fmt: skip
for _path, _ops in DICOMWEB_PATHS.items():  # merged: WADO-RS shares some of these paths
    PATHS.setdefault(_path, {}).update(_ops)
PATHS.update(TUS_PATHS)  # resumable uploads (dicomsvc/http/tus.py)
PATHS.update(PAGE_PATHS)  # the page in the browser (dicomsvc/http/page.py)


BEARER = {
    "type": "http",
    "scheme": "bearer",
    "description": "DICOMSVC_AUTH=token: an API token (dicomsvc token create); DICOMSVC_AUTH=oidc: an OpenID "
    "Connect access token (a JWT) of the configured provider, or an API token. DICOMSVC_AUTH=none: not needed.",
}
AUTH_ERRORS = {"401": "no token, or a bad one (WWW-Authenticate: Bearer)", "403": "the caller's role may not do this"}


def _secured(paths: dict[str, dict]) -> dict[str, dict]:
    """Each operation with its security (none for public routes: RFC 6750 bearer otherwise) and
    the 401/403 answers authentication may give."""
    out = {}
    for path, methods in paths.items():
        out[path] = {}
        for method, op in methods.items():
            rule = rules.rule(path, method.upper())
            if rule == rules.PUBLIC:
                op = {**op, "security": []}
            else:
                errors = _answers({}, AUTH_ERRORS if rule != rules.METRICS else {"401": AUTH_ERRORS["401"]})
                op = {**op, "responses": {**errors, **op["responses"]}}
            out[path][method] = op
    return out


def document() -> dict:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "dicomsvc",
            "version": __version__,
            "description": "A lean DICOM ingest-and-render service. Errors are {error, detail} with a 4xx status.",
        },
        "paths": _secured(PATHS),
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": BEARER},
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
                    "required": ["error", "detail"],
                }
            }
        },
    }


def page() -> str:
    """The routes and their parameters as one HTML page."""
    rows = []
    for path, methods in PATHS.items():
        for method, op in methods.items():
            params = "".join(
                f"<li><code>{html.escape(p['name'])}</code> ({p['in']}{', required' if p['required'] else ''}): "
                f"{html.escape(p['description'])}</li>"
                for p in op.get("parameters", [])
            )
            answers = ", ".join(html.escape(s) for s in op["responses"])
            rows.append(
                f"<h2><code>{method.upper()} {html.escape(path)}</code></h2><p>{html.escape(op['summary'])}</p>"
                f"{f'<ul>{params}</ul>' if params else ''}<p>Answers: {answers}</p>"
            )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>dicomsvc API</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}code{background:#eee}</style>"
        f"</head><body><h1>dicomsvc {__version__}</h1><p>Machine-readable: "
        "<a href='/openapi.json'>/openapi.json</a></p>" + "".join(rows) + "</body></html>"
    )
