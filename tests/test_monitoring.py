"""The shipped monitoring stack, checked without Docker: compose file, Prometheus config, alert rules,
Grafana provisioning and dashboard.

`docker compose config` is not available where the suite runs (no compose plugin, no network), so
the compose file is validated the way compose itself does: interpolated, then checked against the
compose-spec JSON schema (a fixture copied from the compose-spec repository). `promtool` is not
available either: the Prometheus files are loaded and their structure checked here, and every
metric they use is checked against real exporters in test_monitoring_metrics.py.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from storage.settings import Settings
from tests.monitoring import (
    ALERTS_YML,
    COMPOSE_SCHEMA,
    COMPOSE_YML,
    DASHBOARD_JSON,
    DEPLOY,
    PROMETHEUS_YML,
    ROOT,
    alert_rules,
    dashboard,
    interpolate,
    load_yaml,
    metric_names,
    panels,
    parsed_metric_names,
    shipped_expressions,
)

_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = interpolate(load_yaml(COMPOSE_YML))
    return loaded


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """A service's bind mounts: container path -> host path (relative to the compose file)."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            found[target] = source
    return found


# -- the PromQL tokenizer --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("routeq_queue_depth", {"routeq_queue_depth"}),
        (
            'sum by (status) (rate(routeq_jobs_total{status!="deferred"}[$__rate_interval]))',
            {"routeq_jobs_total"},
        ),
        (
            "histogram_quantile(0.95, sum by (deployment, le) (rate(routeq_x_seconds_bucket[5m])))",
            {"routeq_x_seconds_bucket"},
        ),
        ("a_total / on (deployment) group_left (model) b_info", {"a_total", "b_info"}),
        ('count(up{job=~"routeq-.*", instance="worker:9101"} == 0) or vector(0)', {"up"}),
        ("max(deriv(depth[10m:1m])) > 1e3 and depth offset 5m > 0", {"depth"}),
        ('label_replace(m, "dst", "$1", "src", "(.*)")', {"m"}),
        ("sum without (instance, job) (x) > bool 2", {"x"}),
        ("job:routeq_cost:rate5m", {"job:routeq_cost:rate5m"}),
    ],
)
def test_metric_names_are_the_selected_series(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names
    assert parsed_metric_names(expr) == names  # a real parser agrees


def test_every_shipped_expression_parses_and_the_tokenizer_agrees_with_the_parser() -> None:
    for where, expr in shipped_expressions():
        try:
            parsed = parsed_metric_names(expr)
        except ValueError as exc:
            pytest.fail(f"{where}: not valid PromQL ({exc}): {expr!r}")
        assert metric_names(expr) == parsed, where


def test_invalid_promql_is_refused() -> None:
    with pytest.raises(ValueError, match="parenthesis"):
        parsed_metric_names("sum(rate(routeq_jobs_total[5m])")


def test_every_shipped_expression_selects_a_metric() -> None:
    expressions = shipped_expressions()
    assert len(expressions) >= 10
    for where, expr in expressions:
        assert metric_names(expr), f"{where}: no metric found in {expr!r}"


# -- Prometheus ------------------------------------------------------------------------------------


def test_prometheus_scrapes_the_api_and_every_worker_replica() -> None:
    config = load_yaml(PROMETHEUS_YML)
    services = compose()["services"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"routeq-api", "routeq-worker"}
    for job in jobs.values():
        assert job.get("metrics_path", "/metrics") == "/metrics"
        assert _DURATION.match(config["global"]["scrape_interval"])

    # The API: its compose service, on the port `routeq serve` is told to listen on.
    (api_target,) = jobs["routeq-api"]["static_configs"][0]["targets"]
    host, port = api_target.split(":")
    assert host in services
    command = services[host]["command"]
    assert command[0] == "serve"
    assert command[command.index("--port") + 1] == port

    # Workers: one target per replica, found through Docker's DNS (A records of the service name),
    # on the port every worker serves by default; nothing in compose may move it elsewhere.
    (dns,) = jobs["routeq-worker"]["dns_sd_configs"]
    assert dns["type"] == "A"
    assert dns["names"] == ["worker"]
    assert "worker" in services
    assert dns["port"] == Settings(_env_file=None).worker_metrics_port
    assert "ROUTEQ_WORKER_METRICS_PORT" not in services["worker"]["environment"]
    assert "static_configs" not in jobs["routeq-worker"]  # a static worker:9101 hits one replica


def test_prometheus_loads_the_rules_compose_mounts() -> None:
    config = load_yaml(PROMETHEUS_YML)
    prometheus = compose()["services"]["prometheus"]
    mounted = mounts(prometheus)
    flags = dict(arg.split("=", 1) for arg in prometheus["command"])
    config_in_container = flags["--config.file"]
    assert (COMPOSE_YML.parent / mounted[config_in_container]).resolve() == PROMETHEUS_YML
    (rules,) = config["rule_files"]
    assert (COMPOSE_YML.parent / mounted[rules]).resolve() == ALERTS_YML


def test_alert_rules_are_well_formed() -> None:
    loaded = load_yaml(ALERTS_YML)
    assert set(loaded) == {"groups"}
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), names
    for rule in rules:
        where = f"alerts.yml rule {rule.get('alert')}"
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, where
        assert isinstance(rule["expr"], str), where
        assert rule["expr"].count("(") == rule["expr"].count(")"), where
        assert _DURATION.match(rule["for"]), where
        assert rule["labels"]["severity"] in {"warning", "critical"}, where
        assert rule["annotations"]["summary"], where
    # What the issue asked for: circuit open, queue growing, budget near cap.
    by_name = {rule["alert"]: rule for rule in rules}
    assert "routeq_circuit_state" in by_name["RouteqCircuitOpen"]["expr"]
    assert "== 2" in by_name["RouteqCircuitOpen"]["expr"]  # 2 = open (storage.metrics)
    assert "routeq_queue_depth" in by_name["RouteqQueueGrowing"]["expr"]
    assert "routeq_budget_used_ratio" in by_name["RouteqBudgetNearCap"]["expr"]


# -- Grafana ---------------------------------------------------------------------------------------


def test_grafana_provisions_the_datasource_and_the_dashboard() -> None:
    grafana = compose()["services"]["grafana"]
    mounted = mounts(grafana)
    provisioning = COMPOSE_YML.parent / mounted["/etc/grafana/provisioning"]
    (datasource,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus"
    host_port = datasource["url"].removeprefix("http://")
    assert host_port == "prometheus:9090"
    assert "prometheus" in compose()["services"]

    (provider,) = load_yaml(provisioning / "dashboards" / "routeq.yml")["providers"]
    dashboards = COMPOSE_YML.parent / mounted[provider["options"]["path"]]
    assert dashboards.resolve() == DASHBOARD_JSON.parent
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD_JSON.name}"

    board = dashboard()
    assert board["uid"] == "routeq"
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids))
    for panel in panels(board):
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]


def test_the_dashboard_shows_what_the_issue_asks() -> None:
    titles = {panel["title"] for panel in panels(dashboard())}
    for wanted in (
        "Queue depth",
        "Jobs/s by status",
        "Success rate per deployment",
        "p95 provider latency per deployment",
        "Circuit state",
        "Spend per hour by deployment",
        "Budget use",
    ):
        assert wanted in titles


# -- docker-compose.yml ----------------------------------------------------------------------------


def compose_errors(document: dict[str, Any]) -> list[str]:
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def test_compose_file_matches_the_compose_spec() -> None:
    assert compose_errors(compose()) == []


def test_compose_mounts_files_that_exist() -> None:
    for name, service in compose()["services"].items():
        for target, source in mounts(service).items():
            path = (COMPOSE_YML.parent / source).resolve()
            assert path.exists(), f"docker-compose.yml: {name} mounts {source} at {target}: no such file"
            assert path.is_relative_to(DEPLOY), f"{name} mounts {source}: keep mounted config in deploy/"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda doc: doc["services"]["grafana"].update(port=["3000:3000"]), "'port' does not match"),
        (lambda doc: doc["services"]["prometheus"].update(depends_on="api"), "is not valid"),
        (lambda doc: doc["services"]["worker"].update(stop_grace_period=30), "is not of type"),
    ],
)
def test_the_compose_check_catches_mistakes(change: Any, expected: str) -> None:
    document = copy.deepcopy(compose())
    change(document)
    errors = compose_errors(document)
    assert errors
    assert any(expected in error for error in errors), errors


def test_interpolation_takes_the_environment_then_the_default() -> None:
    assert interpolate("${A:-x}/${B-y}/${C}", {"A": "", "B": ""}) == "x//"
    assert interpolate({"k": ["${A:-x}"]}, {"A": "set"}) == {"k": ["set"]}


def test_deploy_holds_only_what_compose_uses() -> None:
    used = {
        (COMPOSE_YML.parent / source).resolve()
        for service in compose()["services"].values()
        for source in mounts(service).values()
    }
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            assert any(path == u or path.is_relative_to(u) for u in used), f"{path.relative_to(ROOT)} unused"


def test_fixture_is_the_compose_spec_schema() -> None:
    schema = json.loads(Path(COMPOSE_SCHEMA).read_text(encoding="utf-8"))
    assert schema["title"] == "Compose Specification"
    jsonschema.Draft7Validator.check_schema(schema)
