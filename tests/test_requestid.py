"""X-Request-ID: taken from the client when acceptable, else made; returned on every answer."""

import logging
import re

import pytest

from dicomsvc.http.requestid import request_id

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_a_client_request_id_comes_back_and_is_on_the_log_lines(client, caplog):
    caplog.set_level("INFO", logger="dicomsvc")
    response = client.get("/dicom", headers={"X-Request-ID": "trace-42.abc_DEF"})
    assert response.status_code == 200 and response.headers["x-request-id"] == "trace-42.abc_DEF"
    access = [r for r in caplog.records if r.name == "dicomsvc.access"]
    assert access and access[-1].request_id == "trace-42.abc_DEF" and access[-1].route == "/dicom"
    assert "[trace-42.abc_DEF]" in caplog.text or any(r.request_id == "trace-42.abc_DEF" for r in access)


def test_one_is_made_when_missing_or_unacceptable(client):
    made = [client.get("/healthz").headers["x-request-id"] for _ in range(2)]
    assert all(UUID4.fullmatch(m) for m in made) and made[0] != made[1]
    for bad in ("x" * 129, "has space", "tab\there", "", "é"):
        answer = client.get("/healthz", headers={"X-Request-ID": bad.encode("utf-8")})
        assert UUID4.fullmatch(answer.headers["x-request-id"]), bad
    assert client.get("/healthz", headers={"X-Request-ID": "y" * 128}).headers["x-request-id"] == "y" * 128


@pytest.mark.parametrize("status", [404, 405, 400, 422])
def test_errors_carry_it_too(client, status):
    if status == 404:
        answer = client.get("/no/such/route", headers={"X-Request-ID": "r1"})
    elif status == 405:
        answer = client.put("/dicom", headers={"X-Request-ID": "r1"})
    elif status == 400:
        answer = client.get("/dicom", params={"limit": "x"}, headers={"X-Request-ID": "r1"})
    else:
        answer = client.post("/dicom", content=b"not dicom at all" * 20, headers={"Content-Type": "application/dicom", "X-Request-ID": "r1"})
    assert answer.status_code == status and answer.headers["x-request-id"] == "r1"


def test_an_internal_error_carries_it_and_logs_the_route_not_the_path(config, monkeypatch, caplog):
    from starlette.testclient import TestClient

    from app import create_app
    from dicomsvc.http import catalog

    async def broken(svc, instance_id):
        raise RuntimeError("a bug")

    monkeypatch.setattr(catalog, "metadata", broken)
    caplog.set_level("ERROR", logger="dicomsvc")
    with TestClient(create_app(config), raise_server_exceptions=False) as client:
        answer = client.get("/dicom/PHI07ZQsecretpathpart", headers={"X-Request-ID": "boom-1"})
    assert answer.status_code == 500 and answer.headers["x-request-id"] == "boom-1"
    errors = [r for r in caplog.records if "internal error" in r.getMessage()]
    assert errors and "/dicom/{id}" in errors[-1].getMessage() and errors[-1].request_id == "boom-1"
    assert "PHI07ZQ" not in caplog.text


def test_request_id_parsing():
    assert request_id({"headers": [(b"x-request-id", b"abc")]}) == "abc"
    assert request_id({"headers": [(b"x-request-id", b"a\r\nb")]}) != "a\r\nb"
    assert UUID4.fullmatch(request_id({"headers": []}))
    logging.getLogger("dicomsvc").info("outside a request: no error")
