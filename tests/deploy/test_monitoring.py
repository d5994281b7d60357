"""The chart's dashboard and alerts (README, "Metrics"): they render where the values say, their
JSON and PromQL parse, and every metric they name is one the running services really expose."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import promql_parser
import pytest
import yaml
from deploy_support import ALL_OPTIONS, CHART, DEFAULT, EXTERNAL, Mode, Rendered, parse_manifests, run_helm

from support import Scrape, running_stack, scrape

DASHBOARD = CHART / "files" / "grafana-dashboard.json"
RULES = CHART / "files" / "prometheus-rules.yaml"
PROCESSES = ("billing", "order", "notification", "gateway")
# Grafana's own variables, which are not PromQL: what the dashboard's queries mean by them.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def rule_queries() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def as_promql(query: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        query = query.replace(variable, value)
    return query


def metric_names(query: str) -> set[str]:
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(as_promql(query)), visit)
    return names


ALL_QUERIES = [*dashboard_queries(), *rule_queries()]


# ----------------------------------------------------------------------------------- rendering


def monitoring_objects(rendered: Rendered) -> dict[str, dict[str, Any]]:
    """The monitoring objects of a render, by kind (ConfigMaps by component)."""
    found: dict[str, dict[str, Any]] = {}
    for obj in rendered.objects:
        component = obj["metadata"]["labels"].get("app.kubernetes.io/component")
        if obj["kind"] == "ConfigMap" and component in ("dashboard", "alerts"):
            found[component] = obj
        elif obj["apiVersion"] == "monitoring.coreos.com/v1":
            found[obj["kind"]] = obj
    return found


@pytest.mark.parametrize("mode", [DEFAULT, EXTERNAL], ids=lambda m: m.name)
def test_by_default_the_dashboard_and_rules_ship_as_configmaps_and_no_operator_objects(
    render: Callable[[Mode], Rendered], mode: Mode
) -> None:
    found = monitoring_objects(render(mode))
    assert set(found) == {"dashboard", "alerts"}
    dashboard = found["dashboard"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["orbilnot.json"]) == json.loads(DASHBOARD.read_text())
    assert yaml.safe_load(found["alerts"]["data"]["orbilnot-rules.yaml"]) == yaml.safe_load(RULES.read_text())


def test_everything_can_be_switched_off(helm: str) -> None:
    proc = run_helm(
        helm, "template", "r", str(CHART), "--set", "monitoring.dashboard.enabled=false",
        "--set", "monitoring.alerts.enabled=false",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert monitoring_objects(Rendered(DEFAULT, parse_manifests(proc.stdout))) == {}


def test_operator_objects_behind_their_flags(render: Callable[[Mode], Rendered]) -> None:
    rendered = render(ALL_OPTIONS)
    found = monitoring_objects(rendered)
    assert set(found) == {"dashboard", "alerts", "ServiceMonitor", "PrometheusRule"}
    assert found["dashboard"]["metadata"]["labels"]["team"] == "shop"
    assert found["dashboard"]["metadata"]["annotations"] == {"grafana_folder": "orbilnot"}

    rule = found["PrometheusRule"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]

    monitor = found["ServiceMonitor"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint == {
        "port": "http",
        "path": "/metrics",
        "interval": "15s",
        "scrapeTimeout": "5s",
        "honorLabels": True,
    }
    # It selects exactly the Services of the four orbilnot processes, each with an `http` port.
    selector = monitor["spec"]["selector"]
    selected = [svc for svc in rendered.of_kind("Service") if _selects(selector, svc["metadata"]["labels"])]
    assert sorted(svc["metadata"]["labels"]["app.kubernetes.io/component"] for svc in selected) == sorted(PROCESSES)
    for svc in selected:
        assert "http" in [port["name"] for port in svc["spec"]["ports"]], svc["metadata"]["name"]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


@pytest.mark.parametrize(
    "setting",
    [
        "monitoring.serviceMonitor.interval=often",
        "monitoring.serviceMonitor.scrapeTimeout=10",
        "monitoring.dashboard.enabled=yes",
        "monitoring.prometheusRule.namespace=x",
        "monitoring.dashboard.labels.grafana_dashboard=1",  # --set makes it a number, not a string
    ],
)
def test_schema_rejects_bad_monitoring_values(helm: str, setting: str) -> None:
    proc = run_helm(helm, "template", "r", str(CHART), "--set", setting)
    assert proc.returncode != 0 and "values don't meet the specifications of the schema" in proc.stderr, setting


# ---------------------------------------------------------------------------- the files themselves


def test_the_dashboard_is_grafana_json_with_distinct_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            refs = [target["refId"] for target in panel["targets"]]
            assert len(refs) == len(set(refs)), panel["title"]


def test_every_alert_has_a_severity_and_a_summary() -> None:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


@pytest.mark.parametrize("query", ALL_QUERIES)
def test_every_query_is_promql(query: str) -> None:
    promql_parser.parse(as_promql(query))


def test_the_parser_is_not_vacuous() -> None:
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(orbilnot_order_transitions_total[5m])")
    assert metric_names("rate(a_total[5m]) / on() b") == {"a_total", "b"}


# ----------------------------------------------------------------- against the running services


@pytest.fixture(scope="module")
def scrapes(infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Scrape]]:  # type: ignore[no-untyped-def]
    """The /metrics of each of the four processes, freshly started, before any request or event."""
    with running_stack(infra, tmp_path_factory.mktemp("monitoring-stack-logs"), "monitoring") as stack:
        yield {process: scrape(stack.urls[process]) for process in PROCESSES}


@pytest.fixture(scope="module")
def exposed(scrapes: dict[str, Scrape]) -> set[str]:
    """Every metric name (with its _total, _bucket, _count, _sum forms) that the four processes expose."""
    return set().union(*(one.names for one in scrapes.values()))


def test_the_counters_the_alerts_watch_for_any_increase_are_at_0_from_the_start(scrapes: dict[str, Scrape]) -> None:
    """`increase(x[15m]) > 0` sees an event only if the series existed before it: one created by
    its first event starts at 1, which reads as no increase."""
    watched = set().union(*(metric_names(query) for query in rule_queries() if "increase(" in query))
    assert watched, "no alert uses increase()"
    for name in watched:
        series = [one.series(name) for one in scrapes.values()]
        found = {labels: value for one in series for labels, value in one.items()}
        assert found, f"{name}: no series until its first event"
        assert set(found.values()) == {0.0}, found
    parked = {
        dict(labels)["service"] for one in scrapes.values() for labels in one.series("orbilnot_parked_events_total")
    }
    assert parked >= {"billing", "order", "notification"}


def test_every_metric_the_dashboard_and_rules_name_is_exposed(exposed: set[str]) -> None:
    named = set().union(*(metric_names(query) for query in ALL_QUERIES))
    assert named, "no metric found in the queries"
    assert not named - exposed, f"named but exposed by no process: {sorted(named - exposed)}"


def test_the_dashboard_shows_every_orbilnot_metric(exposed: set[str]) -> None:
    """A metric added to the services and forgotten on the dashboard shows here."""
    shown = {_family(name) for name in set().union(*map(metric_names, dashboard_queries()))}
    families = {_family(name) for name in exposed if name.startswith("orbilnot_") and not name.endswith("_created")}
    assert not families - shown, f"not on the dashboard: {sorted(families - shown)}"


def _family(name: str) -> str:
    """A histogram's series (`x_bucket`, `x_count`, `x_sum`) as its family `x`; others as they are."""
    for suffix in ("_bucket", "_count", "_sum"):
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name
