"""Settings loading, credential files and masking."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from gridmate.runtime.settings import (
    ComponentSettings,
    ConfigError,
    Credential,
    MqttSettings,
    Secret,
    Section,
    load_settings,
)


class ApiSection(Section):
    url: str = "https://example.invalid"
    token: Annotated[Secret | None, Credential("api_token")] = None


class DemoSettings(ComponentSettings):
    model_config = SettingsConfigDict(env_prefix="GRIDMATE_SAMPLE_")
    mqtt: MqttSettings = MqttSettings(port=8883)
    api: ApiSection = ApiSection()
    interval: int = 60


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_file_values_and_environment_overrides(tmp_path, monkeypatch):
    config = write(tmp_path / "c.toml", 'interval = 30\n[mqtt]\nhost = "broker.lan"\nport = 1884\n')
    monkeypatch.setenv("GRIDMATE_SAMPLE_MQTT__PORT", "8883")
    monkeypatch.setenv("GRIDMATE_SAMPLE_INTERVAL", "15")
    settings = load_settings(DemoSettings, config)
    assert settings.mqtt.host == "broker.lan"
    assert settings.mqtt.port == 8883
    assert settings.interval == 15


def test_a_components_own_section_defaults_survive_loading(tmp_path):
    assert load_settings(DemoSettings, None).mqtt.port == 8883
    config = write(tmp_path / "c.toml", '[mqtt]\nhost = "broker.lan"\n')
    # The file's table is laid over the component's defaults, not in place of them.
    settings = load_settings(DemoSettings, config)
    assert (settings.mqtt.host, settings.mqtt.port) == ("broker.lan", 8883)


def test_section_defaults_do_not_carry_secrets_read_at_import(tmp_path, monkeypatch):
    credentials = tmp_path / "creds"
    credentials.mkdir()
    write(credentials / "mqtt_password", "first-value")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))

    class Late(ComponentSettings):
        mqtt: MqttSettings = MqttSettings(port=8883)  # built while the credential exists

    write(credentials / "mqtt_password", "rotated-value")
    settings = load_settings(Late, None)
    assert settings.mqtt.port == 8883
    assert settings.mqtt.password.reveal() == "rotated-value"


def test_secret_from_explicit_file_is_masked_everywhere(tmp_path):
    secret_file = write(tmp_path / "pw", "correct-horse-battery\n")
    config = write(tmp_path / "c.toml", f'[mqtt]\npassword_file = "{secret_file}"\n')
    settings = load_settings(DemoSettings, config)
    assert settings.mqtt.password is not None
    assert settings.mqtt.password.reveal() == "correct-horse-battery"
    for text in (repr(settings), str(settings), json.dumps(settings.effective())):
        assert "correct-horse-battery" not in text
    assert str(secret_file) in settings.effective()["mqtt"]["password"]


def test_secret_from_systemd_credentials_directory(tmp_path, monkeypatch):
    credentials = tmp_path / "creds"
    credentials.mkdir()
    write(credentials / "api_token", "tok-from-systemd")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    settings = load_settings(DemoSettings, None)
    assert settings.api.token is not None
    assert settings.api.token.reveal() == "tok-from-systemd"
    assert settings.mqtt.password is None  # not passed: stays unset


def test_explicit_file_wins_over_credentials_directory(tmp_path, monkeypatch):
    credentials = tmp_path / "creds"
    credentials.mkdir()
    write(credentials / "api_token", "from-directory")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    explicit = write(tmp_path / "token", "from-explicit-path")
    config = write(tmp_path / "c.toml", f'[api]\ntoken_file = "{explicit}"\n')
    assert load_settings(DemoSettings, config).api.token.reveal() == "from-explicit-path"


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[mqtt]\nport = "abc"\n', "mqtt.port: Input should be a valid integer"),
        ("[mqtt]\nport = 70000\n", "mqtt.port: Input should be less than or equal to 65535"),
        ('[mqtt]\nhots = "x"\n', "mqtt.hots: unknown key"),
        ('[mqtt]\npassword = "hunter22"\n', "mqtt.password: secrets are not accepted inline"),
        (
            '[mqtt]\npassword_file = "/nonexistent/pw"\n',
            "mqtt.password_file: file /nonexistent/pw does not exist",
        ),
        ('[metrics]\nlisten_address = "localhost"\n', "metrics.listen_address: not an IP address"),
        ("interval = [", "not valid TOML"),
    ],
)
def test_bad_configuration_names_the_key(tmp_path, toml, expected):
    config = write(tmp_path / "c.toml", toml)
    with pytest.raises(ConfigError) as caught:
        load_settings(DemoSettings, config)
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems
    assert "hunter22" not in str(caught.value)


def test_empty_secret_file_is_an_error(tmp_path):
    empty = write(tmp_path / "empty", "\n")
    config = write(tmp_path / "c.toml", f'[api]\ntoken_file = "{empty}"\n')
    with pytest.raises(ConfigError, match=r"api.token_file: file .* is empty"):
        load_settings(DemoSettings, config)


def test_missing_configuration_file(tmp_path):
    with pytest.raises(ConfigError, match="configuration file does not exist"):
        load_settings(DemoSettings, tmp_path / "absent.toml")


def test_secret_cannot_be_set_through_the_environment(monkeypatch):
    monkeypatch.setenv("GRIDMATE_SAMPLE_MQTT__PASSWORD", "from-env-value")
    with pytest.raises(ConfigError, match=r"mqtt\.password: secrets are not accepted inline"):
        load_settings(DemoSettings, None)


# ---------------------------------------------------------------- no secret in an error


class Webhook(Section):
    url: str = "https://example.invalid"
    signing_secret: str = Field("x" * 40, min_length=40)

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError("must be an https:// URL")
        return value


class HookSettings(ComponentSettings):
    model_config = SettingsConfigDict(env_prefix="GRIDMATE_HOOK_")
    webhook: Webhook = Webhook()


@pytest.mark.parametrize(
    ("toml", "secret", "shown"),
    [
        # a URL's userinfo password, in the file
        (
            '[webhook]\nurl = "http://alice:hunter2pass@hooks.example"\n',
            "hunter2pass",
            "alice:********@",
        ),
        # a password with an unescaped "@"
        ('[webhook]\nurl = "http://dave:p@ss@hooks.example"\n', "p@ss", "dave:********@hooks"),
        # a password with URL-special characters
        ('[webhook]\nurl = "ftp://bob:p%40ss\\"w0rd@h"\n', 'p%40ss"w0rd', "bob:********@"),
        # any value of a secret-looking key, even one that is not a credential field
        ('[webhook]\nsigning_secret = "short-but-secret-value"\n', "short-but-secret-value", None),
        # libpq key/value form
        ('[webhook]\nurl = "host=db password=kv-secret-1"\n', "kv-secret-1", "password=********"),
    ],
)
def test_validation_errors_mask_credentials(tmp_path, toml, secret, shown):
    config = write(tmp_path / "c.toml", toml)
    with pytest.raises(ConfigError) as caught:
        load_settings(HookSettings, config)
    text = "\n".join(caught.value.lines())
    assert secret not in text
    assert "webhook." in text
    if shown is not None:
        assert shown in text


def test_validation_errors_mask_credentials_from_the_environment(monkeypatch):
    monkeypatch.setenv("GRIDMATE_HOOK_WEBHOOK__URL", "http://carol:env-secret-9@hooks.example")
    with pytest.raises(ConfigError) as caught:
        load_settings(HookSettings, None)
    (line,) = caught.value.lines()
    assert "env-secret-9" not in line
    assert line.startswith("environment variable GRIDMATE_HOOK_WEBHOOK__URL: webhook.url: ")
    assert "carol:********@hooks.example" in line


def test_teslamate_dsn_with_a_password_is_rejected_without_echoing_it(tmp_path):
    from gridmate.vehicles.settings import VehiclesSettings

    config = write(
        tmp_path / "c.toml",
        '[tesla]\ntoken_source = "teslamate"\n'
        '[tesla.teslamate]\ndsn = "postgresql://teslamate:db-pass-42@db/teslamate"\n',
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(VehiclesSettings, config)
    text = "\n".join(caught.value.lines())
    assert "tesla.teslamate.dsn: must not contain a password" in text
    assert "db-pass-42" not in text
