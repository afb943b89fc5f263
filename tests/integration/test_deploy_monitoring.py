"""The shipped dashboard and alert rules against a real daemon and the real promtool.

Every metric the Grafana dashboard (``deploy/grafana/ingest.json``) and the Prometheus
rules (``deploy/prometheus/alerts.yml``) query must be in a live ``/metrics`` scrape of a
running ``ingest run``, with the labels they select on; a renamed metric would otherwise
leave a silent, empty panel or an alert that can never fire. The rules must pass
``promtool check rules`` and their unit tests (``alerts_test.yml``). promtool comes from
Debian's ``prometheus`` package, which ``.ci/run`` installs when it is missing: without it
this test fails, it never skips.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from ingest.dev.demo import run_produce
from ingest.settings import Settings
from tests.support.daemon import (
    DaemonProcess,
    caught_up,
    end_offsets,
    metrics_port,
    scrape,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "ingest.json"
RULES = DEPLOY / "prometheus" / "alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"

#: Series Prometheus makes itself for every scrape target, not exported by the daemon.
SCRAPE_SERIES = {"up"}
#: ``name{label="..."}`` in PromQL (label matchers of a selector).
_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_METRIC = re.compile(r"\b(ingest_[a-z0-9_]+)\b")
#: Labels Prometheus attaches at scrape time.
TARGET_LABELS = {"job", "instance"}


def _dashboard_exprs() -> Iterator[str]:
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            yield str(target["expr"])


def _rule_exprs() -> Iterator[str]:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            yield str(rule["expr"])


def _exported(metrics: dict[str, float]) -> dict[str, set[str]]:
    """Metric name -> every label name seen on its samples in the scrape."""
    out: dict[str, set[str]] = {}
    for line in metrics:
        name, _, rest = line.partition("{")
        labels = {pair.split("=", 1)[0] for pair in rest.rstrip("}").split(",") if "=" in pair}
        out.setdefault(name, set()).update(labels)
    return out


def _run_daemon_and_scrape(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> dict[str, float]:
    settings = make_settings(
        partitions=2, event_time_field="updated_at", runtime={"heartbeat_s": 1}
    )
    daemon = DaemonProcess(
        write_config(settings, tmp_path / "c.toml"),
        tmp_path / "d.log",
        extra_args=("--metrics-port", "0"),
    )
    try:
        port = metrics_port(daemon)
        daemon.wait_assigned()
        run_produce(settings, "orders", 200, seed=5, invalid_ratio=0.1)
        wait_for(caught_up(settings, end_offsets(settings)), 120, "the daemon to catch up")
        wait_for(
            lambda: any(k.startswith("ingest_lag_records{") for k in scrape(port)),
            30,
            "a heartbeat with lag",
        )
        return scrape(port)
    finally:
        assert daemon.stop() == 0, daemon.output()


def test_every_queried_metric_and_label_is_exported_by_a_running_daemon(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    exported = _exported(_run_daemon_and_scrape(make_settings, tmp_path))
    exprs = {"dashboard": list(_dashboard_exprs()), "rules": list(_rule_exprs())}
    assert exprs["dashboard"] and exprs["rules"]
    missing: list[str] = []
    for where, found in exprs.items():
        for expr in found:
            for name in _METRIC.findall(expr):
                if name not in exported:
                    missing.append(f"{where}: {name} in {expr!r}")
            for name, matchers in _SELECTOR.findall(expr):
                if name in SCRAPE_SERIES:
                    continue
                for label in _MATCHER.findall(matchers):
                    if label not in exported.get(name, set()) | TARGET_LABELS:
                        missing.append(f"{where}: label {label} of {name} in {expr!r}")
    assert missing == [], "\n".join(missing)
    used = {n for found in exprs.values() for e in found for n in _METRIC.findall(e)}
    for family in (
        "ingest_records_consumed_total",
        "ingest_lag_records",
        "ingest_ingestion_latency_seconds_bucket",
        "ingest_records_dead_lettered_total",
        "ingest_retries_total",
        "ingest_bulk_latency_seconds_bucket",
        "ingest_buffered_bytes",
        "ingest_records_python_path_total",
        "ingest_ready",
        "ingest_heartbeat_timestamp_seconds",
    ):
        assert family in used, f"nothing shows or alerts on {family}"


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed: `apt-get install -y prometheus` (Debian) provides it;"
            " .ci/run installs it when missing"
        )
    return path


def test_rules_pass_promtool_check_and_their_unit_tests() -> None:
    promtool = _promtool()
    check = subprocess.run(
        [promtool, "check", "rules", str(RULES)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 7 rules found" in check.stdout
    unit = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=RULE_TESTS.parent,
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr
    assert "SUCCESS" in unit.stdout


def test_every_alert_has_a_unit_test_and_the_dashboard_covers_the_brief() -> None:
    rules = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert rules == tested
    titles = [p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]]
    for wanted in ("Throughput", "Lag", "Ingestion latency", "Dead letters", "Retries"):
        assert any(t.startswith(wanted) for t in titles), (wanted, titles)
    for wanted in ("Bulk latency", "Buffered bytes", "Fast-path share", "Daemons up"):
        assert any(t.startswith(wanted) for t in titles), (wanted, titles)
