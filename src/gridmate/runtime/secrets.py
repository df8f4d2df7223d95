"""Secrets read from files, never from the configuration itself.

A secret named ``mqtt_password`` is found, in order, at the path given by the
``password_file`` key of its settings section, or at
``$CREDENTIALS_DIRECTORY/mqtt_password`` when systemd passed it with
``LoadCredential=``. Its value is held by :class:`Secret`, whose ``str`` and
``repr`` are masked, and is registered with the log redactor so that it cannot
leak through a formatted message either.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic_core import core_schema

MASK = "********"

# Every secret value read in this process, so log output can be scrubbed.
_known_values: set[str] = set()


def known_secret_values() -> frozenset[str]:
    return frozenset(_known_values)


class Secret:
    """A secret value. Use :meth:`reveal` at the point where it is sent."""

    __slots__ = ("_source", "_value")

    def __init__(self, value: str, source: str = "inline") -> None:
        self._value = value
        self._source = source
        if len(value) >= 4:  # scrubbing very short strings would mangle ordinary log text
            _known_values.add(value)

    def reveal(self) -> str:
        return self._value

    @property
    def source(self) -> str:
        return self._source

    def __repr__(self) -> str:
        return f"Secret({MASK} from {self._source})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    @classmethod
    def __get_pydantic_core_schema__(cls, source_type: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            _validate_secret,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda s: f"{MASK} (from {s.source})", when_used="always"
            ),
        )


def _validate_secret(value: Any) -> Secret:
    if isinstance(value, Secret):
        return value
    raise ValueError("secrets are read from files: set the matching '_file' key instead")


@dataclass(frozen=True)
class Credential:
    """Marks a settings field as a secret read from a file.

    ``name`` is the systemd credential name (the file name inside
    ``$CREDENTIALS_DIRECTORY``).
    """

    name: str


class SecretFileError(ValueError):
    """A secret file that is configured but cannot be used."""


def credentials_directory() -> Path | None:
    value = os.environ.get("CREDENTIALS_DIRECTORY")
    return Path(value) if value else None


def read_secret_file(path: Path) -> Secret:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SecretFileError(f"file {path} does not exist") from None
    except PermissionError:
        raise SecretFileError(
            f"file {path} is not readable by this user (uid {os.getuid()})"
        ) from None
    except IsADirectoryError:
        raise SecretFileError(f"{path} is a directory, not a file") from None
    except UnicodeDecodeError:
        raise SecretFileError(f"file {path} is not UTF-8 text") from None
    value = text.rstrip("\r\n")
    if not value:
        raise SecretFileError(f"file {path} is empty")
    return Secret(value, source=str(path))


def find_credential(name: str, explicit: Path | None) -> Secret | None:
    """Resolve a secret: explicit path first, then the systemd credentials directory."""
    if explicit is not None:
        return read_secret_file(explicit)
    directory = credentials_directory()
    if directory is not None and (directory / name).is_file():
        return read_secret_file(directory / name)
    return None
