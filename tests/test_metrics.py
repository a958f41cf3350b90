"""GET /metrics: Prometheus text format (parsed with prometheus-client's own parser),
counters that move as requests are made, and no label that carries an id or patient data."""

from prometheus_client.parser import text_string_to_metric_families

from dicomsvc import metrics
from dicomsvc.http.metrics import auth_failure


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample: (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


def test_auth_failures_are_counted_by_reason_and_free_text_is_not_a_label():
    before = metrics.exposition().decode()
    auth_failure("expired")
    auth_failure("expired")
    auth_failure("Bearer eyJhbGciOi... PHI07ZQ^DOE")  # never a label value
    after = metrics.exposition().decode()
    assert value(after, "dicomsvc_auth_failures_total", reason="expired") - value(
        before, "dicomsvc_auth_failures_total", reason="expired"
    ) == 2
    assert value(after, "dicomsvc_auth_failures_total", reason="other") - value(
        before, "dicomsvc_auth_failures_total", reason="other"
    ) == 1
    assert "PHI07ZQ" not in after and "eyJ" not in after


def scrape(client) -> str:
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return answer.text


def delta(before: str, after: str, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


DICOM = {"Content-Type": "application/dicom"}


def test_counters_move_as_requests_are_made(client):
    from dicomfiles import sample_file

    before = scrape(client)
    body = sample_file("CT_small.dcm").read_bytes()
    created = client.post("/dicom", content=body, headers=DICOM)
    assert created.status_code == 201
    instance_id = created.json()["id"]
    assert client.post("/dicom", content=body, headers=DICOM).status_code == 200
    assert client.post("/dicom", content=b"\x00" * 300, headers=DICOM).status_code == 422
    for _ in range(2):  # a rendering that is not the stored PNG: made once, then from the cache
        assert client.get("/image", params={"id": instance_id, "window": "40,400"}).status_code == 200
    assert client.post(f"/dicom/{instance_id}/anonymize").status_code == 201
    assert client.get(f"/dicom/{'Z' * 22}").status_code == 404
    assert client.get("/no/PHI07ZQ/here").status_code == 404
    after = scrape(client)
    requests = "dicomsvc_http_requests_total"
    assert delta(before, after, requests, method="POST", route="/dicom", status="201") == 1
    assert delta(before, after, requests, method="POST", route="/dicom", status="200") == 1
    assert delta(before, after, requests, method="POST", route="/dicom", status="422") == 1
    assert delta(before, after, requests, method="GET", route="/image", status="200") == 2
    assert delta(before, after, requests, method="GET", route="/dicom/{id}", status="404") == 1
    assert delta(before, after, requests, method="GET", route="unmatched", status="404") == 1
    assert delta(before, after, requests, method="GET", route="/metrics", status="200") == 1  # the first scrape
    latency = "dicomsvc_http_request_duration_seconds_count"
    assert delta(before, after, latency, method="GET", route="/image") == 2
    assert value(after, "dicomsvc_http_request_duration_seconds_bucket", method="GET", route="/image", le="+Inf") >= 2
    ingested = "dicomsvc_instances_ingested_total"
    assert [delta(before, after, ingested, outcome=o) for o in ("created", "duplicate", "failed", "anonymized")] == [1, 1, 1, 1]
    cache = "dicomsvc_rendering_cache_total"
    assert (delta(before, after, cache, result="miss"), delta(before, after, cache, result="hit")) == (1, 1)
    assert value(after, "dicomsvc_stored_instances") == 2  # the instance and its anonymized copy
    assert value(after, "dicomsvc_stored_bytes") > 2 * 30_000
    assert value(after, "dicomsvc_jobs", state="queued") == 0 and value(after, "dicomsvc_jobs", state="running") == 0
    assert client.delete(f"/dicom/{instance_id}").status_code == 204
    gone = scrape(client)
    assert value(gone, "dicomsvc_stored_instances") == 1 and delta(after, gone, "dicomsvc_instances_deleted_total") == 1
    # no label carries an id, a path or patient data
    for text in (after, gone):
        assert instance_id not in text and "PHI07ZQ" not in text and "/no/" not in text
    routes = {s.labels.get("route") for f in text_string_to_metric_families(gone) for s in f.samples} - {None}
    from dicomsvc.http.routing import all_routes
    import app as app_module

    assert routes <= {t for t, _, _ in all_routes(app_module.routes)} | {"unmatched"}


def test_ingest_in_worker_processes_is_counted(process_client):
    """Work runs in worker processes; what is counted comes back to the server process."""
    from dicomfiles import sample_file

    before = scrape(process_client)
    answer = process_client.post("/dicom", content=sample_file("MR_small.dcm").read_bytes(), headers=DICOM)
    assert answer.status_code == 201
    after = scrape(process_client)
    assert delta(before, after, "dicomsvc_instances_ingested_total", outcome="created") == 1
    assert value(after, "dicomsvc_stored_instances") == 1


def test_auth_failures_by_reason(monkeypatch, data_dir, import_root):
    from authhelpers import bearer, token_app

    with token_app(monkeypatch, data_dir, import_root, {"rita": "reader"}) as (client, tokens):
        before = scrape(client)  # open: DICOMSVC_METRICS_AUTH is false
        assert client.get("/dicom").status_code == 401
        assert client.get("/dicom", headers=bearer("dsvc_" + "x" * 43)).status_code == 401
        assert client.delete("/dicom/" + "A" * 22, headers=bearer(tokens["rita"])).status_code == 403
        after = scrape(client)
    failures = "dicomsvc_auth_failures_total"
    assert delta(before, after, failures, reason="forbidden") == 1
    assert sum(delta(before, after, failures, reason=r) for r in {s[1][0][1] for s in samples(after) if s[0] == failures}) == 3


def test_worker_timeouts_and_restarts(data_dir, import_root):
    import pytest
    from starlette.testclient import TestClient

    import workertasks
    from app import create_app
    from dicomsvc.config import Config
    from dicomsvc.errors import Busy, InvalidDicom

    env = {"DICOMSVC_DATA_DIR": str(data_dir), "DICOMSVC_IMPORT_ROOT": str(import_root), "DICOMSVC_WORKERS": "2",
           "DICOMSVC_WORKER_TIMEOUT": "1"}  # fmt: skip
    with TestClient(create_app(Config.from_env(env))) as client:
        svc = client.app.state.svc
        before = scrape(client)
        with pytest.raises(Busy):
            client.portal.call(svc.cpu, workertasks.sleep, 3600)
        with pytest.raises(InvalidDicom):
            client.portal.call(svc.cpu, workertasks.die_or_hang, "exit")
        after = scrape(client)
    assert delta(before, after, "dicomsvc_worker_timeouts_total") == 1
    assert delta(before, after, "dicomsvc_worker_restarts_total", reason="timeout") == 1
    assert delta(before, after, "dicomsvc_worker_restarts_total", reason="crash") == 1
