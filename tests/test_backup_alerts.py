"""The backup alert rules of gridmate's shipped rules file (nix/monitoring/alerts.yml,
group gridmate-backup), checked and exercised with the real promtool.

The series use the metric names gridmate writes (tests/test_backup.py reads
them back from the files the hooks write), so a renamed metric breaks here.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from gridmate.backup.metrics import PRESEED_RESULTS

# promtool comes from Debian's prometheus package (./dev setup), not the Nix build sandbox.
pytestmark = pytest.mark.services

RULES = Path(__file__).resolve().parent.parent / "nix" / "monitoring" / "alerts.yml"

UNIT_TESTS = """
rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  # A daily backup that succeeded once, at time 0, and failed from the second hour on;
  # a replication that succeeds every minute. (The collector's file is scraped every
  # minute, so the series are sampled every minute.)
  - interval: 1m
    input_series:
      - series: 'gridmate_backup_last_success_timestamp_seconds{{job="teslamate"}}'
        values: '0x1900'
      - series: 'gridmate_backup_last_run_success{{job="teslamate"}}'
        values: '1x60 0x1840'
      - series: 'gridmate_replication_last_success_timestamp_seconds{{job="rpool-pg"}}'
        values: '0+60x1900'
    alert_rule_test:
      - eval_time: 20h
        alertname: GridmateBackupStale
        exp_alerts: []
      - eval_time: 27h
        alertname: GridmateBackupStale
        exp_alerts:
          - exp_labels: {{severity: warning, job: teslamate}}
            exp_annotations:
              summary: "No successful backup of teslamate for over 26 hours"
      - eval_time: 30m
        alertname: GridmateBackupFailing
        exp_alerts: []
      - eval_time: 3h
        alertname: GridmateBackupFailing
        exp_alerts:
          - exp_labels: {{severity: warning, job: teslamate}}
            exp_annotations:
              summary: "The last backup of teslamate failed"
      - eval_time: 30h
        alertname: GridmateReplicationStale
        exp_alerts: []
      - eval_time: 30h
        alertname: GridmateBackupNeverSucceeded
        exp_alerts: []
  # Nothing recorded at all: the absent() rules fire.
  - interval: 1m
    input_series:
      - series: 'up{{job="node"}}'
        values: '1x1900'
    alert_rule_test:
      - eval_time: 27h
        alertname: GridmateBackupNeverSucceeded
        exp_alerts:
          - exp_labels: {{severity: warning, job: teslamate}}
            exp_annotations:
              summary: "No successful teslamate backup recorded (or its metrics file is gone)"
      - eval_time: 4h
        alertname: GridmateReplicationNeverSucceeded
        exp_alerts:
          - exp_labels: {{severity: warning}}
            exp_annotations:
              summary: "No successful replication to the NAS recorded (or its metrics file is gone)"
  # A refused preseed.
  - interval: 1m
    input_series:
{preseed_series}
    alert_rule_test:
      - eval_time: 1m
        alertname: GridmatePreseedFailed
        exp_alerts:
          - exp_labels: {{severity: critical, target: teslamate, result: refused}}
            exp_annotations:
              summary: "teslamate could not be restored; its service is held back"
"""


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (Debian package prometheus; ./dev setup)")
    return promtool


def test_rules_are_valid() -> None:
    result = subprocess.run(
        [_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_fire_when_backups_go_stale_or_preseed_fails(tmp_path: Path) -> None:
    preseed_series = "\n".join(
        f'      - series: \'gridmate_preseed_result{{target="teslamate",result="{name}"}}\'\n'
        f"        values: '{1 if name == 'refused' else 0}x5'"
        for name in PRESEED_RESULTS
    )
    tests = tmp_path / "tests.yml"
    tests.write_text(UNIT_TESTS.format(rules=RULES, preseed_series=preseed_series))
    result = subprocess.run(
        [_promtool(), "test", "rules", str(tests)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
