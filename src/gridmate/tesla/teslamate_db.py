"""Connecting to TeslaMate's PostgreSQL database (tokens, cars, latest activity)."""

from __future__ import annotations

from typing import Any

from gridmate.runtime.secrets import Secret


class TeslaMateDatabaseError(Exception):
    """TeslaMate's database cannot be used; ``code`` is a short cause for metrics."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


async def connect(
    dsn: str, password: Secret | None, *, connect_timeout: float, application_name: str
) -> Any:
    """An asyncpg connection, or TeslaMateDatabaseError saying what to fix."""
    import asyncpg  # only the components that read TeslaMate's database load the driver

    try:
        return await asyncpg.connect(
            dsn,
            password=password.reveal() if password is not None else None,
            timeout=connect_timeout,
            server_settings={"application_name": application_name},
        )
    except (
        asyncpg.InvalidPasswordError,
        asyncpg.InvalidAuthorizationSpecificationError,
    ) as error:
        raise TeslaMateDatabaseError(
            "database_login_failed",
            f"TeslaMate's database refused the login ({type(error).__name__}); check the "
            "user in tesla.teslamate.dsn and tesla.teslamate.db_password_file",
        ) from None
    except asyncpg.InvalidCatalogNameError:
        raise TeslaMateDatabaseError(
            "database_missing", "the database named in tesla.teslamate.dsn does not exist"
        ) from None
    except (OSError, TimeoutError, asyncpg.PostgresConnectionError) as error:
        raise TeslaMateDatabaseError(
            "database_unreachable",
            f"cannot reach TeslaMate's database ({type(error).__name__}: {error})",
        ) from None
    except asyncpg.PostgresError as error:
        raise TeslaMateDatabaseError("database_error", f"{type(error).__name__}: {error}") from None
