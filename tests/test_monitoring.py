"""gridmate's shipped alert rules and Grafana dashboard (nix/monitoring/).

* ``promtool check rules`` on the rules file, and ``promtool test rules`` with a
  firing and a quiet case for every rule (Debian's prometheus package brings
  promtool; these tests are marked ``services``).
* Every gridmate metric a rule or a dashboard query names is one gridmate's code
  defines (found in the prometheus_client definitions under src/gridmate), so a
  renamed metric breaks here instead of silently never alerting.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

# Not in the Nix package's check inputs: there nix/monitoring is not in the source set
# either, and these tests skip.
yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "nix" / "monitoring"
RULES = MONITORING / "alerts.yml"
DASHBOARD = MONITORING / "dashboards" / "gridmate.json"
SOURCE = ROOT / "src" / "gridmate"

# Metrics of other exporters the rules use, with where they come from.
FOREIGN_METRICS = {
    "up": "Prometheus, for every scrape target",
    "node_systemd_unit_state": "node_exporter, systemd collector",
    "node_systemd_service_restart_total": "node_exporter, systemd collector",
}


def _needs(path: Path) -> None:
    if not path.exists():
        pytest.skip(
            f"{path.relative_to(ROOT)} is not part of this source tree (e.g. the Nix build)"
        )


# ------------------------------------------------------------- metric names

_CONSTRUCTORS = {
    "Counter": ("_total", "_created"),
    "Gauge": ("",),
    "Histogram": ("_bucket", "_sum", "_count", "_created"),
    "Summary": ("_sum", "_count", "_created"),
    "Info": ("_info",),
    "Enum": ("",),
    "GaugeMetricFamily": ("",),
    "CounterMetricFamily": ("_total",),
}


def _name_pattern(node: ast.expr) -> str | None:
    """A regular expression for a metric name argument: a literal, or an f-string
    whose replacement fields match any name part."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return re.escape(node.value)
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                parts.append(re.escape(value.value))
            else:
                parts.append("[a-z0-9_]+")
        return "".join(parts)
    return None


def exported_metric_patterns() -> list[re.Pattern[str]]:
    """The series names gridmate's prometheus_client definitions expose."""
    patterns = []
    for path in SOURCE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            kind, argument = None, None
            if name in _CONSTRUCTORS and node.args:
                kind, argument = name, node.args[0]
            elif name == "collector" and len(node.args) >= 3:
                # gridmate.tesla._metrics.collector(Kind, registry, name, ...)
                first = node.args[0]
                kind = first.id if isinstance(first, ast.Name) else None
                argument = node.args[2]
            if kind not in _CONSTRUCTORS or argument is None:
                continue
            pattern = _name_pattern(argument)
            if pattern is None or not pattern.startswith("gridmate_"):
                continue
            base = pattern.removesuffix("_total") if kind == "Counter" else pattern
            for suffix in _CONSTRUCTORS[kind]:
                patterns.append(re.compile(base + re.escape(suffix)))
    return patterns


_METRIC = re.compile(r"\b(gridmate_[a-z0-9_]+|node_[a-z0-9_]+|up)\b")


def names_in(expression: str) -> set[str]:
    return {m.group(1) for m in _METRIC.finditer(expression)}


def unknown_metrics(expressions: list[str]) -> set[str]:
    patterns = exported_metric_patterns()
    unknown = set()
    for expression in expressions:
        for name in names_in(expression):
            if name in FOREIGN_METRICS:
                continue
            if name.startswith("node_"):
                unknown.add(name)  # an exporter metric FOREIGN_METRICS does not list
                continue
            if not any(p.fullmatch(name) for p in patterns):
                unknown.add(name)
    return unknown


def test_the_scan_finds_the_metrics_gridmate_defines() -> None:
    patterns = exported_metric_patterns()

    def known(name: str) -> bool:
        return any(p.fullmatch(name) for p in patterns)

    for name in (
        "gridmate_healthy",  # Gauge(...) in runtime/daemon.py
        "gridmate_vehicles_consumer_lag",
        "gridmate_vehicles_delivery_seconds_bucket",  # a Histogram's series
        "gridmate_energy_cycle_errors_total",  # a Counter's series
        "gridmate_tesla_token_sync_errors_total",  # collector(Counter, ...) in tesla/
        "gridmate_backup_last_success_timestamp_seconds",  # an f-string name
        "gridmate_vehicles_teslamate_healthy",  # a GaugeMetricFamily
    ):
        assert known(name), name
    for name in ("gridmate_energy_cycle_errors", "gridmate_no_such_metric", "gridmate_healthy_x"):
        assert not known(name), name


def _rules() -> list[dict[str, Any]]:
    _needs(RULES)
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_rules_name_only_metrics_that_exist() -> None:
    rules = _rules()
    assert not unknown_metrics([rule["expr"] for rule in rules])
    # and the check itself would notice a misspelt one
    assert unknown_metrics(["gridmate_vehicles_consumer_lagg > 0"]) == {
        "gridmate_vehicles_consumer_lagg"
    }


def test_rules_cover_what_the_hub_must_warn_about() -> None:
    alerts = {rule["alert"] for rule in _rules()}
    assert {
        "GridmateDaemonDown",
        "GridmateDaemonCrashLooping",
        "GridmateDaemonUnhealthy",
        "TeslaMateDown",
        "TeslaMateCrashLooping",
        "MqttBrokerDown",
        "TeslaTokenExpiring",
        "TeslaTokenFailing",
        "GridmateNotifierQueueStuck",
        "GridmateVehicleWithoutTrustedSource",
        "GridmateVehiclesConsumerLag",
        "GridmateEnergyFailingDuringPeak",
        "GridmateBackupStale",
        "GridmateReplicationStale",
        "GridmatePreseedFailed",
    } <= alerts
    for rule in _rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


# ---------------------------------------------------------------- promtool


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (Debian package prometheus; ./dev setup)")
    return promtool


@pytest.mark.services
def test_rules_file_is_valid() -> None:
    _needs(RULES)
    result = subprocess.run(
        [_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def firing(summary: str, **labels: str) -> dict[str, Any]:
    """One alert a promtool unit test expects: its labels and its summary."""
    return {"exp_labels": labels, "exp_annotations": {"summary": summary}}


# Each rule: the series of a situation, and when the alert fires (or stays quiet).
# Samples are one minute apart; `0+1x20` counts up by one a minute for 20 minutes.
UNIT_TESTS: list[dict[str, Any]] = [
    {
        "name": ("a daemon stops answering; of a failover pair, one host answering is enough"),
        "input_series": [
            {"series": 'up{job="gridmate-vehicles",instance="hub:9108"}', "values": "1 0x20"},
            {"series": 'up{job="gridmate-energy",instance="garage:9109"}', "values": "1x20"},
            {"series": 'up{job="gridmate-energy",instance="pantry:9109"}', "values": "0x20"},
        ],
        "alerts": [
            ("GridmateDaemonDown", "4m", []),
            (
                "GridmateDaemonDown",
                "7m",
                [
                    firing(
                        "gridmate-vehicles has not answered a scrape for 5 minutes",
                        severity="critical",
                        job="gridmate-vehicles",
                    )
                ],
            ),
        ],
    },
    {
        "name": "a daemon restarts over and over, and then fails",
        "input_series": [
            {
                "series": ('node_systemd_service_restart_total{name="gridmate-energy.service"}'),
                "values": "0 0 1 2 3 4 5 5x20",
            },
            {
                "series": ('node_systemd_service_restart_total{name="gridmate-vehicles.service"}'),
                "values": "1x30",
            },
            {
                "series": (
                    'node_systemd_unit_state{name="gridmate-energy.service",state="failed"}'
                ),
                "values": "0x6 1x20",
            },
        ],
        "alerts": [
            (
                "GridmateDaemonCrashLooping",
                "6m",
                [
                    firing(
                        ("gridmate-energy.service restarted more than twice in 15 minutes"),
                        severity="critical",
                        name="gridmate-energy.service",
                    )
                ],
            ),
            ("GridmateDaemonCrashLooping", "25m", []),
            ("GridmateDaemonFailed", "6m", []),
            (
                "GridmateDaemonFailed",
                "9m",
                [
                    firing(
                        (
                            "gridmate-energy.service has failed (systemctl reset-failed "
                            "re-arms it once fixed)"
                        ),
                        severity="critical",
                        name="gridmate-energy.service",
                        state="failed",
                    )
                ],
            ),
        ],
    },
    {
        "name": "a daemon reports a failing health check",
        "input_series": [
            {"series": 'gridmate_healthy{job="gridmate-energy"}', "values": "1 0x20"},
            {"series": 'gridmate_healthy{job="gridmate-vehicles"}', "values": "1x20"},
        ],
        "alerts": [
            ("GridmateDaemonUnhealthy", "6m", []),
            (
                "GridmateDaemonUnhealthy",
                "12m",
                [
                    firing(
                        (
                            "gridmate-energy has reported a failing health check for 10 "
                            "minutes (systemctl status says which)"
                        ),
                        severity="warning",
                        job="gridmate-energy",
                    )
                ],
            ),
        ],
    },
    {
        "name": "TeslaMate's unit stops, then restarts over and over",
        "input_series": [
            {
                "series": (
                    'node_systemd_unit_state{name="podman-teslamate.service",state="active"}'
                ),
                "values": "1 0x10 1x30",
            },
            {
                "series": ('node_systemd_service_restart_total{name="podman-teslamate.service"}'),
                "values": "0x12 0+1x10 10x20",
            },
        ],
        "alerts": [
            ("TeslaMateDown", "3m", []),
            (
                "TeslaMateDown",
                "8m",
                [
                    firing(
                        ("TeslaMate (podman-teslamate.service) has not been running for 5 minutes"),
                        severity="critical",
                        name="podman-teslamate.service",
                        state="active",
                    )
                ],
            ),
            ("TeslaMateCrashLooping", "10m", []),
            (
                "TeslaMateCrashLooping",
                "20m",
                [
                    firing(
                        "TeslaMate restarted more than twice in 15 minutes",
                        severity="critical",
                        name="podman-teslamate.service",
                    )
                ],
            ),
        ],
    },
    {
        "name": "TeslaMate's health as the vehicles hub sees it",
        "input_series": [
            {
                "series": 'gridmate_vehicles_teslamate_healthy{vin="5YJ3E1EA7KF000001"}',
                "values": "1x5 0x30",
            },
            {
                "series": 'gridmate_vehicles_teslamate_healthy{vin="7SAYGDEE9PA000002"}',
                "values": "1x35",
            },
            {
                "series": (
                    'gridmate_vehicles_teslamate_database_lag_seconds{vin="5YJ3E1EA7KF000001"}'
                ),
                "values": "0x5 600x30",
            },
            {"series": "gridmate_vehicles_teslamate_connected", "values": "1x10 0x20"},
        ],
        "alerts": [
            ("TeslaMateUnhealthy", "15m", []),
            (
                "TeslaMateUnhealthy",
                "22m",
                [
                    firing(
                        ("TeslaMate reports its Tesla API access failing for 5YJ3E1EA7KF000001"),
                        severity="warning",
                        vin="5YJ3E1EA7KF000001",
                    )
                ],
            ),
            ("TeslaMateMqttBehindDatabase", "8m", []),
            (
                "TeslaMateMqttBehindDatabase",
                "12m",
                [
                    firing(
                        (
                            "TeslaMate records 5YJ3E1EA7KF000001 in its database but its "
                            "MQTT output stopped"
                        ),
                        severity="warning",
                        vin="5YJ3E1EA7KF000001",
                    )
                ],
            ),
            ("TeslaMateBrokerUnreachable", "12m", []),
            (
                "TeslaMateBrokerUnreachable",
                "17m",
                [
                    firing(
                        (
                            "The vehicles hub has not been connected to TeslaMate's MQTT "
                            "broker for 5 minutes"
                        ),
                        severity="warning",
                    )
                ],
            ),
        ],
    },
    {
        "name": "the MQTT broker stops",
        "input_series": [
            {
                "series": (
                    'node_systemd_unit_state{name="mosquitto.service",'
                    'state="active",instance="hub"}'
                ),
                "values": "1x3 0x10",
            },
        ],
        "alerts": [
            ("MqttBrokerDown", "4m", []),
            (
                "MqttBrokerDown",
                "7m",
                [
                    firing(
                        "Mosquitto on hub is not running",
                        severity="critical",
                        name="mosquitto.service",
                        state="active",
                        instance="hub",
                    )
                ],
            ),
        ],
    },
    {
        # Tests start at Unix time 0: an expiry of 1200 is 20 minutes ahead.
        "name": "Tesla tokens expiring, failing, and fine",
        "input_series": [
            {
                "series": ('gridmate_tesla_token_expiry_timestamp_seconds{source="teslamate"}'),
                "values": "1200x20",
            },
            {
                "series": 'gridmate_tesla_token_expiry_timestamp_seconds{source="oauth"}',
                "values": "28800x20",
            },
            {
                "series": (
                    'gridmate_tesla_token_last_success_timestamp_seconds{source="teslamate"}'
                ),
                "values": "0x100",
            },
            {
                "series": (
                    'gridmate_tesla_token_sync_errors_total{source="teslamate",reason="database"}'
                ),
                "values": "0+1x100",
            },
            {
                "series": ('gridmate_tesla_token_last_success_timestamp_seconds{source="oauth"}'),
                "values": "0+60x100",
            },
            {
                "series": ('gridmate_tesla_token_sync_errors_total{source="oauth",reason="http"}'),
                "values": "0+1x100",
            },
            {
                "series": "gridmate_tesla_refresh_token_expiry_timestamp_seconds",
                "values": "259200x5",
            },
        ],
        "alerts": [
            ("TeslaTokenExpiring", "3m", []),
            (
                "TeslaTokenExpiring",
                "6m",
                [
                    firing(
                        (
                            "The Tesla access token from teslamate expires within 30 "
                            "minutes and has not been renewed"
                        ),
                        severity="warning",
                        source="teslamate",
                    )
                ],
            ),
            ("TeslaTokenFailing", "50m", []),
            (
                "TeslaTokenFailing",
                "70m",
                [
                    firing(
                        (
                            "gridmate has failed to get a Tesla token from teslamate for "
                            "over an hour"
                        ),
                        severity="critical",
                        source="teslamate",
                    )
                ],
            ),
            (
                "TeslaRefreshTokenExpiring",
                "1m",
                [
                    firing(
                        ("gridmate's Tesla refresh token expires within a week: sign in again"),
                        severity="warning",
                    )
                ],
            ),
        ],
    },
    {
        "name": "gridmate's own refresh token has a month left",
        "input_series": [
            {
                "series": "gridmate_tesla_refresh_token_expiry_timestamp_seconds",
                "values": "2592000x5",
            },
        ],
        "alerts": [
            ("TeslaRefreshTokenExpiring", "3m", []),
        ],
    },
    {
        "name": "a notification stuck on one channel: all of one host's, Apprise on the other",
        "input_series": [
            {
                "series": (
                    'gridmate_notify_oldest_undelivered_seconds{job="gridmate-energy",'
                    'instance="a",channel="email"}'
                ),
                "values": "0x5 60+60x60",
            },
            {
                "series": (
                    'gridmate_notify_oldest_undelivered_seconds{job="gridmate-energy",'
                    'instance="b",channel="email"}'
                ),
                "values": "0 60 0 60 0x61",
            },
            {
                "series": (
                    'gridmate_notify_oldest_undelivered_seconds{job="gridmate-energy",'
                    'instance="b",channel="apprise"}'
                ),
                "values": "0x8 60+60x57",
            },
        ],
        "alerts": [
            ("GridmateNotifierQueueStuck", "30m", []),
            (
                "GridmateNotifierQueueStuck",
                "40m",
                [
                    firing(
                        "gridmate-energy has had a notification waiting on email for over "
                        "30 minutes",
                        severity="warning",
                        job="gridmate-energy",
                        instance="a",
                        channel="email",
                    ),
                    firing(
                        "gridmate-energy has had a notification waiting on apprise for over "
                        "30 minutes",
                        severity="warning",
                        job="gridmate-energy",
                        instance="b",
                        channel="apprise",
                    ),
                ],
            ),
        ],
    },
    {
        "name": "one car has no trusted source, the other one has",
        "input_series": [
            {
                "series": 'gridmate_vehicles_source_trusted{vin="V1",source="teslamate"}',
                "values": "1 0x60",
            },
            {
                "series": ('gridmate_vehicles_source_trusted{vin="V1",source="fleet_telemetry"}'),
                "values": "0x60",
            },
            {
                "series": 'gridmate_vehicles_source_trusted{vin="V2",source="teslamate"}',
                "values": "1x60",
            },
            {
                "series": ('gridmate_vehicles_source_trusted{vin="V2",source="fleet_telemetry"}'),
                "values": "0x60",
            },
        ],
        "alerts": [
            ("GridmateVehicleWithoutTrustedSource", "20m", []),
            (
                "GridmateVehicleWithoutTrustedSource",
                "35m",
                [
                    firing(
                        "No source has had fresh data about V1 for 30 minutes",
                        severity="warning",
                        vin="V1",
                    )
                ],
            ),
        ],
    },
    {
        "name": "the Fleet Telemetry consumer falls behind",
        "input_series": [
            {"series": "gridmate_vehicles_consumer_lag", "values": "10x5 5000x20"},
        ],
        "alerts": [
            ("GridmateVehiclesConsumerLag", "10m", []),
            (
                "GridmateVehiclesConsumerLag",
                "17m",
                [
                    firing(
                        "The vehicles hub is 5000 Fleet Telemetry records behind",
                        severity="warning",
                    )
                ],
            ),
        ],
    },
    {
        "name": ("energy control fails in the peak on one host, outside it on another"),
        "input_series": [
            {
                "series": (
                    'gridmate_energy_phase{job="gridmate-energy",instance="a",phase="peak"}'
                ),
                "values": "1x30",
            },
            {
                "series": (
                    'gridmate_energy_cycle_errors_total{job="gridmate-energy",instance="a"}'
                ),
                "values": "0x5 1x25",
            },
            {
                "series": (
                    'gridmate_energy_phase{job="gridmate-energy",instance="b",phase="peak"}'
                ),
                "values": "1x30",
            },
            {
                "series": (
                    'gridmate_energy_actions_total{job="gridmate-energy",'
                    'instance="b",device="powerwall",result="failed"}'
                ),
                "values": "0x10 1x20",
            },
            {
                "series": (
                    'gridmate_energy_phase{job="gridmate-energy",instance="c",phase="peak"}'
                ),
                "values": "0x30",
            },
            {
                "series": (
                    'gridmate_energy_cycle_errors_total{job="gridmate-energy",instance="c"}'
                ),
                "values": "0+1x30",
            },
        ],
        "alerts": [
            ("GridmateEnergyFailingDuringPeak", "3m", []),
            (
                "GridmateEnergyFailingDuringPeak",
                "8m",
                [
                    firing(
                        "Energy control is failing during the peak on a",
                        severity="critical",
                        job="gridmate-energy",
                        instance="a",
                    )
                ],
            ),
            (
                "GridmateEnergyFailingDuringPeak",
                "13m",
                [
                    firing(
                        "Energy control is failing during the peak on a",
                        severity="critical",
                        job="gridmate-energy",
                        instance="a",
                    ),
                    firing(
                        "Energy control is failing during the peak on b",
                        severity="critical",
                        job="gridmate-energy",
                        instance="b",
                    ),
                ],
            ),
        ],
    },
    {
        "name": "backups and replication go stale; a preseed is refused",
        "input_series": [
            {
                "series": ('gridmate_backup_last_success_timestamp_seconds{job="teslamate"}'),
                "values": "0x1900",
            },
            {"series": 'gridmate_backup_last_run_success{job="teslamate"}', "values": "1x60 0x100"},
            {
                "series": ('gridmate_replication_last_success_timestamp_seconds{job="rpool-pg"}'),
                "values": "0x300",
            },
            {
                "series": 'gridmate_preseed_result{target="teslamate",result="refused"}',
                "values": "0 1x5",
            },
            {
                "series": 'gridmate_preseed_result{target="teslamate",result="restored"}',
                "values": "1 0x5",
            },
        ],
        "alerts": [
            ("GridmateBackupStale", "20h", []),
            (
                "GridmateBackupStale",
                "27h",
                [
                    firing(
                        "No successful backup of teslamate for over 26 hours",
                        severity="warning",
                        job="teslamate",
                    )
                ],
            ),
            ("GridmateBackupFailing", "30m", []),
            (
                "GridmateBackupFailing",
                "70m",
                [
                    firing(
                        "The last backup of teslamate failed", severity="warning", job="teslamate"
                    )
                ],
            ),
            ("GridmateReplicationStale", "2h", []),
            (
                "GridmateReplicationStale",
                "4h",
                [
                    firing(
                        ("No successful replication of rpool-pg to the NAS for over 3 hours"),
                        severity="warning",
                        job="rpool-pg",
                    )
                ],
            ),
            ("GridmatePreseedFailed", "0m", []),
            (
                "GridmatePreseedFailed",
                "2m",
                [
                    firing(
                        "teslamate could not be restored; its service is held back",
                        severity="critical",
                        target="teslamate",
                        result="refused",
                    )
                ],
            ),
            ("GridmateBackupNeverSucceeded", "27h", []),
        ],
    },
    {
        "name": "nothing recorded at all",
        "input_series": [
            {"series": 'up{job="node"}', "values": "1x1900"},
        ],
        "alerts": [
            (
                "GridmateBackupNeverSucceeded",
                "27h",
                [
                    firing(
                        ("No successful teslamate backup recorded (or its metrics file is gone)"),
                        severity="warning",
                        job="teslamate",
                    )
                ],
            ),
            ("GridmateReplicationNeverSucceeded", "2h", []),
            (
                "GridmateReplicationNeverSucceeded",
                "4h",
                [
                    firing(
                        (
                            "No successful replication to the NAS recorded (or its "
                            "metrics file is gone)"
                        ),
                        severity="warning",
                    )
                ],
            ),
        ],
    },
]


def _unit_test_file(rules: Path, cases: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "name": case["name"],
                "interval": "1m",
                "input_series": case["input_series"],
                "alert_rule_test": [
                    {"eval_time": at, "alertname": alert, "exp_alerts": expected}
                    for alert, at, expected in case["alerts"]
                ],
            }
            for case in cases
        ],
    }


def test_every_rule_has_a_firing_and_a_quiet_case() -> None:
    firing = {alert for case in UNIT_TESTS for alert, _at, exp in case["alerts"] if exp}
    quiet = {alert for case in UNIT_TESTS for alert, _at, exp in case["alerts"] if not exp}
    alerts = {rule["alert"] for rule in _rules()}
    assert alerts - firing == set(), "rules without a case where they fire"
    assert alerts - quiet == set(), "rules without a case where they stay quiet"
    assert firing | quiet <= alerts, "cases for rules that do not exist"


@pytest.mark.services
def test_rules_fire_exactly_when_they_should(tmp_path: Path) -> None:
    _needs(RULES)
    tests = tmp_path / "tests.yml"
    tests.write_text(yaml.safe_dump(_unit_test_file(RULES, UNIT_TESTS), sort_keys=False))
    result = subprocess.run(
        [_promtool(), "test", "rules", str(tests)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.services
def test_a_broken_rule_fails_its_unit_test(tmp_path: Path) -> None:
    """The unit tests notice a rule that no longer fires (here: a wrong threshold)."""
    _needs(RULES)
    broken = tmp_path / "alerts.yml"
    text = RULES.read_text()
    assert "gridmate_vehicles_consumer_lag > 1000" in text
    broken.write_text(
        text.replace(
            "gridmate_vehicles_consumer_lag > 1000", "gridmate_vehicles_consumer_lag > 9000"
        )
    )
    tests = tmp_path / "tests.yml"
    tests.write_text(yaml.safe_dump(_unit_test_file(broken, UNIT_TESTS), sort_keys=False))
    result = subprocess.run(
        [_promtool(), "test", "rules", str(tests)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "GridmateVehiclesConsumerLag" in result.stdout + result.stderr


# ---------------------------------------------------------------- dashboard


def _dashboard() -> dict[str, Any]:
    _needs(DASHBOARD)
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def test_dashboard_queries_name_only_metrics_gridmate_exports() -> None:
    dashboard = _dashboard()
    expressions = [
        target["expr"] for panel in _panels(dashboard) for target in panel.get("targets", [])
    ]
    assert len(expressions) >= 20
    assert not unknown_metrics(expressions)
    named = set().union(*(names_in(e) for e in expressions))
    # what the dashboard is for: throughput, lag, latency; period, reserve, writes,
    # budget; the notifier queue; TeslaMate's health
    assert {
        "gridmate_vehicles_records_total",
        "gridmate_vehicles_consumer_lag",
        "gridmate_vehicles_delivery_seconds_bucket",
        "gridmate_energy_phase",
        "gridmate_energy_backup_reserve_percent",
        "gridmate_energy_powerwall_writes_today",
        "gridmate_tesla_api_budget_used",
        "gridmate_notify_queue_messages",
        "gridmate_vehicles_teslamate_healthy",
        "gridmate_vehicles_teslamate_last_message_age_seconds",
        "gridmate_vehicles_teslamate_database_lag_seconds",
    } <= named


def test_dashboard_is_provisionable() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "gridmate-overview" and dashboard["title"] == "gridmate"
    [variable] = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    panels = _panels(dashboard)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


@pytest.mark.services
def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    """promtool parses every query (as a recording rule's expression)."""
    expressions = [
        target["expr"] for panel in _panels(_dashboard()) for target in panel.get("targets", [])
    ]
    rules = tmp_path / "queries.yml"
    rules.write_text(
        json.dumps(
            {
                "groups": [
                    {
                        "name": "dashboard",
                        "rules": [
                            {"record": f"gridmate:dashboard_query_{i}", "expr": e}
                            for i, e in enumerate(expressions)
                        ],
                    }
                ]
            }
        )
    )
    result = subprocess.run(
        [_promtool(), "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
