"""The command line as a user meets it: help, version, check-config, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gridmate import __version__
from gridmate.components import all_components

REPO = Path(__file__).resolve().parent.parent


def gridmate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    if env is not None and "PYTHONPATH" in os.environ:
        # how the Nix check phase finds the package under test
        env = {"PYTHONPATH": os.environ["PYTHONPATH"], **env}
    return subprocess.run(
        [sys.executable, "-m", "gridmate.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_help_explains_the_tool_and_lists_components():
    result = gridmate("--help")
    assert result.returncode == 0
    assert "self-hosted Tesla home-energy and telemetry hub" in result.stdout
    assert "demo" in result.stdout
    for component in all_components():
        assert component.name in result.stdout
        sub = gridmate(component.name, "--help")
        assert sub.returncode == 0
        assert "check-config" in sub.stdout


def test_version():
    result = gridmate("version")
    assert result.stdout.strip() == f"gridmate {__version__}"


def test_unknown_command_is_a_usage_error():
    result = gridmate("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


@pytest.mark.parametrize("component", [c.name for c in all_components()])
def test_check_config_reports_bad_key_on_one_line_with_exit_2(tmp_path, component):
    config = tmp_path / "bad.toml"
    config.write_text('[metrics]\nport = "abc"\n')
    result = gridmate(component, "check-config", "--config", str(config))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert any("metrics.port" in line and "integer" in line for line in result.stderr.splitlines())


@pytest.mark.parametrize("component", [c.name for c in all_components()])
def test_check_config_prints_effective_settings_with_secrets_masked(tmp_path, component):
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    secret_value = "super-secret-mqtt-password"
    (credentials / "mqtt_password").write_text(secret_value)
    result = gridmate(
        component,
        "check-config",
        "--config",
        str(_minimal_config(tmp_path, component)),
        env={"CREDENTIALS_DIRECTORY": str(credentials), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    assert effective["metrics"]["listen_address"] == "127.0.0.1"
    assert secret_value not in result.stdout + result.stderr


def _minimal_config(tmp_path: Path, component: str) -> Path:
    example = REPO / "docs" / "examples" / f"{component}.toml"
    if example.exists():
        return example
    path = tmp_path / "empty.toml"
    path.write_text("")
    return path


def test_configuration_reference_is_current():
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen-config-docs"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
