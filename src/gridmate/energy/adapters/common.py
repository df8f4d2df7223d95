"""Bookkeeping every adapter shares: API health, request counts and 429 back-off."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from gridmate.runtime.clock import Clock

WireModel = TypeVar("WireModel", bound="Wire")


class AdapterError(Exception):
    """A device or service call that failed; the message says what to do about it."""


class RateLimitedError(AdapterError):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RejectedError(AdapterError):
    """The device refused the value (a 400 for a value it does not accept)."""


class OutcomeUnknown(AdapterError):
    """The request may have reached the device but its answer was lost (a timeout, a
    reset connection, a 5xx, an unparsable body): only a fresh read tells what happened."""

    def __init__(self, message: str, *, answered: bool = False) -> None:
        super().__init__(message)
        self.answered = answered
        """A 2xx came back (its body was unusable): the write reached the device."""


@dataclass
class ApiHealth:
    """Whether an API answered lately, how often it was called today, and back-off."""

    name: str
    clock: Clock
    budget: int | None = None
    last_ok: datetime | None = None
    last_error: str | None = None
    blocked_until: datetime | None = None
    block_capped: bool = False
    """The API asked for a longer wait than gridmate obeys; it waits the cap instead."""
    used_today: int = 0
    day: date | None = None
    history: list[str] = field(default_factory=list)

    def count(self) -> None:
        today = self.clock.now().date()
        if self.day != today:
            self.day, self.used_today = today, 0
        self.used_today += 1

    def ok(self) -> None:
        self.last_ok = self.clock.now()
        self.last_error = None

    def failed(self, reason: str) -> None:
        self.last_error = reason

    def block(self, seconds: float, reason: str, *, capped: bool = False) -> None:
        # Callers cap the wait (gridmate.runtime.retry_after); a day bounds it regardless.
        self.blocked_until = self.clock.now() + timedelta(seconds=min(max(1.0, seconds), 86400))
        self.last_error = reason
        self.block_capped = capped

    def blocked(self) -> float | None:
        """Seconds left of a 429 back-off, or None."""
        if self.blocked_until is None:
            return None
        left = (self.blocked_until - self.clock.now()).total_seconds()
        return left if left > 0 else None

    def problem(self) -> str | None:
        wait = self.blocked()
        if wait is not None:
            if self.block_capped:
                # Say that the API asked for more: a wait beyond the cap is news.
                return f"rate limited for {wait:.0f} more seconds ({self.last_error})"
            return f"rate limited for {wait:.0f} more seconds"
        return self.last_error


class Wire(BaseModel):
    """A device's answer as its wire format documents it; other fields are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)


def parse_wire(model: type[WireModel], data: Any, who: str) -> WireModel:
    """``data`` (decoded JSON) as ``model``, or an :class:`AdapterError` naming what was
    wrong, so a wrong-shaped answer is that device's problem and not a crash."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        what = "expected an object" if first["type"] == "model_type" else first["msg"]
        raise AdapterError(
            f"{who} answered JSON of an unexpected shape ({where or _json_kind(data)}: {what})"
        ) from None


def _json_kind(data: Any) -> str:
    if data is None:
        return "null"
    if isinstance(data, list):
        return "a list"
    return "an object" if isinstance(data, dict) else f"a {type(data).__name__}"
