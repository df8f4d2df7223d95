"""Typed settings shared by every component.

Each component has one settings model, a subclass of :class:`ComponentSettings`.
Values come from a TOML file (``--config PATH``) with ``GRIDMATE_<COMPONENT>_...``
environment variables on top (nested keys joined with ``__``, for example
``GRIDMATE_VEHICLES_MQTT__HOST``). Secrets are never written in the file: a
field marked with :class:`~gridmate.runtime.secrets.Credential` is read from the
file named by its ``<field>_file`` key or from ``$CREDENTIALS_DIRECTORY``.

Any problem is reported as :class:`ConfigError`, one line per key, naming the
key's dotted path and the reason.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from gridmate.runtime.secrets import Credential, Secret, SecretFileError, find_credential

__all__ = [
    "ComponentSettings",
    "ConfigError",
    "Credential",
    "LogSettings",
    "MetricsSettings",
    "MqttSettings",
    "Secret",
    "Section",
    "TimeZoneName",
    "check_time_zone",
    "load_settings",
]


def check_time_zone(value: str) -> str:
    """Validator: an IANA time zone name."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {value!r}; use an IANA name such as 'America/Phoenix'"
        ) from None
    return value


TimeZoneName = Annotated[str, AfterValidator(check_time_zone)]
"""A settings field holding an IANA time zone name."""


class ConfigError(Exception):
    """Configuration that cannot be used; ``problems`` holds one line per key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


def _is_credential(field: FieldInfo) -> bool:
    return any(isinstance(m, Credential) for m in field.metadata)


def _explicit_values(section: Section) -> dict[str, Any]:
    """The values a section instance was built with, secrets left out (they are re-read)."""
    values: dict[str, Any] = {}
    for name in section.model_fields_set:
        if _is_credential(type(section).model_fields[name]):
            continue
        value = getattr(section, name)
        if isinstance(value, Section):
            values[name] = _explicit_values(value)
        else:
            values[name] = section.model_dump(include={name})[name]
    return values


def _resolve_credentials(model: type[BaseModel], data: Any) -> Any:
    """Replace each credential field by the Secret read from its file."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for name, field in model.model_fields.items():
        # Sections are built now rather than taken as class-time instances, so the
        # credentials directory is consulted at load time; the file's table is laid
        # over the component's own defaults for that section.
        default = field.default
        if isinstance(default, Section):
            given = data.get(name, {})
            if isinstance(given, dict):
                data[name] = {**_explicit_values(default), **given}
        credential = next((m for m in field.metadata if isinstance(m, Credential)), None)
        if credential is None:
            continue
        file_key = f"{name}_file"
        if data.get(name) is not None and not isinstance(data[name], Secret):
            raise PydanticCustomError(
                "inline_secret",
                "{reason}",
                {
                    "key": name,
                    "reason": (
                        f"secrets are not accepted inline; put the value in a file and set "
                        f"'{file_key}', or pass it as systemd credential '{credential.name}'"
                    ),
                },
            )
        explicit = data.pop(file_key, None)
        try:
            secret = find_credential(credential.name, Path(explicit) if explicit else None)
        except SecretFileError as error:
            raise PydanticCustomError(
                "secret_file", "{reason}", {"key": file_key, "reason": str(error)}
            ) from None
        if secret is not None:
            data[name] = secret
    return data


class Section(BaseModel):
    """A group of settings (a TOML table). Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _read_credentials(cls, data: Any) -> Any:
        return _resolve_credentials(cls, data)


LogLevel = Literal["debug", "info", "warning", "error"]


class LogSettings(Section):
    level: LogLevel = "info"
    format: Literal["auto", "text", "journal", "json"] = Field(
        "auto",
        description="auto picks 'journal' when stderr is connected to journald, else 'text'.",
    )


class MetricsSettings(Section):
    enable: bool = True
    listen_address: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535, description="0 picks a free port.")

    @field_validator("listen_address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError("not an IP address") from None
        return value


class MqttSettings(Section):
    """An MQTT broker connection (Home Assistant's broker, or TeslaMate's)."""

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: Annotated[Secret | None, Credential("mqtt_password")] = None
    tls: bool = False
    ca_file: Path | None = None
    client_id: str | None = None
    keepalive: int = Field(60, ge=5, le=3600)


def _default_state_directory() -> Path:
    # systemd's StateDirectory= sets $STATE_DIRECTORY.
    return Path(os.environ.get("STATE_DIRECTORY", "state").split(":")[0])


def _default_runtime_directory() -> Path:
    return Path(os.environ.get("RUNTIME_DIRECTORY", "run").split(":")[0])


class ComponentSettings(BaseSettings):
    """Base of every component's settings model.

    Subclasses set ``model_config = SettingsConfigDict(env_prefix="GRIDMATE_<NAME>_")``.
    """

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        env_nested_delimiter="__",
    )

    log: LogSettings = LogSettings()
    metrics: MetricsSettings = MetricsSettings()
    state_directory: Path = Field(
        default_factory=_default_state_directory,
        description="Persistent state; defaults to $STATE_DIRECTORY (systemd StateDirectory=).",
    )
    runtime_directory: Path = Field(
        default_factory=_default_runtime_directory,
        description="Volatile state on tmpfs; defaults to $RUNTIME_DIRECTORY.",
    )

    @model_validator(mode="before")
    @classmethod
    def _read_credentials(cls, data: Any) -> Any:
        return _resolve_credentials(cls, data)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file, which arrives as init arguments.
        return (env_settings, init_settings)

    def effective(self) -> dict[str, Any]:
        """The settings as plain data with secrets masked, for check-config."""
        return self.model_dump(mode="json")


SettingsT = TypeVar("SettingsT", bound=ComponentSettings)


def _describe(error: Any) -> str:
    location = [str(part) for part in error["loc"]]
    context = error.get("ctx") or {}
    if "key" in context:
        location.append(str(context["key"]))
    key = ".".join(location) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        reason = "unknown key (check the spelling; see the configuration reference)"
    elif kind == "missing":
        reason = "required key is missing"
    elif "reason" in context:
        reason = str(context["reason"])
    else:
        reason = error["msg"].removeprefix("Value error, ")
        value = error.get("input")
        if kind not in {"model_type", "dict_type"} and isinstance(value, str | int | float | bool):
            shown = repr(value)
            reason += f" (got {shown[:60]}{'...' if len(shown) > 60 else ''})"
    return f"{key}: {reason}"


def load_settings(model: type[SettingsT], path: Path | None) -> SettingsT:
    """Load a component's settings from a TOML file plus the environment."""
    source = str(path) if path else "environment"
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(source, ["configuration file does not exist"]) from None
        except PermissionError:
            raise ConfigError(source, ["configuration file is not readable"]) from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(source, [f"not valid TOML: {error}"]) from None
    try:
        return model(**data)
    except ValidationError as error:
        raise ConfigError(source, [_describe(e) for e in error.errors()]) from None
