"""Every route under ``/dicomweb`` (PS3.18), one plain list app.py mounts: thin handlers only.

Paths and who serves what: README-paths.md in this folder.
"""

from starlette.routing import Route

routes: list[Route] = []

# WADO-RS retrieve, frames, bulk data, rendered and thumbnails (PS3.18 §10.4): wado.py
from . import wado  # noqa: E402

_STUDY = "/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{sop}"
_FRAME = _INSTANCE + "/frames/{frame}"
routes += [
    Route(_STUDY, wado.retrieve_study, methods=["GET"]),
    Route(_SERIES, wado.retrieve_series, methods=["GET"]),
    Route(_INSTANCE, wado.retrieve_instance, methods=["GET"]),
    Route(_INSTANCE + "/frames/{frames}", wado.retrieve_frames, methods=["GET"]),
    Route(_INSTANCE + "/bulk/{path:path}", wado.retrieve_bulk, methods=["GET"]),
    *(
        Route(base + "/rendered", wado.rendered, methods=["GET"])
        for base in (_STUDY, _SERIES, _INSTANCE, _FRAME)
    ),
    *(
        Route(base + "/thumbnail", wado.thumbnail, methods=["GET"])
        for base in (_STUDY, _SERIES, _INSTANCE, _FRAME)
    ),
]

# QIDO-RS (§10.6), WADO-RS metadata (§10.4.1.1.2), STOW-RS (§10.5) and DELETE: part 1
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, Response, StreamingResponse  # noqa: E402

from .. import catalog, stow  # noqa: E402
from ..auth import owner_of  # noqa: E402
from ..requests import base_url  # noqa: E402
from . import metadata, qido  # noqa: E402

DICOM_JSON = "application/dicom+json"
STUDY = "/studies/{study}"
SERIES = STUDY + "/series/{series}"
INSTANCE = SERIES + "/instances/{sop}"


def _search(level: str):
    async def handler(request: Request) -> Response:
        p = request.path_params
        answer = await qido.search(
            request.app.state.svc, request.query_params.multi_items(), level, base_url(request),
            p.get("study"), p.get("series"), owner_of(request),
        )  # fmt: skip
        return Response(answer.body, media_type=DICOM_JSON, headers=answer.headers)

    handler.__name__ = f"search_{level}"
    return handler


async def get_metadata(request: Request) -> Response:
    p = request.path_params
    scope = (p["study"], p.get("series"), p.get("sop"))
    found = await metadata.metadata(
        request.app.state.svc, scope, base_url(request), request.headers.get("if-none-match"), owner_of(request)
    )
    headers = {"ETag": found.etag, "Cache-Control": "no-cache"}  # revalidate: a study can grow
    if found.chunks is None:
        return Response(status_code=304, headers=headers)
    return StreamingResponse(found.chunks, media_type=DICOM_JSON, headers=headers)


async def store(request: Request) -> Response:
    svc = request.app.state.svc
    answer = await stow.store_instances(svc, request, request.path_params.get("study"), base_url(request))
    return JSONResponse(answer.body, status_code=answer.status, media_type=DICOM_JSON)


async def delete(request: Request) -> Response:
    p = request.path_params
    state = request.app.state
    await catalog.delete_study(state.svc, p["study"], p.get("series"), p.get("sop"), state.read_cache)
    return Response(status_code=204)


routes += [
    Route("/studies", _search("study"), methods=["GET"]),
    Route("/studies", store, methods=["POST"]),
    Route(STUDY, store, methods=["POST"]),
    Route(STUDY, delete, methods=["DELETE"]),
    Route(STUDY + "/metadata", get_metadata, methods=["GET"]),
    Route(STUDY + "/series", _search("series"), methods=["GET"]),
    Route(STUDY + "/instances", _search("instance"), methods=["GET"]),
    Route("/series", _search("series"), methods=["GET"]),
    Route("/instances", _search("instance"), methods=["GET"]),
    Route(SERIES, delete, methods=["DELETE"]),
    Route(SERIES + "/metadata", get_metadata, methods=["GET"]),
    Route(SERIES + "/instances", _search("instance"), methods=["GET"]),
    Route(INSTANCE, delete, methods=["DELETE"]),
    Route(INSTANCE + "/metadata", get_metadata, methods=["GET"]),
]
