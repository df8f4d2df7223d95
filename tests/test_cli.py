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


def gridmate(
    *args: str, env: dict[str, str | bytes] | dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
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


# ------------------------------------------------------------ check-config never crashes

COMPONENTS = [c.name for c in all_components()]


def _config_error_lines(result: subprocess.CompletedProcess[str], component: str) -> list[str]:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines, "no error line"
    for line in lines:
        assert line.startswith(f"gridmate {component}: configuration error: "), line
    return lines


@pytest.mark.parametrize("component", COMPONENTS)
def test_check_config_rejects_a_file_that_is_not_utf8(tmp_path, component):
    config = tmp_path / "latin1.toml"
    config.write_bytes(b'[metrics]\nlisten_address = "caf\xe9"\n')
    (line,) = _config_error_lines(gridmate(component, "check-config", "-c", str(config)), component)
    assert f"{config}: not UTF-8 text" in line and "line 2" in line


@pytest.mark.parametrize("component", COMPONENTS)
def test_check_config_rejects_a_directory_as_configuration(tmp_path, component):
    (line,) = _config_error_lines(
        gridmate(component, "check-config", "-c", str(tmp_path)), component
    )
    assert f"{tmp_path}: is a directory" in line


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("5", "a number"),
        ("true", "true/false"),
        ('["/run/pw"]', "a list"),
        ('{ path = "/run/pw" }', "a table"),
        ("2026-12-06", "a date"),
    ],
)
@pytest.mark.parametrize("component", COMPONENTS)
def test_check_config_rejects_a_password_file_that_is_not_a_path(tmp_path, component, value, kind):
    config = tmp_path / "c.toml"
    config.write_text(f"[notify]\npassword_file = {value}\n")
    (line,) = _config_error_lines(gridmate(component, "check-config", "-c", str(config)), component)
    assert f"{config}: notify.password_file: must be a file path in quotes, not {kind}" in line


def _env(**variables: str | bytes) -> dict[str, str | bytes]:
    """This process's environment (PATH, PYTHONPATH...) without gridmate's own
    variables, plus ``variables``."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("GRIDMATE_") and name != "CREDENTIALS_DIRECTORY"
    }
    return {**inherited, **variables}


@pytest.mark.parametrize("component", COMPONENTS)
def test_check_config_rejects_a_secret_file_variable_that_is_not_text(component):
    name = f"GRIDMATE_{component.upper()}_NOTIFY__PASSWORD_FILE"
    result = subprocess.run(
        [sys.executable, "-m", "gridmate.cli", component, "check-config"],
        capture_output=True,
        timeout=60,
        env=_env(**{name: b"/run/pass\xffword"}),  # type: ignore[arg-type]
        check=False,
    )
    decoded = subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )
    (line,) = _config_error_lines(decoded, component)
    assert f"environment variable {name}: notify.password_file: " in line
    assert "not valid UTF-8 text" in line


@pytest.mark.parametrize("component", COMPONENTS)
def test_check_config_rejects_a_ten_thousand_character_secret_path(component):
    name = f"GRIDMATE_{component.upper()}_NOTIFY__PASSWORD_FILE"
    result = gridmate(component, "check-config", env=_env(**{name: "a" * 10_000}))
    (line,) = _config_error_lines(result, component)
    assert f"environment variable {name}: notify.password_file: " in line
    assert "too long (10000 characters)" in line
    assert len(line) < 300


@pytest.mark.parametrize("component", COMPONENTS)
def test_check_config_explains_a_list_given_as_plain_text_in_the_environment(component):
    name = f"GRIDMATE_{component.upper()}_NOTIFY__RECIPIENTS__INFO"
    result = gridmate(component, "check-config", env=_env(**{name: "0.0.0.0"}))
    (line,) = _config_error_lines(result, component)
    assert f"environment variable {name}: notify.recipients.info: " in line
    assert "JSON" in line


@pytest.mark.parametrize("component", COMPONENTS)
def test_check_config_says_whether_a_bad_value_came_from_file_or_environment(tmp_path, component):
    config = tmp_path / "c.toml"
    config.write_text('[metrics]\nport = "abc"\n')
    from_file = gridmate(component, "check-config", "-c", str(config))
    assert any(
        line.startswith(f"gridmate {component}: configuration error: {config}: metrics.port: ")
        for line in _config_error_lines(from_file, component)
    )
    name = f"GRIDMATE_{component.upper()}_METRICS__PORT"
    from_environment = gridmate(
        component, "check-config", "-c", str(config), env=_env(**{name: "99999"})
    )
    lines = _config_error_lines(from_environment, component)
    assert any(f"environment variable {name}: metrics.port: " in line for line in lines), lines


@pytest.mark.parametrize("component", COMPONENTS)
def test_check_config_cuts_an_echoed_value_of_thousands_of_characters(component):
    name = f"GRIDMATE_{component.upper()}_NOTIFY__TIME_ZONE"
    result = gridmate(component, "check-config", env=_env(**{name: "x" * 10_000}))
    (line,) = _config_error_lines(result, component)
    assert f"environment variable {name}: notify.time_zone: unknown time zone" in line
    assert "characters)" in line and len(line) < 400


@pytest.mark.parametrize("separator", ["\x85", "\u2028", "\x0b", "\n"])
@pytest.mark.parametrize("component", COMPONENTS)
def test_check_config_keeps_a_key_with_a_line_separator_on_one_line(tmp_path, component, separator):
    config = tmp_path / "c.toml"
    config.write_text(json.dumps(f"bad{separator}key") + " = 1\n", encoding="utf-8")
    (line,) = _config_error_lines(gridmate(component, "check-config", "-c", str(config)), component)
    assert "unknown key" in line
