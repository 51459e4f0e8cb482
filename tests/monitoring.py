"""What the monitoring tests read: the shipped Prometheus, Grafana and compose files, and PromQL.

`metric_names(expr)` is a small tokenizer, not a PromQL parser: it drops what cannot be a metric
name (string literals, label matchers in `{}`, ranges and subqueries in `[]`, the label lists of
`by`/`without`/`on`/`ignoring`/`group_left`/`group_right`, Grafana's `$variables`, numbers and
durations), then keeps the identifiers that are not followed by `(` (functions, aggregations) and
are not PromQL keywords. That is enough for the expressions routeq ships, and it errs on the side of
reporting a word as a metric: a word it cannot place makes the metrics test fail, not pass.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import promql_parser
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS_YML = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD_JSON = DEPLOY / "grafana" / "dashboards" / "routeq.json"
COMPOSE_YML = ROOT / "docker-compose.yml"
# compose-spec/compose-spec schema/compose-spec.json at 170098ba07d9f53c383a41bfd4c5166b0a4529a6
# (2026-06-23, Apache-2.0): the schema `docker compose config` validates against.
COMPOSE_SCHEMA = Path(__file__).resolve().parent / "fixtures" / "compose-spec.json"

# Series Prometheus makes itself for every target; no exporter serves them.
PROMETHEUS_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})

_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
    | {"offset", "start", "end", "inf", "nan"}
)
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
# A name starts where no word character, `$` or `.` is just before it (not inside 1e3, 5m, $var).
_IDENTIFIER = re.compile(r"(?<![\w$.])[A-Za-z_:][\w:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (see the module docstring for the rules)."""
    text = _STRINGS.sub(" ", expr)
    text = _BRACES.sub(" ", text)
    text = _BRACKETS.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group()
        if word.lower() in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        names.add(word)
    return names


# Grafana replaces its interval variables before Prometheus sees a query; any duration parses alike.
_GRAFANA_INTERVALS = re.compile(r"\$__(?:rate_interval|interval|range)\b")


def parsed_metric_names(expr: str) -> set[str]:
    """The metric names of the selectors promql-parser finds in `expr` (a check on `metric_names`).

    Raises:
        ValueError: `expr` is not valid PromQL (the parser's message says where).
    """
    names: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(_GRAFANA_INTERVALS.sub("5m", expr)), visit)
    return names


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as file:
        return yaml.safe_load(file)


def alert_rules() -> list[dict[str, Any]]:
    """Every rule of alerts.yml, each group's rules in order."""
    return [rule for group in load_yaml(ALERTS_YML)["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD_JSON.read_text(encoding="utf-8"))
    return loaded


def panels(board: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def shipped_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every query the dashboard and the alert rules evaluate."""
    found = [(f"alerts.yml rule {rule['alert']}", str(rule["expr"])) for rule in alert_rules()]
    for panel in panels(dashboard()):
        for target in panel.get("targets", []):
            found.append((f"routeq.json panel {panel['title']!r} target {target['refId']}", target["expr"]))
    return found


_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}")


def interpolate(value: Any, environ: Mapping[str, str] | None = None) -> Any:
    """The compose file as `docker compose` reads it: `${VAR}`, `${VAR:-default}`, `${VAR-default}`
    replaced throughout, from `environ` (default: an empty environment, as on a fresh machine)."""
    env = {} if environ is None else environ
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, op, default = match["name"], match["op"], match["default"] or ""
            if op == ":-":
                return env.get(name) or default
            if op == "-":
                return env.get(name, default)
            return env.get(name, "")

        return _INTERPOLATION.sub(substitute, value)
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    return value
