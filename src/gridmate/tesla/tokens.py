"""Where Fleet API access tokens come from.

:class:`TokenProvider` is what :class:`~gridmate.tesla.fleet_api.FleetApi`
asks for a token before each request. Implementations:

* :class:`StaticTokenProvider`: a fixed token (tests, demo).
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

from gridmate.runtime.secrets import Secret

__all__ = [
    "StaticTokenProvider",
    "TokenProvider",
    "TokenUnavailable",
]


class TokenUnavailable(Exception):
    """No usable access token; ``reason`` says why in words a person can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@runtime_checkable
class TokenProvider(Protocol):
    @property
    def expires_at(self) -> datetime | None:
        """When the current access token expires, if known."""

    async def access_token(self) -> Secret:
        """A token to send now; raises :class:`TokenUnavailable`."""


class StaticTokenProvider:
    """Always the same token; for tests and the demo."""

    def __init__(self, token: Secret, expires_at: datetime | None = None) -> None:
        self._token = token
        self._expires_at = expires_at

    @property
    def expires_at(self) -> datetime | None:
        return self._expires_at

    async def access_token(self) -> Secret:
        return self._token
