"""The ``[tesla]`` settings section shared by components that call Tesla's cloud.

A component includes ``tesla: TeslaCloudSettings = TeslaCloudSettings()`` in
its settings model and builds its clients with :func:`build_token_provider`
and :func:`build_fleet_api`.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from pydantic import Field, field_validator, model_validator

from gridmate.runtime.clock import Clock
from gridmate.runtime.files import make_private_directory
from gridmate.runtime.secrets import Credential, Secret
from gridmate.runtime.settings import Section
from gridmate.tesla.fleet_api import BudgetUse, FleetApi
from gridmate.tesla.tokens import (
    DEFAULT_TOKEN_URL,
    EventHook,
    OAuthTokenProvider,
    TeslaMateTokenProvider,
    TokenProvider,
)

__all__ = [
    "OAuthSettings",
    "TeslaCloudSettings",
    "TeslaMateTokenSettings",
    "build_fleet_api",
    "build_token_provider",
]


class TeslaMateTokenSettings(Section):
    """Read the token TeslaMate keeps (gridmate never refreshes it)."""

    dsn: str = Field(
        "postgresql://teslamate@127.0.0.1:5432/teslamate",
        description="TeslaMate's database, without the password (see db_password_file).",
    )
    encryption_key: Annotated[Secret | None, Credential("teslamate_encryption_key")] = None
    db_password: Annotated[Secret | None, Credential("teslamate_db_password")] = None
    check_interval: float = Field(
        60.0, ge=5, le=3600, description="Seconds between cheap updated_at checks."
    )
    reread_interval: float = Field(
        1800.0, ge=60, le=86400, description="Seconds between full re-reads of the token."
    )

    @field_validator("dsn")
    @classmethod
    def _no_password_in_dsn(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL")
        if parts.password:
            raise ValueError("must not contain a password; put it in db_password_file")
        return value


class OAuthSettings(Section):
    """gridmate's own Tesla login (for installations without TeslaMate)."""

    client_id: str | None = Field(None, description="The Tesla developer application's client ID.")
    refresh_token: Annotated[Secret | None, Credential("tesla_refresh_token")] = None
    token_url: str = DEFAULT_TOKEN_URL
    state_file: Path | None = Field(
        None,
        description="Where gridmate keeps the rotating refresh token; defaults to "
        "<state_directory>/tesla/oauth.json.",
    )
    expiry_warning_days: int = Field(14, ge=1, le=80)


class TeslaCloudSettings(Section):
    token_source: Literal["none", "teslamate", "oauth"] = Field(
        "none", description="Where Fleet API access tokens come from."
    )
    teslamate: TeslaMateTokenSettings = TeslaMateTokenSettings()
    oauth: OAuthSettings = OAuthSettings()
    base_url: str | None = Field(
        None, description="Fleet API base URL; unset discovers the account's region."
    )
    command_proxy_url: str | None = Field(
        None,
        description="Tesla's vehicle-command proxy (tesla-http-proxy) that signs vehicle commands.",
    )
    command_proxy_ca_file: Path | None = Field(
        None, description="CA certificate of the command proxy's TLS certificate."
    )
    daily_vehicle_budget: int | None = Field(200, ge=1)
    daily_site_write_budget: int | None = Field(5, ge=1)
    live_status_interval: float = Field(300.0, ge=0)
    max_retry_after_seconds: float = Field(
        3600.0,
        gt=0,
        description="Longest wait gridmate obeys when Tesla answers 429; a longer "
        "Retry-After is cut to this and reported as a rate-limit condition.",
    )

    @model_validator(mode="after")
    def _check_source(self) -> TeslaCloudSettings:
        if self.token_source == "teslamate" and self.teslamate.encryption_key is None:
            raise ValueError(
                "token_source 'teslamate' needs teslamate.encryption_key_file (TeslaMate's "
                "ENCRYPTION_KEY) or the systemd credential 'teslamate_encryption_key'"
            )
        if self.token_source == "oauth" and not self.oauth.client_id:
            raise ValueError("token_source 'oauth' needs oauth.client_id")
        return self


def build_token_provider(
    settings: TeslaCloudSettings,
    state_directory: Path,
    *,
    clock: Clock,
    registry: CollectorRegistry | None,
    on_event: EventHook | None = None,
) -> TokenProvider | None:
    """The configured provider, or None when ``token_source`` is ``none``.

    Both providers have ``run(stop)`` for background upkeep and ``health()``
    for ``daemon.add_health_check``.
    """
    if settings.token_source == "teslamate":
        section = settings.teslamate
        assert section.encryption_key is not None
        return TeslaMateTokenProvider(
            section.dsn,
            section.encryption_key,
            section.db_password,
            clock=clock,
            registry=registry,
            reread_interval=section.reread_interval,
            check_interval=section.check_interval,
            on_event=on_event,
        )
    if settings.token_source == "oauth":
        oauth = settings.oauth
        assert oauth.client_id is not None
        state_file = oauth.state_file or state_directory / "tesla" / "oauth.json"
        make_private_directory(state_file.parent)
        return OAuthTokenProvider(
            oauth.client_id,
            state_file,
            initial_refresh_token=oauth.refresh_token,
            token_url=oauth.token_url,
            clock=clock,
            registry=registry,
            expiry_warning=timedelta(days=oauth.expiry_warning_days),
            on_event=on_event,
        )
    return None


def build_fleet_api(
    settings: TeslaCloudSettings,
    tokens: TokenProvider,
    *,
    clock: Clock,
    registry: CollectorRegistry | None,
    on_budget_use: Callable[[BudgetUse], None] | None = None,
    state_directory: Path | None = None,
) -> FleetApi:
    """A :class:`FleetApi` as configured; ``on_budget_use`` receives each :class:`BudgetUse`.

    With ``state_directory`` the daily budgets' counts survive a restart.
    """
    verify: ssl.SSLContext | bool = True
    if settings.command_proxy_ca_file is not None:
        # The proxy's certificate is usually self-signed; Tesla's still verify normally.
        context = ssl.create_default_context()
        context.load_verify_locations(cafile=str(settings.command_proxy_ca_file))
        verify = context
    return FleetApi(
        tokens,
        base_url=settings.base_url,
        registry=registry,
        clock=clock,
        daily_vehicle_budget=settings.daily_vehicle_budget,
        daily_site_write_budget=settings.daily_site_write_budget,
        site_live_status_interval=settings.live_status_interval,
        command_base_url=settings.command_proxy_url,
        on_budget_use=on_budget_use,
        verify=verify,
        budget_file=state_directory / "tesla-api-budgets.json" if state_directory else None,
        max_retry_after=settings.max_retry_after_seconds,
    )
