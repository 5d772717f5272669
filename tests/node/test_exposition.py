"""relay.node.exposition: workers' metrics labelled, then merged as one node's."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from relay.node.exposition import merge, with_worker_label
from relay.node.metrics import STORED_FAMILIES, Metrics

WORKER_0 = """\
# HELP relay_envelopes_accepted_total Envelopes received from a peer and stored
# TYPE relay_envelopes_accepted_total counter
relay_envelopes_accepted_total{peer="a.test"} 3.0
# HELP relay_queue_envelopes Envelopes queued per next hop
# TYPE relay_queue_envelopes gauge
relay_queue_envelopes{destination="b.test"} 7.0
# HELP relay_database_size_bytes Bytes
# TYPE relay_database_size_bytes gauge
relay_database_size_bytes 4096.0
"""


def test_worker_label_goes_on_own_series_only() -> None:
    labelled = with_worker_label(WORKER_0, 0, STORED_FAMILIES)
    assert 'relay_envelopes_accepted_total{worker="0",peer="a.test"} 3.0' in labelled
    assert 'relay_queue_envelopes{destination="b.test"} 7.0' in labelled
    assert "relay_database_size_bytes 4096.0" in labelled


def test_worker_label_on_series_without_labels() -> None:
    text = "# HELP x_total X\n# TYPE x_total counter\nx_total 1.0\nx_created 5.0\n"
    assert with_worker_label(text, 3, frozenset()).splitlines()[2:] == [
        'x_total{worker="3"} 1.0',
        'x_created{worker="3"} 5.0',
    ]


def test_merge_keeps_every_worker_series_and_stored_gauges_once() -> None:
    worker_1 = WORKER_0.replace("3.0", "5.0").replace("7.0", "7.0")
    texts = [with_worker_label(t, i, STORED_FAMILIES) for i, t in enumerate([WORKER_0, worker_1])]
    merged = merge(texts, STORED_FAMILIES)
    families = {f.name: f for f in text_string_to_metric_families(merged)}
    accepted = families["relay_envelopes_accepted"].samples
    by_worker = {s.labels["worker"]: s.value for s in accepted}
    assert by_worker == {"0": 3.0, "1": 5.0}
    (queued,) = families["relay_queue_envelopes"].samples
    assert (queued.labels, queued.value) == ({"destination": "b.test"}, 7.0)
    assert len(families["relay_database_size_bytes"].samples) == 1
    assert merged.count("# TYPE relay_envelopes_accepted_total counter") == 1


def test_merge_of_a_family_only_a_later_worker_has() -> None:
    only_1 = '# HELP y Y\n# TYPE y gauge\ny{worker="1"} 2.0\n'
    assert merge(["", only_1], frozenset()) == only_1
    assert merge([], frozenset()) == ""


def test_a_worker_renders_text_with_its_label() -> None:
    metrics = Metrics(worker=2)
    metrics.attempt("b.test", "ok")
    body, content_type = metrics.render("application/openmetrics-text")
    assert content_type.startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    (attempt,) = [
        s for s in families["relay_delivery_attempts"].samples if s.name.endswith("_total")
    ]
    assert attempt.labels == {"worker": "2", "peer": "b.test", "outcome": "ok"}
    assert all("worker" not in s.labels for s in families["relay_node_info"].samples)


def test_a_lone_node_has_no_worker_label() -> None:
    metrics = Metrics()
    metrics.attempt("b.test", "ok")
    body, _ = metrics.render()
    assert b"worker=" not in body
