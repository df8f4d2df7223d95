"""``Retry-After`` as every API sends it, with a ceiling on how long gridmate obeys it.

RFC 9110 allows delta-seconds (``120``) or an HTTP-date
(``Fri, 31 Dec 2026 23:59:59 GMT``). Servers and proxies also send decimals,
exponents (``1e20``), values beyond a float (``1e309``) and ``inf``; and a date in
year 9999 or ``99999999999`` seconds would stop a device for ever. Every form is
parsed here without raising, and the wait is capped (``max_wait``, one hour by
default): a cap hit is reported as such, so it shows as a rate-limit condition
rather than as silence.
"""

from __future__ import annotations

import email.utils
import math
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["DEFAULT_MAX_WAIT_SECONDS", "RetryAfter", "parse_retry_after"]

DEFAULT_MAX_WAIT_SECONDS = 3600.0


@dataclass(frozen=True)
class RetryAfter:
    seconds: float
    """How long to wait: what the server asked, at most ``max_wait``."""
    asked: float
    """What the server asked for, in seconds (``inf`` for a wait beyond any float)."""
    capped: bool
    """The server asked for more than ``max_wait``; ``seconds`` is the cap."""

    def describe(self) -> str:
        """A few words for logs and health: the wait, and the cap when it was hit."""
        if not self.capped:
            return f"Retry-After {self.seconds:.0f} s"
        asked = "for ever" if math.isinf(self.asked) else f"{self.asked:.0f} s"
        return f"Retry-After asked {asked}; waiting the cap of {self.seconds:.0f} s"


def parse_retry_after(
    value: str | None, now: datetime, *, max_wait: float = DEFAULT_MAX_WAIT_SECONDS
) -> RetryAfter | None:
    """The wait a ``Retry-After`` header value asks for, capped; None when absent or
    unparsable (then the caller's own default applies)."""
    asked = _seconds(value, now)
    if asked is None:
        return None
    if asked > max_wait:
        return RetryAfter(max_wait, asked, True)
    return RetryAfter(asked, asked, False)


def cap_wait(seconds: float, *, max_wait: float = DEFAULT_MAX_WAIT_SECONDS) -> RetryAfter | None:
    """A wait given as a number (e.g. ``RateLimit-Reset``) under the same rules."""
    if math.isnan(seconds):
        return None
    asked = max(0.0, seconds)
    if asked > max_wait:
        return RetryAfter(max_wait, asked, True)
    return RetryAfter(asked, asked, False)


def _seconds(value: str | None, now: datetime) -> float | None:
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)  # "120", "1.5", "1e20", "1e309" (inf), "inf"
    except ValueError:
        pass
    else:
        return None if math.isnan(seconds) else max(0.0, seconds)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        return max(0.0, (when - now).total_seconds())
    except OverflowError:  # pragma: no cover - datetimes within years 1-9999 subtract fine
        return math.inf
