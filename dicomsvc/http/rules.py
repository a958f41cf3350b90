"""Who may call what: one rule per route (path template + method), checked by ``http.auth``.

Every route the app serves has an entry here; ``tests/test_rules.py`` walks the app's route
list (the ``/dicomweb`` mount included) and fails on a route without one. A request that
matches no route (a 404 or 405 to come) needs an authenticated caller with some role.

Rules:
- ``public``: no token (liveness, readiness, the API description);
- ``metrics``: public, unless ``DICOMSVC_METRICS_AUTH=true`` (then ``reader``);
- ``reader``: every GET of data (DICOMweb included: searches, metadata, retrieve, frames,
  bulk data, renderings; /image, /tags, files, pixels, jobs, stats);
- ``uploader``: every ingest route (POST /dicom, STOW-RS in both places) and anonymizing --
  what the caller uploaded (checked in the handler: ``instances.anonymize_stored``);
- ``admin``: every DELETE, the audit log;
- ``self``: ``/users/{user}/...``: the user named in the path, or an admin.
Roles include the ones below them (``dicomsvc.identity``).
"""

import re

PUBLIC, METRICS, READER, UPLOADER, ADMIN, SELF = "public", "metrics", "reader", "uploader", "admin", "self"

_W = "/dicomweb"
_STUDY = _W + "/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{sop}"
_FRAME = _INSTANCE + "/frames/{frame}"

RULES: dict[tuple[str, str], str] = {
    # the service's own routes (app.py)
    ("/dicom", "POST"): UPLOADER,
    ("/dicom", "GET"): READER,
    ("/dicom", "DELETE"): ADMIN,
    ("/dicom/{id}", "GET"): READER,
    ("/dicom/{id}", "DELETE"): ADMIN,
    ("/dicom/{id}/file", "GET"): READER,
    ("/dicom/{id}/pixels", "GET"): READER,
    ("/dicom/{id}/bulk/{path}", "GET"): READER,
    ("/dicom/{id}/anonymize", "POST"): UPLOADER,
    ("/dicom/send", "POST"): UPLOADER,  # data leaves the service; delete_after: admin (checked in http/send.py)
    ("/image", "GET"): READER,
    ("/tags", "GET"): READER,
    ("/stats", "GET"): READER,
    ("/destinations", "GET"): UPLOADER,  # where instances may be sent: for those who may send
    ("/forwarding", "GET"): UPLOADER,  # the routing rules' queue per destination: as /destinations
    ("/studies", "POST"): UPLOADER,
    ("/studies/{study}", "POST"): UPLOADER,
    ("/jobs", "GET"): READER,
    ("/jobs/{job}", "GET"): READER,
    ("/users/{user}/uploads", "GET"): SELF,
    ("/users/{user}/jobs", "GET"): SELF,
    ("/audit", "GET"): ADMIN,
    # Clinical CSVs joined to studies: uploading one is an upload; reading them, a read (each
    # dataset is its uploader's under DICOMSVC_VISIBILITY=own: others get 404, http/datasets.py)
    ("/datasets", "POST"): UPLOADER,
    ("/datasets", "GET"): READER,
    ("/datasets/{dataset}", "GET"): READER,
    ("/datasets/{dataset}", "DELETE"): UPLOADER,  # its uploader's, or an admin's (checked in http/datasets.py)
    ("/datasets/{dataset}/export", "POST"): READER,  # files of what the caller may read anyway
    ("/jobs/{job}/result", "GET"): READER,
    # Resumable uploads (tus): uploaders; each upload is its creator's (others get 404, http/tus.py)
    ("/uploads/", "OPTIONS"): PUBLIC,  # tus discovery (AuthMiddleware lets OPTIONS through anyway)
    ("/uploads/", "POST"): UPLOADER,
    ("/uploads/{id}", "GET"): UPLOADER,
    ("/uploads/{id}", "PATCH"): UPLOADER,
    ("/uploads/{id}", "DELETE"): UPLOADER,
    ("/healthz", "GET"): PUBLIC,
    ("/readyz", "GET"): PUBLIC,
    ("/metrics", "GET"): METRICS,
    ("/openapi.json", "GET"): PUBLIC,
    ("/docs", "GET"): PUBLIC,
    # The page in the browser (http/page.py): public, and holds no data (it calls the API with the user's token)
    ("/", "GET"): PUBLIC,
    ("/ui/config", "GET"): PUBLIC,  # the auth mode, the OHIF address, upload sizes: no secrets
    ("/ui/{name}", "GET"): PUBLIC,
    # DICOMweb (PS3.18): QIDO-RS searches
    (_W + "/studies", "GET"): READER,
    (_W + "/series", "GET"): READER,
    (_W + "/instances", "GET"): READER,
    (_STUDY + "/series", "GET"): READER,
    (_STUDY + "/instances", "GET"): READER,
    (_SERIES + "/instances", "GET"): READER,
    # WADO-RS: retrieve, metadata, frames, bulk data, rendered, thumbnails
    (_STUDY, "GET"): READER,
    (_SERIES, "GET"): READER,
    (_INSTANCE, "GET"): READER,
    (_STUDY + "/metadata", "GET"): READER,
    (_SERIES + "/metadata", "GET"): READER,
    (_INSTANCE + "/metadata", "GET"): READER,
    (_INSTANCE + "/frames/{frames}", "GET"): READER,
    (_INSTANCE + "/bulk/{path}", "GET"): READER,
    (_STUDY + "/rendered", "GET"): READER,
    (_SERIES + "/rendered", "GET"): READER,
    (_INSTANCE + "/rendered", "GET"): READER,
    (_FRAME + "/rendered", "GET"): READER,
    (_STUDY + "/thumbnail", "GET"): READER,
    (_SERIES + "/thumbnail", "GET"): READER,
    (_INSTANCE + "/thumbnail", "GET"): READER,
    (_FRAME + "/thumbnail", "GET"): READER,
    # STOW-RS
    (_W + "/studies", "POST"): UPLOADER,
    (_STUDY, "POST"): UPLOADER,
    # DELETE of a study, series, instance
    (_STUDY, "DELETE"): ADMIN,
    (_SERIES, "DELETE"): ADMIN,
    (_INSTANCE, "DELETE"): ADMIN,
}


def template(path: str) -> str:
    """A route path as the rules name it: ``{path:path}`` -> ``{path}``."""
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", path)


def rule(path_template: str, method: str) -> str | None:
    """The rule of a route; HEAD is GET's. None: the route has no rule."""
    return RULES.get((template(path_template), "GET" if method == "HEAD" else method))
