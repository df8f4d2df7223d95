"""Secrets read from files, never from the configuration itself.

A secret named ``mqtt_password`` is found, in order, at the path given by the
``password_file`` key of its settings section, or at
``$CREDENTIALS_DIRECTORY/mqtt_password`` when systemd passed it with
``LoadCredential=``. Its value is held by :class:`Secret`, whose ``str`` and
``repr`` are masked, and is registered with the log redactor so that it cannot
leak through a formatted message either.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic_core import core_schema

MASK = "********"

# Every secret value read in this process, so log output can be scrubbed.
_known_values: set[str] = set()


def known_secret_values() -> frozenset[str]:
    return frozenset(_known_values)


# ``scheme://user:password@host``: the password part of a URL's userinfo, up to the last
# "@" before the path (a password with an unescaped "@" is masked whole).
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@\s:]*:)(?P<secret>[^/\s]+)@")
# ``password=...`` in a libpq key/value DSN or a query string.
_KEYWORD_SECRET = re.compile(
    r"(?P<head>\b(?:password|passwd|pwd|secret|token|access_token|refresh_token|api_key)"
    r"\s*=\s*)(?P<secret>'[^']*'|\"[^\"]*\"|[^\s&;,'\"]+)",
    re.IGNORECASE,
)
_SECRET_KEY_NAME = re.compile(
    r"(pass(word|phrase|wd)?|secret|token|api_?key|private_?key|encryption_key|credential)s?$",
    re.IGNORECASE,
)


def is_secret_key(name: str) -> bool:
    """Whether a settings key's value must never be shown (``*_file`` paths may be)."""
    return not name.endswith("_file") and bool(_SECRET_KEY_NAME.search(name))


def mask_credentials(text: str) -> str:
    """``text`` with URL passwords, ``password=...`` values and known secrets masked."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", text)
    text = _KEYWORD_SECRET.sub(lambda m: f"{m['head']}{MASK}", text)
    return scrub_known_secrets(text)


@functools.lru_cache(maxsize=1024)
def _written_forms(secret: str) -> tuple[str, ...]:
    """How a secret may appear in text: as is, JSON-escaped, repr()-escaped (exception
    arguments, tracebacks), and each of those escaped once more, longest first."""
    forms = {secret}
    for _ in range(2):
        for form in list(forms):
            forms.add(json.dumps(form)[1:-1])
            forms.add(json.dumps(form, ensure_ascii=False)[1:-1])
            forms.add(repr(form)[1:-1])
    return tuple(sorted(forms, key=len, reverse=True))


def scrub_known_secrets(text: str) -> str:
    """``text`` with every secret value read in this process, in any of its escaped
    forms, replaced by the mask. Longest first, so a secret containing another is
    masked whole."""
    for secret in sorted(_known_values, key=len, reverse=True):
        for form in _written_forms(secret):
            if form in text:
                text = text.replace(form, MASK)
    return text


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


# Longer than any path Linux accepts (PATH_MAX is 4096 bytes).
_MAX_PATH_CHARACTERS = 4096


def _shown(path: Path | str) -> str:
    text = str(path)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def check_secret_path(value: object) -> Path:
    """A secret file setting as a Path, or SecretFileError saying what is wrong with it."""
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str):
        raise SecretFileError(f"must be a file path in quotes, not {describe_kind(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise SecretFileError("the path is not valid UTF-8 text") from None
    if "\0" in value:
        raise SecretFileError("the path contains a NUL character")
    if len(value) > _MAX_PATH_CHARACTERS:
        raise SecretFileError(f"the path is too long ({len(value)} characters)")
    return Path(value)


def describe_kind(value: object) -> str:
    """What a configuration value is, in a person's words."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    if hasattr(value, "isoformat"):
        return "a date or time"
    return type(value).__name__


# No credential is this long; a bigger file is a wrong path (or /dev/zero).
_MAX_SECRET_BYTES = 64 * 1024


def read_secret_file(path: Path) -> Secret:
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_SECRET_BYTES + 1)
        if len(raw) > _MAX_SECRET_BYTES:
            raise SecretFileError(f"file {_shown(path)} is too large for a secret")
        text = raw.decode("utf-8")
    except SecretFileError:
        raise
    except FileNotFoundError:
        raise SecretFileError(f"file {_shown(path)} does not exist") from None
    except PermissionError:
        raise SecretFileError(
            f"file {_shown(path)} is not readable by this user (uid {os.getuid()})"
        ) from None
    except IsADirectoryError:
        raise SecretFileError(f"{_shown(path)} is a directory, not a file") from None
    except UnicodeDecodeError:
        raise SecretFileError(f"file {_shown(path)} is not UTF-8 text") from None
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise SecretFileError(f"cannot read {_shown(path)}: {reason}") from None
    value = text.rstrip("\r\n")
    if not value:
        raise SecretFileError(f"file {_shown(path)} is empty")
    return Secret(value, source=str(path))


def find_credential(name: str, explicit: object) -> Secret | None:
    """Resolve a secret: explicit path first, then the systemd credentials directory.
    ``explicit`` is the ``*_file`` setting as given (None or "" when not set)."""
    if explicit is not None and explicit != "":
        return read_secret_file(check_secret_path(explicit))
    directory = credentials_directory()
    if directory is not None and (directory / name).is_file():
        return read_secret_file(directory / name)
    return None
