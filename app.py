"""dicomsvc HTTP routes and wiring. Run with ``dicomsvc serve`` (or ``uvicorn --factory app:create_app``)."""

import asyncio
import contextlib
import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.background import BackgroundTask
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

from dicomsvc import audit, destinations, dimse, forwarding, health, jobs, metrics, resumable, sweep
from dicomsvc.config import Config
from dicomsvc.errors import BadRequest, DicomSvcError
from dicomsvc.http import catalog, datasets, instances, intake, openapi, page, send, stow, tus
from dicomsvc.http.dicomweb import routes as dicomweb
from dicomsvc.http.accesslog import AccessLog
from dicomsvc.http.catchall import CatchAll
from dicomsvc.http.hotpost import HotPost
from dicomsvc.http.hotreads import HotReads
from dicomsvc.http.ranges import RangedFileResponse
from dicomsvc.http.readcache import ReadCache
from dicomsvc.http.audit import AuditMiddleware, get_audit
from dicomsvc.http.metrics import MetricsMiddleware, get_metrics
from dicomsvc.http.auth import AuthMiddleware, owner_of, user_of, warn_if_open
from dicomsvc.http.requestid import RequestId
from dicomsvc.http import routing
from dicomsvc.http.compression import GzipMiddleware
from dicomsvc.logs import setup_logging
from dicomsvc.service import open_service
from dicomsvc.storage import space

log = logging.getLogger("dicomsvc")
IMMUTABLE = "public, max-age=31536000, immutable"


async def post_dicom(request: Request) -> JSONResponse:
    answer = await intake.post_dicom(request.app.state.svc, request)
    return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)


async def post_studies(request: Request) -> JSONResponse:
    study = request.path_params.get("study")
    base_url = str(request.base_url).rstrip("/")
    answer = await stow.store_instances(request.app.state.svc, request, study, base_url)
    return JSONResponse(answer.body, status_code=answer.status, media_type="application/dicom+json")


async def get_job(request: Request) -> Response:
    svc, job_id = request.app.state.svc, request.path_params["job"]
    body = await catalog.job_status(svc, job_id, request.query_params, owner_of(request), request.app.state.stopping)
    return Response(body, media_type="application/json")


async def get_jobs(request: Request) -> JSONResponse:
    svc = request.app.state.svc
    return JSONResponse(await catalog.jobs_page(svc, request.query_params, owner_of(request), user_of(request)))


async def get_user_uploads(request: Request) -> JSONResponse:  # rules.SELF: that user, or an admin
    svc, user = request.app.state.svc, request.path_params["user"]
    return JSONResponse(await catalog.search(svc, request.query_params, owner=user))


async def get_user_jobs(request: Request) -> JSONResponse:  # rules.SELF: that user, or an admin
    svc, user = request.app.state.svc, request.path_params["user"]
    return JSONResponse(await catalog.jobs_page(svc, request.query_params, owner=user))


async def get_image(request: Request) -> Response:
    image = await instances.image(
        request.app.state.svc,
        request.query_params,
        request.headers.get("accept"),
        request.headers.get("if-none-match"),
        owner_of(request),
        request.app.state.read_cache,
    )
    headers = {"ETag": image.etag, "Cache-Control": IMMUTABLE, "Vary": "Accept"}
    if image.body is None:
        return Response(status_code=304, headers=headers)
    return Response(image.body, media_type=image.media_type, headers=headers)


async def get_tags(request: Request) -> Response:
    svc, query, owner = request.app.state.svc, request.query_params, owner_of(request)
    if query.get("format", "rows") == "dicomjson":
        model = await instances.dicom_json(svc, query.get("id"), str(request.base_url).rstrip("/"), owner)
        return JSONResponse(model, media_type="application/dicom+json")
    if query.get("format", "rows") != "rows":
        raise BadRequest("format must be 'rows' (the default) or 'dicomjson'")
    body = await instances.tags_json(svc, query.get("id"), owner, request.app.state.read_cache)
    return Response(body, media_type="application/json")


async def get_pixels(request: Request) -> Response:
    temp, filename = await instances.pixels(
        request.app.state.svc, request.path_params["id"], request.query_params, owner_of(request)
    )
    return RangedFileResponse(  # Range as on /dicom/{id}/file (JSON 416, malformed ignored)
        temp,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        background=BackgroundTask(temp.unlink, missing_ok=True),
    )


async def get_bulk(request: Request) -> Response:
    p = request.path_params
    size, chunks = await instances.bulk(request.app.state.svc, p["id"], p["path"], owner_of(request))
    return StreamingResponse(
        chunks, media_type="application/octet-stream", headers={"Content-Length": str(size)}
    )


async def get_dicom_file(request: Request) -> Response:
    stored = await instances.dicom_file(request.app.state.svc, request.path_params["id"], owner_of(request))
    disposition = f'attachment; filename="{stored.filename}"'
    headers = {"Content-Disposition": disposition}
    return instances.OpenFileResponse(stored.file, media_type="application/dicom", headers=headers)


async def post_anonymize(request: Request) -> JSONResponse:
    source = request.path_params["id"]
    result = await instances.anonymize_stored(request.app.state.svc, source, request)
    if result.created:
        metrics.ingested("anonymized")
    return JSONResponse({"id": result.id, "source": source}, status_code=201 if result.created else 200)


async def search_dicom(request: Request) -> JSONResponse:
    svc = request.app.state.svc
    return JSONResponse(await catalog.search(svc, request.query_params, owner_of(request), user_of(request)))


async def delete_dicom(request: Request) -> JSONResponse:
    deleted = await catalog.delete_matching(request.app.state.svc, request.query_params, request.app.state.read_cache)
    return JSONResponse({"deleted": deleted})


async def get_dicom(request: Request) -> JSONResponse:
    return JSONResponse(await catalog.metadata(request.app.state.svc, request.path_params["id"], owner_of(request)))


async def delete_instance(request: Request) -> Response:
    await catalog.delete_one(request.app.state.svc, request.path_params["id"], request.app.state.read_cache)
    return Response(status_code=204)


async def post_datasets(request: Request) -> JSONResponse:
    return JSONResponse(await datasets.create(request.app.state.svc, request), status_code=201)


async def get_datasets(request: Request) -> JSONResponse:
    return JSONResponse(await datasets.listing(request.app.state.svc, request.query_params, owner_of(request)))


async def get_dataset(request: Request) -> JSONResponse:
    svc = request.app.state.svc
    return JSONResponse(await datasets.get(svc, request.path_params["dataset"], owner_of(request)))


async def delete_dataset(request: Request) -> Response:
    await datasets.delete(request.app.state.svc, request)
    return Response(status_code=204)


async def post_send(request: Request) -> JSONResponse:
    job_id, status_url = await send.send(request.app.state.svc, request)
    return JSONResponse({"job": job_id, "status_url": status_url}, status_code=202, headers={"Location": status_url})


async def post_dataset_export(request: Request) -> JSONResponse:
    job_id, status_url = await datasets.export(request.app.state.svc, request)
    return JSONResponse({"job": job_id, "status_url": status_url}, status_code=202, headers={"Location": status_url})


async def get_job_result(request: Request) -> Response:
    chunks, name = await datasets.export_result(request.app.state.svc, request)
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    return StreamingResponse(chunks, media_type="application/zip", headers=headers)


async def get_destinations(request: Request) -> JSONResponse:
    return JSONResponse(await destinations.listing(request.app.state.svc))


async def get_forwarding(request: Request) -> JSONResponse:
    return JSONResponse(await forwarding.status(request.app.state.svc))


async def get_stats(request: Request) -> JSONResponse:
    return JSONResponse(await catalog.stats(request.app.state.svc, owner_of(request)))


async def get_openapi(request: Request) -> JSONResponse:
    return JSONResponse(openapi.document())


async def get_docs(request: Request) -> HTMLResponse:
    return HTMLResponse(openapi.page())


async def healthz(request: Request) -> JSONResponse:
    """Liveness: the process answers (dicomsvc.health: /readyz says whether it can work)."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """Readiness: the database takes writes, DICOMSVC_MIN_FREE_BYTES are free, a worker lives."""
    ready, checks = await health.readiness(request.app.state.svc, audit.now())
    if ready:
        return JSONResponse({"status": "ready", "checks": checks})
    failing = ", ".join(name for name, check in checks.items() if not check["ok"])
    body = {"error": "not_ready", "detail": f"not ready: {failing}", "checks": checks}
    return JSONResponse(body, status_code=503, headers={"Cache-Control": "no-store"})


async def service_error(request: Request, exc: DicomSvcError) -> JSONResponse:
    return JSONResponse(exc.to_json(), status_code=exc.status)


async def http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 304 or exc.status_code < 400:
        return Response(status_code=exc.status_code, headers=exc.headers)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    return JSONResponse({"error": code, "detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
    # Nobody is left to read this; whatever the upload had spooled is already removed.
    return JSONResponse({"error": "bad_request", "detail": "client disconnected"}, status_code=400)


async def storage_error(request: Request, exc: Exception) -> JSONResponse:
    """A full disk met outside the pipeline (an upload being spooled, a job being recorded):
    507, like inside it. Any other OS or database error goes on to ``internal_error``."""
    if space.is_full(exc):
        return await service_error(request, space.insufficient())
    raise exc


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    # The type only: messages can quote values read from a dataset; the route template, not the path (UIDs).
    route = routing.template(request.scope) or "-"
    log.error("internal error on %s %s: %s", request.method, route, type(exc).__name__)
    # Answered outside the middleware (Starlette's ServerErrorMiddleware): the request id is added here
    rid = request.scope.get("state", {}).get("request_id")
    headers = {"X-Request-ID": rid} if rid else None
    return JSONResponse({"error": "internal", "detail": "internal server error"}, status_code=500, headers=headers)


routes = [
    # The hottest reads first: the router tries routes in order (none of these three overlaps another)
    Route("/image", get_image, methods=["GET"]),
    Route("/tags", get_tags, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/dicom", post_dicom, methods=["POST"]),
    Route("/dicom", search_dicom, methods=["GET"]),
    Route("/dicom", delete_dicom, methods=["DELETE"]),
    Route("/dicom/send", post_send, methods=["POST"]),  # a send job to a destination (dicomsvc/sendjobs.py)
    Route("/dicom/{id}", get_dicom, methods=["GET"]),
    Route("/dicom/{id}", delete_instance, methods=["DELETE"]),
    Route("/stats", get_stats, methods=["GET"]),
    Route("/destinations", get_destinations, methods=["GET"]),  # DICOMSVC_NETWORK_CONFIG's, each checked
    Route("/forwarding", get_forwarding, methods=["GET"]),  # the routing rules' queue (dicomsvc/forwarding.py)
    Route("/studies", post_studies, methods=["POST"]),
    Route("/studies/{study}", post_studies, methods=["POST"]),
    Route("/datasets", post_datasets, methods=["POST"]),  # clinical CSVs joined to studies (http/datasets.py)
    Route("/datasets", get_datasets, methods=["GET"]),
    Route("/datasets/{dataset}", get_dataset, methods=["GET"]),
    Route("/datasets/{dataset}", delete_dataset, methods=["DELETE"]),  # the dataset and its rows, never the studies
    Route("/datasets/{dataset}/export", post_dataset_export, methods=["POST"]),  # a job; its ZIP: /jobs/{job}/result
    Route("/jobs", get_jobs, methods=["GET"]),
    Route("/jobs/{job}", get_job, methods=["GET"]),
    Route("/jobs/{job}/result", get_job_result, methods=["GET"]),  # a dataset export's ZIP (http/datasets.py)
    Route("/users/{user}/uploads", get_user_uploads, methods=["GET"]),
    Route("/users/{user}/jobs", get_user_jobs, methods=["GET"]),
    Route("/dicom/{id}/file", get_dicom_file, methods=["GET"]),
    Route("/dicom/{id}/pixels", get_pixels, methods=["GET"]),
    Route("/dicom/{id}/bulk/{path:path}", get_bulk, methods=["GET"]),
    Route("/dicom/{id}/anonymize", post_anonymize, methods=["POST"]),
    # Resumable uploads, tus 1.0.0 (dicomsvc/http/tus.py; HEAD is the tus offset, GET the JSON status)
    Route("/uploads/", tus.options, methods=["OPTIONS"]),
    Route("/uploads/", tus.create, methods=["POST"]),
    Route("/uploads/{id}", tus.status, methods=["GET", "HEAD"]),
    Route("/uploads/{id}", tus.append, methods=["PATCH"]),
    Route("/uploads/{id}", tus.terminate, methods=["DELETE"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", get_metrics, methods=["GET"]),  # Prometheus text format (dicomsvc/metrics.py)
    Route("/audit", get_audit, methods=["GET"]),  # the audit trail (dicomsvc/audit.py), admins only
    Route("/openapi.json", get_openapi, methods=["GET"]),
    Route("/docs", get_docs, methods=["GET"]),
    Route("/", page.get_page, methods=["GET"]),  # the page in the browser (dicomsvc/http/page.py, static/)
    Route("/ui/config", page.get_config, methods=["GET"]),
    Route("/ui/{name}", page.get_asset, methods=["GET"]),
    Mount("/dicomweb", routes=dicomweb.routes),  # DICOMweb (PS3.18): dicomsvc/http/dicomweb/
]

exception_handlers = {
    DicomSvcError: service_error,
    HTTPException: http_error,
    ClientDisconnect: client_gone,
    OSError: storage_error,
    space.DatabaseError: storage_error,
    Exception: internal_error,
}


def create_app(config: Config | None = None) -> Starlette:
    """The application; ``config`` is read from the environment when not given."""
    config = config or Config.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        setup_logging(config.log_level, config.log_format, config.log_file, config.log_file_bytes, config.log_file_count)
        config.log(log)
        warn_if_open(config, log)
        # the audit trail is written until everything else has stopped
        async with open_service(config) as svc, audit.running(svc), jobs.running(svc), sweep.running(svc), \
                resumable.running(svc), forwarding.running(svc), \
                dimse.running(svc):  # the DICOM SCP (DICOMSVC_DIMSE_PORT): stopped first
            app.state.svc = svc
            # set as the server begins to stop (dicomsvc serve: cli.server.Server), before it waits for
            # the requests under way: those waiting for a job (GET /jobs/{id}?wait=) answer at once
            app.state.stopping = asyncio.Event()
            app.state.read_cache = ReadCache(config.read_cache_bytes)  # GET /image and /tags answers
            svc.on_delete.append(app.state.read_cache.forget)  # deletes by background work (a send's delete_after)
            yield

    middleware = [
        # GET /image and /tags answered from the read cache when the stack would answer exactly so
        Middleware(HotReads, config=config),
        Middleware(HotPost, config=config),  # POST /dicom {"path"} when the stack would answer exactly so
        Middleware(RequestId),  # every answer and log line of the request has its id
        Middleware(AccessLog),
        Middleware(MetricsMiddleware),  # requests by route template, method, status; latency
        Middleware(AuditMiddleware),  # outside authentication: refusals are part of the trail
    ]
    if config.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(config.cors_origins),
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["*"],  # preflights echo what was asked: Accept with parameters, Authorization
                # Warning: QIDO-RS (PS3.18 §8.3.4); X-Request-ID: for a browser's error reports
                expose_headers=["ETag", "Warning", "Content-Location", "X-Request-ID"],
            )
        )
    middleware.append(Middleware(AuthMiddleware, config=config))  # DICOMSVC_AUTH; rules: dicomsvc/http/rules.py
    middleware.append(Middleware(GzipMiddleware))  # JSON and multipart answers; never images
    middleware.append(Middleware(CatchAll, handler=internal_error))  # a 500 never reaches uvicorn's log
    return Starlette(routes=routes, middleware=middleware, exception_handlers=exception_handlers, lifespan=lifespan)

