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
import json
import os
import re
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
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from gridmate.runtime.secrets import (
    MASK,
    Credential,
    Secret,
    SecretFileError,
    find_credential,
    is_secret_key,
    mask_credentials,
)

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
    # OSError: a name too long for a file name (ENAMETOOLONG), which the tzdata
    # package's loader passes through where the system zoneinfo says "not found".
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown time zone {value!r}; use an IANA name such as 'America/Phoenix'"
        ) from None
    return value


TimeZoneName = Annotated[str, AfterValidator(check_time_zone)]
"""A settings field holding an IANA time zone name."""


class ConfigError(Exception):
    """Configuration that cannot be used; ``problems`` holds one line per key.

    ``origins`` says, per problem, where the value came from: the configuration
    file's path or ``environment variable GRIDMATE_...``. :meth:`lines` joins them."""

    def __init__(self, source: str, problems: list[str], origins: list[str] | None = None) -> None:
        self.source = source
        self.problems = [_one_line(p) for p in problems]
        self.origins = origins if origins is not None else [source] * len(problems)
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        return [
            f"{origin}: {problem}"
            for origin, problem in zip(self.origins, self.problems, strict=True)
        ]


def _one_line(text: str) -> str:
    """One short line per problem: control characters shown escaped, credentials masked,
    and an echoed value of thousands of characters cut to its start and length."""
    # Not only \n: str.splitlines() also breaks at \x85, \u2028 and other separators.
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    text = mask_credentials(text)
    return re.sub(r"\S{161,}", lambda m: f"{m.group()[:120]}...({len(m.group())} characters)", text)


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
            secret = find_credential(credential.name, explicit)
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
    listen_address: str = Field(
        "127.0.0.1",
        description="/metrics has no authentication: any address but a loopback one "
        "exposes it to the network, and gridmate warns at start.",
    )
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


def _describe(error: Any) -> tuple[list[str], str]:
    """The dotted key of one validation error and a one-line reason, secrets masked."""
    location = [str(part) for part in error["loc"]]
    context = error.get("ctx") or {}
    if "key" in context:
        location.append(str(context["key"]))
    key = ".".join(location) or "(top level)"
    kind = error["type"]
    value = error.get("input")
    secret = any(is_secret_key(part) for part in location)
    if kind == "extra_forbidden":
        reason = "unknown key (check the spelling; see the configuration reference)"
    elif kind == "missing":
        reason = "required key is missing"
    elif "reason" in context:
        reason = str(context["reason"])
    else:
        reason = error["msg"].removeprefix("Value error, ")
        if secret and isinstance(value, str) and value:
            reason = reason.replace(value, MASK)
        elif kind not in {"model_type", "dict_type"} and isinstance(
            value, str | int | float | bool
        ):
            shown = repr(mask_credentials(value) if isinstance(value, str) else value)
            reason += f" (got {shown[:60]}{'...' if len(shown) > 60 else ''})"
    return location, f"{key}: {reason}"


def _environment(model: type[BaseSettings]) -> dict[str, str]:
    """The environment variables the model reads, by upper-case name."""
    prefix = str(model.model_config.get("env_prefix", "")).upper()
    return (
        {
            name.upper(): value
            for name, value in os.environ.items()
            if name.upper().startswith(prefix)
        }
        if prefix
        else {}
    )


def _env_name(model: type[BaseSettings], location: list[str]) -> str:
    prefix = str(model.model_config.get("env_prefix", ""))
    return (prefix + "__".join(location)).upper()


def _env_key(model: type[BaseSettings], name: str) -> str:
    """The dotted settings key an environment variable sets."""
    return name.removeprefix(_env_name(model, [])).lower().replace("__", ".")


def _origin(model: type[BaseSettings], location: list[str], file_label: str) -> str:
    """Where the value at ``location`` came from: an environment variable (the variable
    for the key itself or for a table holding it) or else the file."""
    environment = _environment(model)
    for depth in range(len(location), 0, -1):
        name = _env_name(model, location[:depth])
        if name in environment:
            return f"environment variable {name}"
    return file_label


def _environment_problems(model: type[BaseSettings]) -> ConfigError | None:
    """Environment values that are not text: reported before pydantic sees them."""
    problems, origins = [], []
    for name, value in sorted(_environment(model).items()):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            problems.append(f"{_env_key(model, name)}: the value is not valid UTF-8 text")
            origins.append(f"environment variable {name}")
    return ConfigError("environment", problems, origins) if problems else None


def _environment_parse_problem(model: type[BaseSettings], error: SettingsError) -> ConfigError:
    """pydantic-settings could not parse an environment value for a list or table."""
    match = re.search(r'field "([^"]+)"', str(error))
    field = match.group(1) if match else ""
    base = _env_name(model, [field]) if field else ""
    problems, origins = [], []
    for name, value in sorted(_environment(model).items()):
        if field and not (name == base or name.startswith(base + "__")):
            continue
        try:
            json.loads(value)
        except ValueError:
            problems.append(
                f"{_env_key(model, name)}: this key holds a list or a table: give the value "
                'as JSON, for example ["a@example.com"] or {"key": "value"}'
            )
            origins.append(f"environment variable {name}")
    if not problems:
        problems, origins = [f"{field or 'a value'}: cannot be read ({error})"], ["environment"]
    return ConfigError("environment", problems, origins)


def _read_toml(path: Path) -> dict[str, Any]:
    source = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(source, ["configuration file does not exist"]) from None
    except PermissionError:
        raise ConfigError(source, ["configuration file is not readable"]) from None
    except IsADirectoryError:
        raise ConfigError(source, ["is a directory, not a configuration file"]) from None
    except OSError as error:
        raise ConfigError(
            source, [f"cannot read the configuration file: {error.strerror or error}"]
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ConfigError(
            source, [f"not UTF-8 text (invalid byte 0x{raw[error.start]:02x} on line {line})"]
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(source, [f"not valid TOML: {error}"]) from None


def load_settings(model: type[SettingsT], path: Path | None) -> SettingsT:
    """Load a component's settings from a TOML file plus the environment.

    Every problem is a :class:`ConfigError` naming the key and where its value came
    from; nothing else escapes, whatever the file or the environment holds."""
    file_label = str(path) if path else "defaults (no configuration file)"
    data: dict[str, Any] = _read_toml(path) if path is not None else {}
    # Keyword arguments starting with "_" steer pydantic-settings itself (_env_file...).
    private = sorted(key for key in data if key.startswith("_"))
    if private:
        raise ConfigError(
            file_label,
            [
                f"{key}: unknown key (check the spelling; see the configuration reference)"
                for key in private
            ],
        )
    environment_problem = _environment_problems(model)
    if environment_problem is not None:
        raise environment_problem
    try:
        return model(**data)
    except SettingsError as error:
        raise _environment_parse_problem(model, error) from None
    except ValidationError as error:
        problems, origins = [], []
        for detail in error.errors():
            location, problem = _describe(detail)
            problems.append(problem)
            origins.append(_origin(model, location, file_label))
        raise ConfigError(file_label, problems, origins) from None
