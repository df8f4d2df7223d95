"""The [tesla] settings section and the clients built from it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_settings import SettingsConfigDict

from gridmate.runtime.clock import SystemClock
from gridmate.runtime.settings import ComponentSettings, ConfigError, load_settings
from gridmate.tesla.fleet_api import FleetApi
from gridmate.tesla.settings import TeslaCloudSettings, build_fleet_api, build_token_provider
from gridmate.tesla.tokens import OAuthTokenProvider, TeslaMateTokenProvider


class ExampleSettings(ComponentSettings):
    model_config = SettingsConfigDict(env_prefix="GRIDMATE_TESLATEST_")
    tesla: TeslaCloudSettings = TeslaCloudSettings()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_teslamate_source_builds_a_teslamate_provider(tmp_path: Path) -> None:
    key = write(tmp_path / "key", "the-teslamate-key\n")
    config = write(
        tmp_path / "gridmate.toml",
        f'[tesla]\ntoken_source = "teslamate"\n[tesla.teslamate]\n'
        f'dsn = "postgresql://teslamate@db:5432/teslamate"\nencryption_key_file = "{key}"\n',
    )
    settings = load_settings(ExampleSettings, config).tesla
    assert settings.teslamate.encryption_key is not None
    assert settings.teslamate.encryption_key.reveal() == "the-teslamate-key"
    assert "the-teslamate-key" not in repr(settings)
    tokens = build_token_provider(settings, tmp_path, clock=SystemClock(), registry=None)
    assert isinstance(tokens, TeslaMateTokenProvider)
    assert tokens.dsn == "postgresql://teslamate@db:5432/teslamate"


def test_teslamate_source_needs_the_key(tmp_path: Path) -> None:
    config = write(tmp_path / "gridmate.toml", '[tesla]\ntoken_source = "teslamate"\n')
    with pytest.raises(ConfigError, match="encryption_key_file"):
        load_settings(ExampleSettings, config)


def test_a_password_in_the_dsn_is_refused(tmp_path: Path) -> None:
    config = write(
        tmp_path / "gridmate.toml",
        '[tesla.teslamate]\ndsn = "postgresql://teslamate:hunter2@db/teslamate"\n',
    )
    with pytest.raises(ConfigError, match=r"tesla.teslamate.dsn.*db_password_file"):
        load_settings(ExampleSettings, config)


def test_oauth_source_keeps_its_state_in_the_state_directory(tmp_path: Path) -> None:
    seed = write(tmp_path / "refresh", "NA_seed-token")
    config = write(
        tmp_path / "gridmate.toml",
        f'[tesla]\ntoken_source = "oauth"\n[tesla.oauth]\nclient_id = "abc"\n'
        f'refresh_token_file = "{seed}"\n',
    )
    settings = load_settings(ExampleSettings, config).tesla
    tokens = build_token_provider(settings, tmp_path / "state", clock=SystemClock(), registry=None)
    assert isinstance(tokens, OAuthTokenProvider)
    assert tokens.state_path == tmp_path / "state" / "tesla" / "oauth.json"
    assert (tmp_path / "state" / "tesla").stat().st_mode & 0o777 == 0o700


def test_oauth_source_needs_a_client_id(tmp_path: Path) -> None:
    config = write(tmp_path / "gridmate.toml", '[tesla]\ntoken_source = "oauth"\n')
    with pytest.raises(ConfigError, match="client_id"):
        load_settings(ExampleSettings, config)


async def test_fleet_api_from_settings(tmp_path: Path) -> None:
    settings = TeslaCloudSettings(daily_site_write_budget=3, base_url="https://example.invalid")
    assert build_token_provider(settings, tmp_path, clock=SystemClock(), registry=None) is None
    from gridmate.runtime.secrets import Secret
    from gridmate.tesla.tokens import StaticTokenProvider

    api = build_fleet_api(
        settings, StaticTokenProvider(Secret("x" * 8)), clock=SystemClock(), registry=None
    )
    assert isinstance(api, FleetApi)
    assert api.daily_site_write_budget == 3
    assert await api.base_url() == "https://example.invalid"
    await api.aclose()
