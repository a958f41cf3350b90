"""dicomsvc HTTP routes and wiring. Run with ``uvicorn app:app`` or ``dicomsvc serve``."""

import contextlib
import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dicomsvc import ingest, instances
from dicomsvc.config import Config
from dicomsvc.errors import DicomSvcError
from dicomsvc.logs import setup_logging
from dicomsvc.service import open_service
from dicomsvc.web import read_json_object

log = logging.getLogger("dicomsvc")
IMMUTABLE = "public, max-age=31536000, immutable"


async def post_dicom(request: Request) -> JSONResponse:
    body = await read_json_object(request)
    result = await ingest.ingest_path(request.app.state.svc, body.get("path"))
    content = {"id": result.id}
    if result.warnings:
        content["warnings"] = result.warnings
    return JSONResponse(content, status_code=201 if result.created else 200)


async def get_image(request: Request) -> Response:
    image = await instances.image(
        request.app.state.svc, request.query_params.get("id"), request.headers.get("if-none-match")
    )
    headers = {"ETag": image.etag, "Cache-Control": IMMUTABLE}
    if image.png is None:
        return Response(status_code=304, headers=headers)
    return Response(image.png, media_type="image/png", headers=headers)


async def get_tags(request: Request) -> Response:
    body = await instances.tags_json(request.app.state.svc, request.query_params.get("id"))
    return Response(body, media_type="application/json")


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def service_error(request: Request, exc: DicomSvcError) -> JSONResponse:
    return JSONResponse(exc.to_json(), status_code=exc.status)


async def http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 304 or exc.status_code < 400:
        return Response(status_code=exc.status_code, headers=exc.headers)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    return JSONResponse({"error": code, "detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    # The type only: messages can quote values read from a dataset.
    log.error("internal error on %s %s: %s", request.method, request.url.path, type(exc).__name__)
    return JSONResponse({"error": "internal", "detail": "internal server error"}, status_code=500)


routes = [
    Route("/dicom", post_dicom, methods=["POST"]),
    Route("/image", get_image, methods=["GET"]),
    Route("/tags", get_tags, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
]

exception_handlers = {
    DicomSvcError: service_error,
    HTTPException: http_error,
    Exception: internal_error,
}


def create_app(config: Config | None = None) -> Starlette:
    config = config or Config.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        setup_logging(config.log_level)
        config.log(log)
        async with open_service(config) as svc:
            app.state.svc = svc
            yield

    return Starlette(routes=routes, exception_handlers=exception_handlers, lifespan=lifespan)


app = create_app()
