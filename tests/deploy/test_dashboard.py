"""The Grafana dashboard queries only what the service exports, and shows what the brief asks for."""

from __future__ import annotations

import re
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.metrics import MetricWrapperBase

from service.telemetry.metrics import Metrics

from .helpers import load_json, load_module, load_yaml

DASHBOARD = "docker/grafana/dashboards/pspnet.json"
SERIES = re.compile(r"\b(pspnet_[a-zA-Z0-9_]+)\s*(\{[^}]*\})?")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
LEGEND = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


def catalogue() -> list[Any]:
    return list(load_module("scripts/gen_reference_tables.py").metric_catalogue())


def target_labels() -> set[str]:
    """Labels Prometheus adds to every series it scrapes (docker/prometheus.yml)."""
    config = load_yaml("docker/prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "pspnet"]
    return {"job", "instance"} | {r["target_label"] for r in job.get("relabel_configs", [])}


def panels() -> list[dict[str, Any]]:
    return list(load_json(DASHBOARD)["panels"])


def targets() -> list[dict[str, Any]]:
    return [t for p in panels() for t in p["targets"]]


def test_catalogue_matches_the_real_exposition() -> None:
    """What the dashboard test relies on: every series the registry really exposes, and no other."""
    m = Metrics()
    for collector in vars(m).values():
        if isinstance(collector, MetricWrapperBase) and collector._labelnames:
            collector.labels(*["x"] * len(collector._labelnames))  # give labelled families a child
    text = generate_latest(m.registry).decode()
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    exposed = {line.split("{")[0].split(" ")[0] for line in samples}
    exposed = {n for n in exposed if not n.endswith("_created")}
    assert exposed == {s for mi in catalogue() for s in mi.series}


def test_every_queried_series_and_label_exists() -> None:
    by_series = {s: mi for mi in catalogue() for s in mi.series}
    extra = target_labels()
    for t in targets():
        expr = t["expr"]
        used = SERIES.findall(expr)
        assert used, f"no pspnet metric in {expr!r}"
        labels_here = set(extra)
        for name, selector in used:
            assert name in by_series, f"{name} is not exported by service.telemetry.metrics ({expr!r})"
            allowed = by_series[name].query_labels | extra
            labels_here |= allowed
            for label in MATCHER.findall(selector or ""):
                assert label in allowed, f"{name} has no label {label!r} ({expr!r})"
        grouped = {g.strip() for clause in GROUPING.findall(expr) for g in clause.split(",") if g.strip()}
        assert grouped <= labels_here, f"grouping by unknown labels {grouped - labels_here} ({expr!r})"
        legend = set(LEGEND.findall(t.get("legendFormat", "")))
        assert legend <= grouped, f"legend names labels the query drops: {legend - grouped} ({expr!r})"


@pytest.mark.parametrize("needle, what", [
    (r"rate\(pspnet_requests_total", "request rate"),
    (r"histogram_quantile\(0\.5, .*pspnet_request_duration_seconds_bucket", "latency p50"),
    (r"histogram_quantile\(0\.9, .*pspnet_request_duration_seconds_bucket", "latency p90"),
    (r"histogram_quantile\(0\.99, .*pspnet_request_duration_seconds_bucket", "latency p99"),
    (r"pspnet_queue_tiles", "queue depth"),
    (r"pspnet_batch_size_tiles_bucket", "batch-size distribution"),
    (r"pspnet_rejections_total", "rejections by reason"),
    (r'pspnet_requests_total\{status=~"5\.\."\}', "5xx errors"),
    (r"pspnet_requests_in_flight", "in-flight"),
    (r"pspnet_inference_duration_seconds_bucket", "inference time"),
])
def test_dashboard_shows(needle: str, what: str) -> None:
    assert any(re.search(needle, t["expr"]) for t in targets()), f"no panel for {what}"


def test_panels_are_well_formed_and_do_not_overlap() -> None:
    dash = load_json(DASHBOARD)
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in panels()]
    assert len(set(ids)) == len(ids)
    taken: set[tuple[int, int]] = set()
    for p in panels():
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & taken, f"{p['title']!r} overlaps another panel"
        taken |= cells
        ref_ids = [t["refId"] for t in p["targets"]]
        assert p["targets"] and len(set(ref_ids)) == len(ref_ids), p["title"]


def test_dashboard_uses_the_provisioned_datasource() -> None:
    (ds,) = load_yaml("docker/grafana/provisioning/datasources/prometheus.yaml")["datasources"]
    assert ds["type"] == "prometheus"
    for p in panels():
        assert p["datasource"] == {"type": "prometheus", "uid": ds["uid"]}, p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == ds["uid"], p["title"]
