"""`gridmate demo`, the main job, end to end as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.services  # starts Mosquitto and a Kafka-protocol broker of its own


def demo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gridmate.cli", "demo", *args],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_every_scenario_runs_on_embedded_defaults():
    result = demo()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    summary = result.stdout.rsplit("== Summary", 1)[1]
    assert "[FAILED]" not in summary and "[skipped]" not in summary
    assert "scenarios: 4 ok, 0 failed" in summary
    # What a person is shown: the energy timeline, the report and Home Assistant's view.
    assert "powerwall   set_backup_reserve 0 (verified)" in result.stdout
    assert "restore read back: reserve 30 %" in result.stdout
    assert "Estimated saving" in result.stdout
    assert "new device 'Model 3'" in result.stdout


def test_a_missing_broker_skips_its_scenario_with_the_fix():
    result = demo("--only", "vehicles", env={"GRIDMATE_KAFKA_BROKER": "/nonexistent/tansu"})
    assert result.returncode == 0
    assert "[skipped] Vehicles" in result.stdout
    assert "point it at a tansu binary" in result.stdout
    assert "scenarios: 0 ok, 0 failed, 1 skipped" in result.stdout
