"""The API description: valid OpenAPI 3, and every served route in it."""

from openapi_spec_validator import validate
from starlette.routing import Mount, Route

from app import routes


def served_routes(table=routes, prefix: str = "") -> set[tuple[str, str]]:
    """(path, method) of every route the app serves, mounted ones (/dicomweb) included."""
    out = set()
    for r in table:
        if isinstance(r, Mount):
            out |= served_routes(r.routes, prefix + r.path)
        elif isinstance(r, Route):
            out |= {(prefix + r.path.replace(":path}", "}"), m.lower()) for m in r.methods if m != "HEAD"}
    return out


def test_openapi_is_valid_and_complete(client):
    document = client.get("/openapi.json").json()
    validate(document)
    served = served_routes()
    described = {(path, method) for path, methods in document["paths"].items() for method in methods}
    assert served == described


def test_docs_page_lists_every_route(client):
    page = client.get("/docs")
    assert page.headers["content-type"].startswith("text/html")
    for path in client.get("/openapi.json").json()["paths"]:
        assert path in page.text


def test_cors_only_for_configured_origins(client, data_dir, import_root):
    from starlette.testclient import TestClient

    from app import create_app
    from dicomsvc.config import Config

    plain = client.get("/healthz", headers={"Origin": "https://viewer.example"})
    assert "access-control-allow-origin" not in plain.headers  # none by default
    env = {"DICOMSVC_DATA_DIR": str(data_dir / "c"), "DICOMSVC_IMPORT_ROOT": str(import_root),
           "DICOMSVC_WORKERS": "0", "DICOMSVC_CORS_ORIGINS": "https://viewer.example"}  # fmt: skip
    with TestClient(create_app(Config.from_env(env))) as cors:
        ok = cors.get("/healthz", headers={"Origin": "https://viewer.example"})
        assert ok.headers["access-control-allow-origin"] == "https://viewer.example"
        assert "etag" in ok.headers["access-control-expose-headers"].lower()
        other = cors.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        preflight = cors.options(
            "/image", headers={"Origin": "https://viewer.example", "Access-Control-Request-Method": "GET"}
        )
        assert preflight.status_code == 200
