"""Notification settings, a section every component's settings include as ``notify``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from gridmate.notify.events import Level
from gridmate.runtime.settings import Credential, MqttSettings, Secret, Section, TimeZoneName

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]{0,31})://")


def apprise_scheme(url: str) -> str:
    """The scheme of an Apprise URL ("json", "tgram"...), the only part of it that
    may be shown; "?" when it has none."""
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else "?"


def parse_apprise_urls(text: str) -> list[Secret]:
    """The URLs of an Apprise URLs file: one per line; blank lines and lines starting
    with '#' are left out. Each is a Secret, so logs mask it wherever it appears."""
    urls = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            urls.append(Secret(line, source="apprise_urls"))
    return urls


class Recipients(Section):
    """Who gets which level. An empty list means that level is only logged."""

    info: tuple[str, ...] = ()
    warning: tuple[str, ...] = ()
    critical: tuple[str, ...] = ()

    @field_validator("info", "warning", "critical")
    @classmethod
    def _check_addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for address in value:
            local, at, domain = address.rpartition("@")
            if not at or not local or not domain or any(c.isspace() for c in address):
                raise ValueError(f"not an email address: {address!r}")
        return value


class LedgerMqttSettings(MqttSettings):
    """The broker that mirrors the sent-ledger between failover nodes."""

    password: Annotated[Secret | None, Credential("notify_mqtt_password")] = None


class NotifySettings(Section):
    """Notifications by email and Apprise. Without ``smtp_host`` and ``apprise_urls``
    events are only logged."""

    smtp_host: str | None = Field(None, description="SMTP server; unset disables email.")
    smtp_port: int | None = Field(
        None, ge=1, le=65535, description="Default 587 for starttls, 465 for tls, 25 for none."
    )
    security: Literal["starttls", "tls", "none"] = Field(
        "starttls",
        description="starttls: plain connection upgraded with STARTTLS (required); "
        "tls: implicit TLS from the first byte; none: no encryption (local relays only).",
    )
    ca_file: Path | None = Field(None, description="CA bundle for a private SMTP server.")
    username: str | None = None
    password: Annotated[Secret | None, Credential("smtp_password")] = None
    sender: str = Field("gridmate@localhost", description="The From address.")
    recipients: Recipients = Recipients()
    apprise_urls: Annotated[Secret | None, Credential("apprise_urls")] = Field(
        None,
        description="Apprise URLs (https://github.com/caronc/apprise/wiki), one per line "
        "('#' starts a comment): a second channel beside email, each URL a target of its "
        "own. They hold tokens, so they come from a file.",
    )
    apprise_levels: tuple[Level, ...] = Field(
        (Level.INFO, Level.WARNING, Level.CRITICAL),
        description="The levels that go to the Apprise targets; others are only emailed.",
    )
    time_zone: TimeZoneName | None = Field(
        None, description="Time zone for times in messages (IANA name); default: the system's."
    )
    node_name: str | None = Field(
        None, description="Name of this machine in messages; default: the host name."
    )
    timeout_seconds: float = Field(30.0, gt=0)
    digest_window_seconds: float = Field(
        30.0,
        ge=0,
        description="Events arriving within this time of each other are sent together.",
    )
    digest_min_events: int = Field(
        3, ge=2, description="This many messages for one level at once become one digest."
    )
    max_per_kind_per_hour: int = Field(
        4, ge=1, description="More messages of one kind in an hour are held for a digest."
    )
    repeat_window_seconds: float = Field(
        6 * 3600.0,
        ge=0,
        description="An identical one-off event within this time is not sent again.",
    )
    resolve_after_seconds: float = Field(
        300.0,
        ge=0,
        description="A condition must stay resolved this long before 'resolved' is sent, "
        "so a flapping condition gives one message and one 'resolved'.",
    )
    retry_initial_seconds: float = Field(5.0, gt=0)
    retry_max_seconds: float = Field(600.0, gt=0)
    max_queue_age_hours: float = Field(
        48.0, gt=0, description="Undelivered messages older than this are dropped (logged)."
    )
    ledger_retention_days: float = Field(7.0, gt=0)
    mqtt: LedgerMqttSettings | None = Field(
        None,
        description="Broker that mirrors the sent-ledger as retained messages, so a node "
        "taking over after failover does not repeat what the other node sent.",
    )
    mqtt_topic: str = Field("gridmate/notify", description="Topic prefix of the ledger mirror.")
    mqtt_sync_timeout_seconds: float = Field(
        5.0, gt=0, description="How long start() waits for the mirror before sending."
    )

    @field_validator("mqtt_topic")
    @classmethod
    def _check_topic(cls, value: str) -> str:
        if not value or any(c in value for c in "#+") or value.endswith("/"):
            raise ValueError("must be a topic prefix without wildcards or a trailing '/'")
        return value

    @model_validator(mode="after")
    def _check_apprise(self) -> NotifySettings:
        if self.apprise_urls is None:
            return self
        urls = self.apprise_target_urls()
        if not urls:
            raise ValueError("notify.apprise_urls_file holds no URL (only blank or '#' lines)")
        from gridmate.notify.channels import import_apprise

        apprise = import_apprise()
        for number, url in enumerate(urls, 1):
            if apprise.Apprise.instantiate(url.reveal(), suppress_exceptions=True) is None:
                # Only the scheme: the rest of an Apprise URL is often a token.
                raise ValueError(
                    f"notify.apprise_urls_file: URL {number} (scheme "
                    f"{apprise_scheme(url.reveal())}) is not one Apprise can use"
                )
        return self

    @model_validator(mode="after")
    def _check_smtp(self) -> NotifySettings:
        if self.retry_max_seconds < self.retry_initial_seconds:
            raise ValueError("notify.retry_max_seconds must be >= retry_initial_seconds")
        if self.smtp_host is None:
            return self
        if self.password is not None and self.username is None:
            raise ValueError("notify.username is required when an SMTP password is set")
        if self.username is not None and self.password is None:
            raise ValueError(
                "notify.password_file (or credential 'smtp_password') is required with "
                "notify.username"
            )
        if self.username is not None and self.security == "none":
            raise ValueError(
                "notify.security = 'none' would send the SMTP password in clear text; "
                "use 'starttls' or 'tls'"
            )
        return self

    def apprise_target_urls(self) -> list[Secret]:
        return parse_apprise_urls(self.apprise_urls.reveal()) if self.apprise_urls else []

    @property
    def email_enabled(self) -> bool:
        return self.smtp_host is not None

    @property
    def apprise_enabled(self) -> bool:
        return self.apprise_urls is not None

    @property
    def enabled(self) -> bool:
        """Some channel (email, Apprise) is configured; otherwise events are only logged."""
        return self.email_enabled or self.apprise_enabled

    @property
    def port(self) -> int:
        if self.smtp_port is not None:
            return self.smtp_port
        return {"starttls": 587, "tls": 465, "none": 25}[self.security]
