"""What gridmate reads from TeslaMate's PostgreSQL database besides the token.

* :meth:`TeslaMateDatabase.cars`: TeslaMate's car ids (the ``<car_id>`` of its MQTT
  topics) with their VINs and names, from the ``cars`` table. MQTT carries no VIN.
  Old installs may have NULL VINs; TeslaMate 4.2 replaced them with a
  ``__legacy_null_vin__:<id>`` marker. Such cars need an explicit entry in the
  configuration (``teslamate.cars``).
* :meth:`TeslaMateDatabase.latest_activity`: per car, the newest position, state
  change and charge sample TeslaMate wrote. If the database knows of something newer
  than what MQTT delivered, the MQTT link from TeslaMate is dead even though the car
  may be parked (see :mod:`gridmate.vehicles.sources.teslamate`).

Tables are located by feature, not by TeslaMate version: a missing table is reported
and the rest still works. TeslaMate writes timestamps as UTC without a time zone.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gridmate.runtime.logs import get_logger
from gridmate.runtime.secrets import Secret
from gridmate.tesla.teslamate_db import TeslaMateDatabaseError, connect

log = get_logger("vehicles.teslamate")

LEGACY_NULL_VIN = "__legacy_null_vin__:"
_VIN = re.compile(r"^[A-HJ-NPR-Z0-9]{17}$")


@dataclass(frozen=True)
class TeslaMateCar:
    car_id: int
    vin: str | None
    """None when TeslaMate does not know it (NULL or the legacy marker)."""
    name: str | None
    model: str | None = None
    """TeslaMate's model code (``3``, ``Y``, ...) from the cars table."""
    trim: str | None = None


@dataclass(frozen=True)
class CarMap:
    """TeslaMate car id -> VIN, from the configuration first, then the database."""

    vins: Mapping[int, str]
    names: Mapping[int, str]
    unmapped: tuple[int, ...] = ()
    """Car ids known to TeslaMate without a usable VIN (and not configured)."""
    models: Mapping[int, tuple[str | None, str | None]] = field(default_factory=dict)
    """Car id -> (model code, trim badging) from the cars table."""

    def vin(self, car_id: int) -> str | None:
        return self.vins.get(car_id)


def usable_vin(value: Any) -> str | None:
    if not isinstance(value, str) or value.startswith(LEGACY_NULL_VIN):
        return None
    value = value.strip().upper()
    return value if _VIN.match(value) else None


def build_car_map(configured: Mapping[int, str], cars: list[TeslaMateCar]) -> CarMap:
    """Configured entries win; database rows fill in the rest."""
    vins = dict(configured)
    names: dict[int, str] = {}
    models: dict[int, tuple[str | None, str | None]] = {}
    unmapped = []
    for car in cars:
        if car.name:
            names[car.car_id] = car.name
        if car.model or car.trim:
            models[car.car_id] = (car.model, car.trim)
        if car.car_id in vins:
            continue
        if car.vin is None:
            unmapped.append(car.car_id)
        else:
            vins[car.car_id] = car.vin
    return CarMap(vins, names, tuple(sorted(unmapped)), models)


@dataclass(frozen=True)
class CarActivity:
    """The newest rows TeslaMate wrote about one car (UTC epoch seconds, or None)."""

    car_id: int
    position_at: float | None
    state_at: float | None
    charge_at: float | None

    @property
    def newest(self) -> float | None:
        times = [t for t in (self.position_at, self.state_at, self.charge_at) if t is not None]
        return max(times) if times else None


def _epoch(value: Any) -> float | None:
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


class TeslaMateDatabase:
    """A small, reconnecting reader of TeslaMate's database."""

    def __init__(
        self, dsn: str, password: Secret | None = None, *, connect_timeout: float = 5.0
    ) -> None:
        self.dsn = dsn
        self._password = password
        self.connect_timeout = connect_timeout
        self._conn: Any = None
        self._tables: dict[str, bool] | None = None
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=5)

    async def _connection(self) -> Any:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        self._conn = await connect(
            self.dsn, self._password, connect_timeout=self.connect_timeout,
            application_name="gridmate-vehicles",
        )  # fmt: skip
        self._tables = None
        return self._conn

    async def _run(self, query: Any) -> Any:
        import asyncpg

        async with self._lock:
            conn = await self._connection()
            try:
                if self._tables is None:
                    row = await conn.fetchrow(
                        "SELECT to_regclass('public.cars') IS NOT NULL AS cars, "
                        "to_regclass('public.positions') IS NOT NULL AS positions, "
                        "to_regclass('public.states') IS NOT NULL AS states, "
                        "to_regclass('public.charges') IS NOT NULL "
                        "AND to_regclass('public.charging_processes') IS NOT NULL AS charges"
                    )
                    self._tables = dict(row)
                return await query(conn, self._tables)
            except (OSError, TimeoutError, asyncpg.PostgresError) as error:
                await self.close()
                raise TeslaMateDatabaseError(
                    "query_failed",
                    f"reading TeslaMate's database failed ({type(error).__name__}: {error})",
                ) from None

    async def cars(self) -> list[TeslaMateCar]:
        async def query(conn: Any, tables: dict[str, bool]) -> list[TeslaMateCar]:
            if not tables["cars"]:
                raise TeslaMateDatabaseError(
                    "table_missing",
                    "TeslaMate's database has no 'cars' table; is tesla.teslamate.dsn "
                    "TeslaMate's database?",
                )
            rows = await conn.fetch(
                "SELECT id, vin, name, model, trim_badging FROM public.cars ORDER BY id"
            )
            return [
                TeslaMateCar(
                    int(row["id"]), usable_vin(row["vin"]), row["name"], row["model"],
                    row["trim_badging"],
                )
                for row in rows
            ]  # fmt: skip

        result: list[TeslaMateCar] = await self._run(query)
        return result

    async def latest_activity(self) -> dict[int, CarActivity]:
        async def query(conn: Any, tables: dict[str, bool]) -> dict[int, CarActivity]:
            # ORDER BY ... LIMIT 1 per car uses TeslaMate's (car_id, date) indexes.
            parts = ["SELECT c.id AS car_id"]
            parts.append(
                ", (SELECT p.date FROM public.positions p WHERE p.car_id = c.id "
                "ORDER BY p.date DESC LIMIT 1) AS position_at"
                if tables["positions"]
                else ", NULL::timestamp AS position_at"
            )
            parts.append(
                ", (SELECT s.start_date FROM public.states s WHERE s.car_id = c.id "
                "ORDER BY s.start_date DESC LIMIT 1) AS state_at"
                if tables["states"]
                else ", NULL::timestamp AS state_at"
            )
            parts.append(
                ", (SELECT ch.date FROM public.charges ch JOIN public.charging_processes cp "
                "ON cp.id = ch.charging_process_id WHERE cp.car_id = c.id "
                "ORDER BY ch.date DESC LIMIT 1) AS charge_at"
                if tables["charges"]
                else ", NULL::timestamp AS charge_at"
            )
            parts.append(" FROM public.cars c")
            rows = await conn.fetch("".join(parts))
            return {
                int(row["car_id"]): CarActivity(
                    int(row["car_id"]),
                    _epoch(row["position_at"]),
                    _epoch(row["state_at"]),
                    _epoch(row["charge_at"]),
                )
                for row in rows
            }

        if self._tables is not None and not self._tables.get("cars", False):
            return {}
        result: dict[int, CarActivity] = await self._run(query)
        return result
