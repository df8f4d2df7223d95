"""A stand-in for TeslaMate: its MQTT topics and the parts of its database gridmate reads.

Publishing follows TeslaMate's ``VehicleSubscriber`` (see docs/teslamate.md):

* topics ``teslamate[/<namespace>]/cars/<car_id>/<key>``, QoS 1, **retained except
  ``healthy``**;
* only changed values are published; after a (re)start every non-nil value is
  published again;
* nil values are published as an empty payload only for TeslaMate's
  ``publish_if_nil`` keys (which also deletes the retained copy); other nil values
  are not published at all;
* at start, an empty *retained* ``healthy`` clears what older versions left behind;
  then ``healthy`` is sent, not retained, with every summary;
* no last will: when TeslaMate dies, subscribers hear nothing.

Values are formatted as TeslaMate formats them (km with 2 decimals, integer km/h,
``true``/``false``, ISO 8601 times with microseconds).

The database side creates TeslaMate-shaped ``cars``, ``positions``, ``states``,
``charging_processes`` and ``charges`` tables (columns gridmate does not read are
left out) and writes the rows TeslaMate would write while the car drives, charges
or changes state, also when MQTT is broken, which is how a dead MQTT link is found.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiomqtt
from aiohttp import web

from gridmate.runtime.clock import Clock, SystemClock

__all__ = [
    "PUBLISH_IF_NIL",
    "TESLAMATE_SCHEMA",
    "SimulatedTeslaMate",
    "TeslaMateCarModel",
    "create_teslamate_schema",
    "encode_value",
    "simulated_teslamate",
]

KM_PER_MILE = 1.609344

PUBLISH_IF_NIL = frozenset(
    {
        "charge_energy_added",
        "charger_actual_current",
        "charger_phases",
        "charger_power",
        "charger_voltage",
        "scheduled_charging_start_time",
        "time_to_full_charge",
        "shift_state",
        "geofence",
        "trim_badging",
    }
)
DO_NOT_RETAIN = frozenset({"healthy"})
POLL_INTERVALS = {"driving": 2.5, "charging": 5.0, "online": 60.0, "updating": 15.0}
"""TeslaMate's default POLLING_*_INTERVAL seconds; asleep cars produce no summaries."""

TESLAMATE_SCHEMA = """
CREATE TYPE states_status AS ENUM ('online', 'offline', 'asleep');
CREATE TABLE cars (
    id smallserial PRIMARY KEY,
    eid bigint NOT NULL UNIQUE,
    vid bigint NOT NULL UNIQUE,
    vin text UNIQUE,
    name text,
    model character varying(255),
    trim_badging text,
    inserted_at timestamp(0) without time zone NOT NULL DEFAULT now(),
    updated_at timestamp(0) without time zone NOT NULL DEFAULT now()
);
CREATE TABLE positions (
    id serial PRIMARY KEY,
    date timestamp without time zone NOT NULL,
    latitude numeric(8,6) NOT NULL,
    longitude numeric(9,6) NOT NULL,
    speed smallint,
    battery_level smallint,
    odometer double precision,
    car_id smallint NOT NULL REFERENCES cars(id)
);
CREATE INDEX positions_car_id_date_index ON positions (car_id, date);
CREATE TABLE states (
    id serial PRIMARY KEY,
    state states_status NOT NULL,
    start_date timestamp without time zone NOT NULL,
    end_date timestamp without time zone,
    car_id smallint NOT NULL REFERENCES cars(id)
);
CREATE TABLE charging_processes (
    id serial PRIMARY KEY,
    start_date timestamp without time zone NOT NULL,
    end_date timestamp without time zone,
    car_id smallint NOT NULL REFERENCES cars(id)
);
CREATE TABLE charges (
    id serial PRIMARY KEY,
    date timestamp without time zone NOT NULL,
    battery_level smallint,
    charger_power smallint NOT NULL,
    charge_energy_added numeric(6,2) NOT NULL,
    charging_process_id integer NOT NULL REFERENCES charging_processes(id)
);
"""


async def create_teslamate_schema(dsn: str) -> None:
    """TeslaMate's tables (the columns gridmate reads), replacing any left from before."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "DROP TABLE IF EXISTS charges, charging_processes, states, positions, cars CASCADE; "
            "DROP TYPE IF EXISTS states_status"
        )
        await conn.execute(TESLAMATE_SCHEMA)
    finally:
        await conn.close()


def encode_value(value: Any) -> bytes:
    """A value as TeslaMate's ``to_string`` writes it; None is the empty payload."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"true" if value else b"false"
    if isinstance(value, datetime):
        return (
            value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z").encode()
        )
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":")).encode()
    return str(value).encode()


@dataclass
class TeslaMateCarModel:
    """A car as TeslaMate sees it; units as the Tesla API gives them (miles, mph)."""

    car_id: int
    vin: str | None
    name: str = "Car"
    state: str = "asleep"
    """online, asleep, offline, suspended, driving, charging, updating."""
    battery_level: int = 60
    usable_battery_level: int = 60
    charge_limit_soc: int = 80
    charging_state: str = "Disconnected"
    charger_power: float | None = None
    charger_voltage: int | None = None
    charger_actual_current: float | None = None
    charger_phases: int | None = None
    charge_energy_added: float | None = None
    time_to_full_charge: float | None = None
    rated_range_mi: float = 186.4
    odometer_mi: float = 12000.0
    speed_mph: float | None = None
    shift_state: str | None = None
    heading: int = 90
    latitude: float = 37.4925
    longitude: float = -121.9447
    inside_temp: float = 21.5
    outside_temp: float = 17.0
    locked: bool = True
    sentry_mode: bool = False
    version: str = "2026.20.3"
    model: str = "Y"
    trim_badging: str | None = "74D"
    tpms_bar: float = 2.9
    healthy: bool = True
    doors_open: dict[str, bool] = field(default_factory=dict)
    sun_roof_installed: bool | None = None
    """From the car's configuration; None (not published) for a car without one."""
    sun_roof_state: str | None = None
    sun_roof_percent_open: int | None = None
    route: dict[str, Any] | None = None
    """The navigation route as the Tesla API's ``active_route_*`` drive state keys
    (``destination``, ``energy_at_arrival``, ``miles_to_arrival``,
    ``minutes_to_arrival``, ``traffic_minutes_delay``, ``latitude``, ``longitude``)."""
    since: datetime | None = None

    def summary(self) -> dict[str, Any]:
        """The keys and values TeslaMate publishes, nil included."""
        km = KM_PER_MILE
        values: dict[str, Any] = {
            "display_name": self.name,
            "state": self.state,
            "since": self.since,
            "battery_level": self.battery_level,
            "usable_battery_level": self.usable_battery_level,
            "charging_state": self.charging_state,
            "plugged_in": self.charging_state != "Disconnected",
            "charge_limit_soc": self.charge_limit_soc,
            "charge_energy_added": self.charge_energy_added,
            "charger_power": self.charger_power,
            "charger_voltage": self.charger_voltage,
            "charger_actual_current": self.charger_actual_current,
            "charger_phases": self.charger_phases,
            "time_to_full_charge": self.time_to_full_charge,
            "charge_port_door_open": self.charging_state != "Disconnected",
            "rated_battery_range_km": round(self.rated_range_mi * km, 2),
            "est_battery_range_km": round(self.rated_range_mi * 0.93 * km, 2),
            "ideal_battery_range_km": round(self.rated_range_mi * 1.05 * km, 2),
            "odometer": round(self.odometer_mi * km, 2),
            "speed": None if self.speed_mph is None else round(self.speed_mph * km),
            "shift_state": self.shift_state,
            "heading": self.heading,
            "latitude": self.latitude,
            "longitude": self.longitude,
            "location": {"latitude": self.latitude, "longitude": self.longitude},
            "inside_temp": self.inside_temp,
            "outside_temp": self.outside_temp,
            "locked": self.locked,
            "sentry_mode": self.sentry_mode,
            "version": self.version,
            "model": self.model,
            "trim_badging": self.trim_badging,
            "geofence": None,
            "power": -round(self.charger_power) if self.charger_power else 0,
            **self._active_route(),
            "sun_roof_installed": self.sun_roof_installed,
            "sun_roof_state": self.sun_roof_state,
            "sun_roof_percent_open": self.sun_roof_percent_open,
        }
        for corner in ("fl", "fr", "rl", "rr"):
            values[f"tpms_pressure_{corner}"] = self.tpms_bar
        for door in (
            "driver_front_door_open",
            "driver_rear_door_open",
            "passenger_front_door_open",
            "passenger_rear_door_open",
            "frunk_open",
            "trunk_open",
        ):
            values[door] = self.doors_open.get(door, False)
        return values

    def _active_route(self) -> dict[str, Any]:
        # TeslaMate's add_active_route/2: the JSON, and the deprecated one-value topics
        # (the literal "nil" without a route).
        route = self.route
        if route is None:
            return {
                "active_route_destination": "nil",
                "active_route_latitude": "nil",
                "active_route_longitude": "nil",
                "active_route": {"error": "No active route available"},
            }
        return {
            "active_route_destination": route["destination"],
            "active_route_latitude": route["latitude"],
            "active_route_longitude": route["longitude"],
            "active_route": {
                "destination": route["destination"],
                "energy_at_arrival": route["energy_at_arrival"],
                "miles_to_arrival": route["miles_to_arrival"],
                "minutes_to_arrival": route["minutes_to_arrival"],
                "traffic_minutes_delay": route["traffic_minutes_delay"],
                "location": {"latitude": route["latitude"], "longitude": route["longitude"]},
                "error": None,
            },
        }


class SimulatedTeslaMate:
    """See :func:`simulated_teslamate`."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        namespace: str | None,
        cars: Iterable[TeslaMateCarModel],
        clock: Clock,
        database: str | None,
        healthy_heartbeat: bool,
        polling: bool = False,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.username, self.password = username, password
        self.namespace = namespace
        self.cars = {car.car_id: car for car in cars}
        self.clock = clock
        self.database = database
        self.healthy_heartbeat = healthy_heartbeat
        self.polling = polling
        self.mqtt_broken = False
        """True: TeslaMate keeps polling and writing its database, but its MQTT is gone."""
        self.published: list[tuple[str, bytes, bool]] = []
        self._client: aiomqtt.Client | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._last: dict[int, dict[str, Any]] = {}
        self._db: Any = None
        self._charging_process: dict[int, int] = {}
        self._db_state: dict[int, str] = {}
        self._poller: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._web: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._web_port = 0
        self.web_url: str | None = None
        """TeslaMate's web interface (its dashboard at ``/``); refuses connections
        while TeslaMate is dead, like a stopped container."""

    def topic(self, car_id: int, key: str) -> str:
        middle = f"{self.namespace}/" if self.namespace else ""
        return f"teslamate/{middle}cars/{car_id}/{key}"

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """TeslaMate starts: connect, clear ``healthy``, publish every non-nil value."""
        if self.database is not None and self._db is None:
            import asyncpg

            self._db = await asyncpg.connect(self.database)
            for car in self.cars.values():
                await self._db.execute(
                    "INSERT INTO cars (id, eid, vid, vin, name, model, trim_badging) "
                    "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO UPDATE "
                    "SET vin = EXCLUDED.vin, name = EXCLUDED.name",
                    car.car_id,
                    1000 + car.car_id,
                    2000 + car.car_id,
                    car.vin,
                    car.name,
                    car.model,
                    car.trim_badging,
                )
        await self._connect()
        await self._start_web()
        self._last = {}
        for car in self.cars.values():
            await self._publish(car.car_id, "healthy", b"", retain=True)
            await self.summary(car.car_id)
        if self.polling:
            self._poller = asyncio.create_task(self.poll_loop(), name="teslamate-sim.poll")

    async def _connect(self) -> None:
        self._stack = contextlib.AsyncExitStack()
        self._client = await self._stack.enter_async_context(
            aiomqtt.Client(
                self.host,
                self.port,
                username=self.username,
                password=self.password,
                identifier=f"TESLAMATE_{uuid.uuid4().hex[:11].upper()}",
            )
        )

    async def poll_loop(self) -> None:
        """TeslaMate's polling: a summary per car at its state's interval, forever."""
        due: dict[int, float] = {}
        while self._client is not None or self.mqtt_broken:
            now = self.clock.now().timestamp()
            for car in self.cars.values():
                if now >= due.get(car.car_id, 0.0):
                    if car.state not in ("asleep", "offline", "suspended"):
                        await self.summary(car.car_id)
                    due[car.car_id] = now + POLL_INTERVALS.get(car.state, 30.0)
            await self.clock.sleep(1.0)

    async def _start_web(self) -> None:
        if self._web is None:
            app = web.Application()
            app.router.add_get("/", self._dashboard)
            self._web = web.AppRunner(app, access_log=None)
            await self._web.setup()
        # The same port after a restart, as TeslaMate's PORT setting gives it.
        self._site = web.TCPSite(self._web, "127.0.0.1", self._web_port)
        await self._site.start()
        self._web_port = self._web.addresses[0][1]
        self.web_url = f"http://127.0.0.1:{self._web_port}"

    async def _dashboard(self, _request: web.Request) -> web.Response:
        return web.Response(
            text="<!DOCTYPE html><html><head><title>TeslaMate</title></head></html>",
            content_type="text/html",
        )

    async def die(self) -> None:
        """TeslaMate stops (crash, container killed): no last will, no more messages."""
        # The process is gone: its listener and every open connection with it.
        runner, self._web, self._site = self._web, None, None
        if runner is not None:
            await runner.cleanup()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await stack.aclose()

    async def close(self) -> None:
        await self.die()
        if self._db is not None:
            await self._db.close()
            self._db = None

    # ------------------------------------------------------------ publishing

    async def _publish(self, car_id: int, key: str, payload: bytes, *, retain: bool) -> None:
        topic = self.topic(car_id, key)
        self.published.append((topic, payload, retain))
        if self._client is None or self.mqtt_broken:
            return
        await self._client.publish(topic, payload, qos=1, retain=retain)

    async def summary(self, car_id: int) -> None:
        """One poll of the car: changed values (and ``healthy``) out, rows into the database."""
        async with self._lock:  # the poll loop and the caller share one database connection
            await self._summary(car_id)

    async def _summary(self, car_id: int) -> None:
        car = self.cars[car_id]
        now = self.clock.now()
        if car.since is None:
            car.since = now
        values = car.summary()
        last = self._last.setdefault(car_id, {})
        for key, value in values.items():
            if key in last and last[key] == value:
                continue
            if value is None and key not in PUBLISH_IF_NIL:
                continue
            if self._client is not None and not self.mqtt_broken:
                last[key] = value
            await self._publish(car_id, key, encode_value(value), retain=key not in DO_NOT_RETAIN)
        if self.healthy_heartbeat:
            await self._publish(car_id, "healthy", encode_value(car.healthy), retain=False)
        await self._record(car, now)

    async def set_state(self, car_id: int, state: str, **changes: Any) -> None:
        """Change the car's state (and other values) and publish like TeslaMate."""
        car = self.cars[car_id]
        if state != car.state:
            car.state = state
            car.since = self.clock.now()
        for name, value in changes.items():
            setattr(car, name, value)
        await self.summary(car_id)

    async def publish_raw(
        self, car_id: int, key: str, payload: bytes, *, retain: bool = True
    ) -> None:
        """Any payload on any key (for malformed-input tests)."""
        await self._publish(car_id, key, payload, retain=retain)

    # ------------------------------------------------------------ database

    async def _record(self, car: TeslaMateCarModel, now: datetime) -> None:
        if self._db is None:
            return
        stamp = now.astimezone(UTC).replace(tzinfo=None)
        db_state = {"asleep": "asleep", "offline": "offline"}.get(car.state, "online")
        if self._db_state.get(car.car_id) != db_state:
            self._db_state[car.car_id] = db_state
            await self._db.execute(
                "UPDATE states SET end_date = $1 WHERE car_id = $2 AND end_date IS NULL",
                stamp,
                car.car_id,
            )
            await self._db.execute(
                "INSERT INTO states (state, start_date, car_id) VALUES ($1, $2, $3)",
                db_state,
                stamp,
                car.car_id,
            )
        if car.state == "driving":
            await self._db.execute(
                "INSERT INTO positions (date, latitude, longitude, speed, battery_level, "
                "odometer, car_id) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                stamp,
                round(car.latitude, 6),
                round(car.longitude, 6),
                None if car.speed_mph is None else round(car.speed_mph * KM_PER_MILE),
                car.battery_level,
                car.odometer_mi * KM_PER_MILE,
                car.car_id,
            )
        if car.state == "charging":
            process = self._charging_process.get(car.car_id)
            if process is None:
                process = await self._db.fetchval(
                    "INSERT INTO charging_processes (start_date, car_id) VALUES ($1, $2) "
                    "RETURNING id",
                    stamp,
                    car.car_id,
                )
                self._charging_process[car.car_id] = process
            await self._db.execute(
                "INSERT INTO charges (date, battery_level, charger_power, charge_energy_added, "
                "charging_process_id) VALUES ($1, $2, $3, $4, $5)",
                stamp,
                car.battery_level,
                round(car.charger_power or 0),
                car.charge_energy_added or 0,
                process,
            )
        elif car.car_id in self._charging_process:
            process = self._charging_process.pop(car.car_id)
            await self._db.execute(
                "UPDATE charging_processes SET end_date = $1 WHERE id = $2", stamp, process
            )


@contextlib.asynccontextmanager
async def simulated_teslamate(
    host: str,
    port: int,
    cars: Iterable[TeslaMateCarModel],
    *,
    namespace: str | None = None,
    clock: Clock | None = None,
    database: str | None = None,
    healthy_heartbeat: bool = True,
    start: bool = True,
    polling: bool = False,
    username: str | None = None,
    password: str | None = None,
) -> AsyncIterator[SimulatedTeslaMate]:
    """A TeslaMate publishing to the broker at ``host:port``.

    ``database`` is the DSN of a database with :data:`TESLAMATE_SCHEMA`; the cars are
    inserted into ``cars`` at start. ``healthy_heartbeat`` False behaves like TeslaMate
    before 2.1 (``healthy`` only when it changes). ``polling`` runs TeslaMate's poll
    loop on ``clock`` (a summary per car at its state's interval) until :meth:`die`.
    ``username`` and ``password`` log in to a broker that wants them, as TeslaMate's
    ``MQTT_USERNAME`` and ``MQTT_PASSWORD`` do.
    """
    teslamate = SimulatedTeslaMate(
        host,
        port,
        namespace=namespace,
        cars=cars,
        clock=clock or SystemClock(),
        database=database,
        healthy_heartbeat=healthy_heartbeat,
        polling=polling,
        username=username,
        password=password,
    )
    try:
        if start:
            await teslamate.start()
        yield teslamate
    finally:
        await teslamate.close()


async def clear_retained(host: str, port: int, topics: Iterable[str]) -> None:
    """Delete retained messages (tests share a broker)."""
    async with aiomqtt.Client(host, port) as client:
        for topic in topics:
            await client.publish(topic, b"", qos=1, retain=True)
    await asyncio.sleep(0)
