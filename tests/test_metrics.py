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
