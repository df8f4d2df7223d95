"""TeslaMate as a source: its MQTT topics into the canonical vehicle state.

TeslaMate publishes ``teslamate/cars/<car_id>/<key>`` (``teslamate/<namespace>/cars/...``
with ``MQTT_NAMESPACE``), QoS 1, retained except ``healthy``, and only when a value
changed. What this module gets right, where other consumers stumble:

* topics are parsed from the right (``.../cars/<car_id>/<key>``), with or without a
  namespace;
* an empty payload is a value: null (TeslaMate sends it for the charger keys, shift
  state, time to full charge and others when Tesla reports nothing); every payload is
  parsed defensively and a bad one is logged and skipped, never fatal;
* ``location`` (JSON) is preferred; the deprecated ``latitude``/``longitude`` pair is
  used only until a ``location`` arrives;
* units are TeslaMate's (km, km/h, kW, hours, bar, °C) and converted to the catalogue's;
* ``healthy=false`` stops trusting TeslaMate for that car until it says ``true``; an
  empty or missing ``healthy`` is not an error (TeslaMate clears it at every start);
* staleness is judged by the car's state: a driving or charging car that goes silent
  is stale, an asleep/offline/suspended one is not. A dead link is detected even when
  the car is parked: our broker connection is down, or TeslaMate's database holds
  positions, state changes or charge samples newer than anything MQTT delivered.

Car ids are mapped to VINs through TeslaMate's ``cars`` table or the configuration
(:mod:`gridmate.vehicles.sources.teslamate_cars`); messages of a car not yet mapped are kept
and applied once its VIN is known.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiomqtt
import httpx
from prometheus_client import CollectorRegistry, Counter

from gridmate.runtime.backoff import Backoff, reconnecting, sleep_unless_stopped, tcp_answers
from gridmate.runtime.clock import Clock, sleep_or_wake
from gridmate.runtime.logs import get_logger
from gridmate.tesla.teslamate_db import TeslaMateDatabaseError
from gridmate.vehicles.arbitration import TESLAMATE, Activity, SourceFacts
from gridmate.vehicles.catalogue import CHARGING_STATES, MAX_STATE_LENGTH
from gridmate.vehicles.sources.settings import TeslaMateSourceSettings
from gridmate.vehicles.sources.teslamate_cars import CarMap, TeslaMateDatabase, build_car_map
from gridmate.vehicles.sources.teslamate_metrics import TeslaMateHealthCollector
from gridmate.vehicles.units import miles_from_km, mph_from_kmh

log = get_logger("vehicles.teslamate")

_WEB_TIMEOUT = 10.0
_WEB_FAILURES = 2
"""Failed checks in a row before TeslaMate is taken for dead (one may be a restart)."""

SOURCE = TESLAMATE
ROOT = "teslamate"
KM_PER_MILE = 1.609344

# ---------------------------------------------------------------- topics


def subscription(namespace: str | None) -> str:
    """The topic filter for one TeslaMate instance."""
    return f"{ROOT}/{namespace}/cars/+/+" if namespace else f"{ROOT}/cars/+/+"


@dataclass(frozen=True)
class TopicInfo:
    namespace: str | None
    car_id: int
    key: str


def parse_topic(topic: str) -> TopicInfo | None:
    """``teslamate[/<namespace>]/cars/<car_id>/<key>``, read from the right; None if not one."""
    parts = topic.split("/")
    if len(parts) < 4 or parts[0] != ROOT or parts[-3] != "cars":
        return None
    car, key = parts[-2], parts[-1]
    # ASCII digits only: str.isdigit() also accepts "²" and "١", which int() rejects
    # or reads as another number.
    if not (car.isascii() and car.isdigit()) or not key:
        return None
    middle = parts[1:-3]
    if len(middle) > 1 or (middle and not middle[0]):
        return None
    return TopicInfo(middle[0] if middle else None, int(car), key)


# ---------------------------------------------------------------- values


class BadPayload(ValueError):
    """A payload that does not fit its key; the message is skipped."""


Converter = Callable[[str], Any]


def _number(text: str) -> float | int | None:
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise BadPayload(f"not a number: {text[:40]!r}") from None
    if not math.isfinite(value):
        raise BadPayload(f"not a finite number: {text[:40]!r}")
    return int(value) if value.is_integer() and "." not in text and "e" not in text else value


def _km_to_mi(text: str) -> float | None:
    value = _number(text)
    return None if value is None else miles_from_km(value)


def _kmh_to_mph(text: str) -> float | None:
    value = _number(text)
    return None if value is None else mph_from_kmh(value)


def _timestamp(text: str) -> str | None:
    if text == "":
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadPayload(f"not an ISO 8601 time: {text[:40]!r}") from None
    if moment.tzinfo is None:
        raise BadPayload(f"a time without a time zone: {text[:40]!r}")
    return moment.isoformat()


def _boolean(text: str) -> bool | None:
    if text == "":
        return None
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise BadPayload(f"not true/false: {text[:40]!r}")


def _text(text: str) -> str | None:
    return text[:MAX_STATE_LENGTH] if text != "" else None


def _charging_state(text: str) -> str | None:
    if text == "":
        return None
    # Tesla's CamelCase (NoPower) to the catalogue's option names (no_power).
    option = "".join(f"_{c.lower()}" if c.isupper() else c for c in text).lstrip("_")
    if option not in CHARGING_STATES:
        raise BadPayload(f"unknown charging state {text[:40]!r}")
    return option


def _shift_state(text: str) -> str | None:
    if text == "":
        return None
    option = text.strip().lower()
    if option not in ("p", "r", "n", "d"):
        raise BadPayload(f"unknown shift state {text[:40]!r}")
    return option


def _sentry(text: str) -> str | None:
    on = _boolean(text)
    return None if on is None else ("armed" if on else "off")


_MODELS = {"S": "Model S", "3": "Model 3", "X": "Model X", "Y": "Model Y"}


def _model(text: str) -> str | None:
    if text == "":
        return None
    return _MODELS.get(text, text[:MAX_STATE_LENGTH])


# TeslaMate key -> (canonical field, converter). Units: see the module docstring.
SIMPLE: dict[str, tuple[str, Converter]] = {
    "display_name": ("vehicle_name", _text),
    "battery_level": ("battery_level", _number),
    "usable_battery_level": ("usable_battery_level", _number),
    "charging_state": ("charge_state", _charging_state),
    "charge_limit_soc": ("charge_limit_soc", _number),
    # TeslaMate does not say whether the charger is AC or DC; see docs/teslamate.md.
    "charger_power": ("ac_charging_power_kw", _number),
    "charger_actual_current": ("charger_current_a", _number),
    "charger_voltage": ("charger_voltage_v", _number),
    "charger_phases": ("charger_phases", _number),
    "charge_current_request": ("charge_current_request_a", _number),
    "charge_current_request_max": ("charge_current_request_max_a", _number),
    "charge_port_door_open": ("charge_port_door_open", _boolean),
    "time_to_full_charge": ("time_to_full_charge_h", _number),
    "est_battery_range_km": ("est_range_mi", _km_to_mi),
    "rated_battery_range_km": ("rated_range_mi", _km_to_mi),
    "ideal_battery_range_km": ("ideal_range_mi", _km_to_mi),
    "odometer": ("odometer_mi", _km_to_mi),
    "shift_state": ("shift_state", _shift_state),
    "heading": ("heading_deg", _number),
    "inside_temp": ("inside_temp_c", _number),
    "outside_temp": ("outside_temp_c", _number),
    "locked": ("locked", _boolean),
    "sentry_mode": ("sentry_mode", _sentry),
    "tpms_pressure_fl": ("tpms_front_left_bar", _number),
    "tpms_pressure_fr": ("tpms_front_right_bar", _number),
    "tpms_pressure_rl": ("tpms_rear_left_bar", _number),
    "tpms_pressure_rr": ("tpms_rear_right_bar", _number),
    "version": ("software_version", _text),
    "model": ("car_type", _model),
    "trim_badging": ("trim", _text),
    "geofence": ("geofence", _text),
    "plugged_in": ("cable_plugged_in", _boolean),
    "elevation": ("elevation_m", _number),
    "charge_energy_added": ("charge_energy_added_kwh", _number),
    "scheduled_charging_start_time": ("scheduled_charging_start", _timestamp),
    "is_climate_on": ("climate_on", _boolean),
    "is_preconditioning": ("preconditioning", _boolean),
    "is_user_present": ("user_present", _boolean),
    "update_available": ("update_available", _boolean),
    "update_version": ("update_version", _text),
    "download_perc": ("update_download_percent", _number),
    "install_perc": ("update_install_percent", _number),
    "windows_open": ("windows_open", _boolean),
    "driver_front_window_open": ("window_driver_front_open", _boolean),
    "driver_rear_window_open": ("window_driver_rear_open", _boolean),
    "passenger_front_window_open": ("window_passenger_front_open", _boolean),
    "passenger_rear_window_open": ("window_passenger_rear_open", _boolean),
    "tpms_soft_warning_fl": ("tpms_soft_warning_front_left", _boolean),
    "tpms_soft_warning_fr": ("tpms_soft_warning_front_right", _boolean),
    "tpms_soft_warning_rl": ("tpms_soft_warning_rear_left", _boolean),
    "tpms_soft_warning_rr": ("tpms_soft_warning_rear_right", _boolean),
    "sun_roof_installed": ("sunroof_installed", _boolean),
    "sun_roof_percent_open": ("sunroof_percent_open", _number),
    "sun_roof_state": ("sunroof_state", _text),
}

DOOR_KEYS: dict[str, str] = {
    "driver_front_door_open": "driver_front",
    "driver_rear_door_open": "driver_rear",
    "passenger_front_door_open": "passenger_front",
    "passenger_rear_door_open": "passenger_rear",
    "frunk_open": "trunk_front",
    "trunk_open": "trunk_rear",
}

STATE_ACTIVITY: dict[str, Activity] = {
    "driving": Activity.ACTIVE,
    "charging": Activity.ACTIVE,
    "online": Activity.IDLE,
    "updating": Activity.IDLE,
    "start": Activity.IDLE,
    "asleep": Activity.SLEEPING,
    "offline": Activity.SLEEPING,
    "suspended": Activity.SLEEPING,
}
"""TeslaMate's ``state`` to what data flow to expect ("unavailable" is unknown)."""

_ONLINE_STATES = {"online": True, "driving": True, "charging": True, "updating": True}
_ONLINE_STATES |= {"suspended": True, "asleep": False, "offline": False}

_ROUTE_KEYS = frozenset(
    {"active_route_destination", "active_route_latitude", "active_route_longitude"}
)
"""TeslaMate's deprecated one-value route topics (``active_route`` has it all)."""

HANDLED_KEYS = frozenset(
    set(SIMPLE)
    | set(DOOR_KEYS)
    | {"state", "since", "healthy", "location", "latitude", "longitude", "active_route"}
    | _ROUTE_KEYS
    | {"speed"}
)


def _location(text: str) -> tuple[float, float] | None:
    if text == "":
        return None
    try:
        document = json.loads(text)
        latitude, longitude = float(document["latitude"]), float(document["longitude"])
    except (ValueError, TypeError, KeyError):
        raise BadPayload(f"not a location document: {text[:60]!r}") from None
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        raise BadPayload(f"coordinates out of range: {text[:60]!r}")
    return (latitude, longitude)


def _coordinate(text: str, limit: float) -> float | None:
    value = _number(text)
    if value is not None and not -limit <= value <= limit:
        raise BadPayload(f"coordinate out of range: {text[:40]!r}")
    return None if value is None else float(value)


_ROUTE_FIELDS = (
    "destination_name",
    "minutes_to_arrival",
    "miles_to_arrival",
    "energy_at_arrival",
    "traffic_delay_minutes",
    "destination_location",
)


def _route_number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


def _route_location(value: Any) -> tuple[float, float] | None:
    if not isinstance(value, dict):
        return None
    latitude, longitude = (
        _route_number(value.get("latitude")),
        _route_number(value.get("longitude")),
    )
    if latitude is None or longitude is None:
        return None
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        raise BadPayload(f"destination out of range: {value!r:.60}")
    return (float(latitude), float(longitude))


def _active_route(text: str) -> list[tuple[str, Any]]:
    """The ``active_route`` JSON (TeslaMate's units: miles, minutes, percent)."""
    if text == "":
        return [(name, None) for name in _ROUTE_FIELDS]
    try:
        document = json.loads(text)
    except ValueError:
        raise BadPayload(f"not a route document: {text[:60]!r}") from None
    if not isinstance(document, dict):
        raise BadPayload("the route document is not an object")
    if document.get("error") or document.get("destination") is None:
        return [(name, None) for name in _ROUTE_FIELDS]
    return [
        ("destination_name", str(document["destination"])[:MAX_STATE_LENGTH]),
        ("minutes_to_arrival", _route_number(document.get("minutes_to_arrival"))),
        ("miles_to_arrival", _route_number(document.get("miles_to_arrival"))),
        ("energy_at_arrival", _route_number(document.get("energy_at_arrival"))),
        ("traffic_delay_minutes", _route_number(document.get("traffic_minutes_delay"))),
        ("destination_location", _route_location(document.get("location"))),
    ]


_NIL = "nil"
"""What TeslaMate's deprecated ``active_route_*`` topics say without a route."""


# ---------------------------------------------------------------- per car


@dataclass
class TeslaMateCarView:
    """What TeslaMate said about one car, kept whether or not it is trusted."""

    car_id: int
    state: str | None = None
    since: str | None = None
    healthy: bool | None = None
    last_live: float | None = None
    """When the last non-retained message about this car arrived."""
    last_message: float | None = None
    location_topic_seen: bool = False
    latitude: float | None = None
    longitude: float | None = None
    route_topic_seen: bool = False
    route_latitude: float | None = None
    route_longitude: float | None = None
    doors: dict[str, bool] = field(default_factory=dict)
    values: dict[str, tuple[Any, float]] = field(default_factory=dict)
    """Canonical field -> (value, when received): replayed when TeslaMate is trusted again."""
    database_problem: str | None = None
    database_newest: float | None = None
    """When TeslaMate's newest database row about this car was written (last check)."""

    @property
    def activity(self) -> Activity:
        return STATE_ACTIVITY.get(self.state or "", Activity.UNKNOWN)


Update = tuple[str, Any]


def interpret(view: TeslaMateCarView, key: str, text: str) -> list[Update]:
    """The canonical field updates one message means; updates ``view`` (state, doors, ...).

    Raises :class:`BadPayload` for a payload that does not fit its key.
    """
    if key == "sun_roof_state" and text.strip().lower() == "unknown":
        # What Tesla says of a car without a sunroof: nothing to show.
        return []
    mapped = SIMPLE.get(key)
    if mapped is not None:
        name, convert = mapped
        value = convert(text)
        updates: list[Update] = [(name, value)]
        if key == "shift_state" and value in (None, "p"):
            # TeslaMate does not publish a nil speed, so the last driving speed stays
            # retained; once parked, the speed is unknown rather than that.
            updates.append(("speed_mph", None))
        return updates
    if key == "speed":
        speed = _kmh_to_mph(text)
        if view.state is not None and view.state != "driving":
            speed = None
        return [("speed_mph", speed)]
    if key == "state":
        state = text.strip().lower()
        view.state = state or None
        updates = []
        online = _ONLINE_STATES.get(state)
        if online is not None:
            updates.append(("online", online))
        if state and state != "driving":
            updates.append(("speed_mph", None))
        return updates
    if key == "since":
        view.since = text or None
        return []
    if key == "healthy":
        view.healthy = _boolean(text)
        return []
    if key == "location":
        location = _location(text)
        view.location_topic_seen = True
        return [("location", location)] if location is not None else []
    if key in ("latitude", "longitude"):
        if key == "latitude":
            view.latitude = _coordinate(text, 90)
        else:
            view.longitude = _coordinate(text, 180)
        if view.location_topic_seen or view.latitude is None or view.longitude is None:
            return []
        return [("location", (view.latitude, view.longitude))]
    if key in DOOR_KEYS:
        is_open = _boolean(text)
        door = DOOR_KEYS[key]
        if is_open is None:
            view.doors.pop(door, None)
        else:
            view.doors[door] = is_open
        return [("doors", dict(view.doors))]
    if key == "active_route":
        view.route_topic_seen = True
        return _active_route(text)
    if key in _ROUTE_KEYS:
        return _split_route(view, key, text)
    return []


def _split_route(view: TeslaMateCarView, key: str, text: str) -> list[Update]:
    """TeslaMate's deprecated one-value route topics.

    TeslaMate publishes them beside ``active_route`` (both since 1.29), which carries
    more (distance, time, energy, traffic delay); they are read until an
    ``active_route`` arrives, then ignored.
    """
    value = None if text in ("", _NIL) else text
    if view.route_topic_seen:
        return []
    if key == "active_route_destination":
        return [("destination_name", _text(value or ""))]
    if key == "active_route_latitude":
        view.route_latitude = None if value is None else _coordinate(value, 90)
    else:
        view.route_longitude = None if value is None else _coordinate(value, 180)
    if view.route_latitude is None or view.route_longitude is None:
        return [("destination_location", None)]
    return [("destination_location", (view.route_latitude, view.route_longitude))]


# ---------------------------------------------------------------- the source

Offer = Callable[[str, str, list[tuple[str, Any, float]]], None]
"""(source, VIN, [(field, value, observed_at)]) -> arbitrated into the state."""


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages = Counter(
            "gridmate_vehicles_teslamate_messages",
            "TeslaMate MQTT messages, by what became of them.",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("applied", "unknown_car", "other_key", "bad_payload", "other_namespace"):
            self.messages.labels(outcome)


def _tls_context(settings: Any) -> ssl.SSLContext | None:
    if not settings.tls:
        return None
    return ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)


class TeslaMateSource:
    """Subscribes to one TeslaMate instance and offers what it says to the arbitration.

    ``facts(vin)`` gives the arbitration's record for a VIN; ``offer`` applies
    updates; ``on_facts_changed`` is called (with VINs) when something changed that
    may change a verdict (health, link, state), so it is judged at once.
    """

    def __init__(
        self,
        settings: TeslaMateSourceSettings,
        *,
        offer: Offer,
        facts: Callable[[str], SourceFacts],
        clock: Clock,
        registry: CollectorRegistry,
        database: TeslaMateDatabase | None = None,
        on_facts_changed: Callable[[Iterable[str]], None] | None = None,
    ) -> None:
        self.settings = settings
        self._offer = offer
        self._facts = facts
        self.clock = clock
        self.database = database
        self._on_facts_changed = on_facts_changed or (lambda _vins: None)
        self.metrics = _Metrics(registry)
        registry.register(TeslaMateHealthCollector(self))
        self.cars: dict[int, TeslaMateCarView] = {}
        self.car_map = CarMap(dict(settings.cars), {})
        self._pending: dict[int, dict[str, tuple[str, float, bool]]] = {}
        self.connected = asyncio.Event()
        self.last_error: str | None = None
        self.database_error: str | None = None
        self._session_started: float | None = None
        self._broker_problem: str | None = "not connected to TeslaMate's MQTT broker yet"
        self._web_problem: str | None = None
        self._web_failures = 0
        self._map_wanted = asyncio.Event()
        self._stop = asyncio.Event()
        self._warned_unmapped: set[int] = set()

    # ------------------------------------------------------------ running

    @property
    def session_started(self) -> float | None:
        """When the current (or last) subscription to TeslaMate's broker began."""
        return self._session_started

    @property
    def peer(self) -> str:
        return f"TeslaMate's MQTT broker {self.settings.mqtt.host}:{self.settings.mqtt.port}"

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        tasks = []
        if self.database is not None:
            await self.refresh_car_map()
            tasks.append(asyncio.create_task(self._database_loop(stop), name="teslamate.db"))
        if self.settings.web_url is not None:
            tasks.append(asyncio.create_task(self._web_loop(stop), name="teslamate.web"))
        try:
            await reconnecting(
                self._session,
                peer=self.peer,
                stop=stop,
                retry_on=(aiomqtt.MqttError, OSError, TimeoutError),
                on_failure=self._failed,
                probe=lambda: tcp_answers(self.settings.mqtt.host, self.settings.mqtt.port),
            )
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self.database is not None:
                await self.database.close()

    def _failed(self, error: BaseException) -> None:
        self.last_error = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        self._set_broker_problem(f"lost the connection to {self.peer} ({self.last_error})")

    def _set_broker_problem(self, problem: str | None) -> None:
        self._broker_problem = problem
        self._refresh_all_facts()

    def _refresh_all_facts(self) -> None:
        vins = []
        for car_id, view in self.cars.items():
            vin = self.car_map.vin(car_id)
            if vin is not None:
                self._update_facts(vin, view)
                vins.append(vin)
        self._on_facts_changed(vins)

    def _client(self) -> aiomqtt.Client:
        mqtt = self.settings.mqtt
        identifier = (
            mqtt.client_id or f"gridmate-teslamate-{socket.gethostname()[:20]}-{os.getpid()}"
        )
        return aiomqtt.Client(
            mqtt.host,
            mqtt.port,
            username=mqtt.username,
            password=mqtt.password.reveal() if mqtt.password else None,
            identifier=identifier,
            keepalive=mqtt.keepalive,
            tls_context=_tls_context(mqtt),
            timeout=10.0,
        )

    async def _session(self, backoff: Backoff) -> None:
        listener = asyncio.create_task(self._listen(backoff))
        stopping = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({listener, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if listener.done():
                listener.result()  # raises what ended the session
        finally:
            for task in (listener, stopping):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await task

    async def _listen(self, backoff: Backoff) -> None:
        async with self._client() as client:
            # Retained values arrive right after the subscription: they are TeslaMate's
            # current knowledge, but not proof that it is alive now.
            self._session_started = self.clock.now().timestamp()
            await client.subscribe(subscription(self.settings.namespace), qos=1)
            self.connected.set()
            self.last_error = None
            backoff.reset()
            log.info(
                "subscribed to TeslaMate",
                broker=f"{self.settings.mqtt.host}:{self.settings.mqtt.port}",
                topics=subscription(self.settings.namespace),
            )
            self._set_broker_problem(None)
            try:
                async for message in client.messages:
                    payload = message.payload
                    if isinstance(payload, bytes | bytearray):
                        raw = bytes(payload)
                    elif payload is None:
                        raw = b""
                    else:
                        raw = str(payload).encode()
                    self.handle(str(message.topic), raw, retained=bool(message.retain))
                raise aiomqtt.MqttError("the message stream ended")
            finally:
                self.connected.clear()

    # ------------------------------------------------------------ messages

    def handle(self, topic: str, payload: bytes, *, retained: bool = False) -> None:
        """Apply one MQTT message. Never raises: bad input is logged and skipped."""
        try:
            self._handle(topic, payload, retained)
        except Exception as error:  # one odd message must never end the subscription
            self.metrics.messages.labels("bad_payload").inc()
            log.warning(
                "TeslaMate message could not be applied",
                topic=topic,
                error=f"{type(error).__name__}: {error}",
            )

    def _handle(self, topic: str, payload: bytes, retained: bool) -> None:
        info = parse_topic(topic)
        if info is None:
            self.metrics.messages.labels("other_key").inc()
            return
        if info.namespace != self.settings.namespace:
            self.metrics.messages.labels("other_namespace").inc()
            return
        if info.key not in HANDLED_KEYS:
            self.metrics.messages.labels("other_key").inc()
            return
        try:
            text = payload.decode("utf-8").strip()
        except UnicodeDecodeError:
            self.metrics.messages.labels("bad_payload").inc()
            log.warning("TeslaMate payload is not UTF-8; skipped", topic=topic)
            return
        now = self.clock.now().timestamp()
        vin = self.car_map.vin(info.car_id)
        if vin is None:
            self._pending.setdefault(info.car_id, {})[info.key] = (text, now, retained)
            self.metrics.messages.labels("unknown_car").inc()
            if info.car_id not in self._warned_unmapped:
                self._warned_unmapped.add(info.car_id)
                log.info("TeslaMate car has no VIN yet; its data is kept", car_id=info.car_id)
            self._map_wanted.set()
            return
        self._apply(vin, info.car_id, info.key, text, now, retained)

    def _apply(
        self, vin: str, car_id: int, key: str, text: str, received: float, retained: bool
    ) -> None:
        view = self.cars.get(car_id)
        if view is None:
            view = self.cars[car_id] = TeslaMateCarView(car_id)
        before = (view.state, view.healthy)
        try:
            updates = interpret(view, key, text)
        except BadPayload as error:
            self.metrics.messages.labels("bad_payload").inc()
            log.warning(
                "TeslaMate value skipped", car_id=car_id, key=key, reason=str(error), vin=vin
            )
            return
        self.metrics.messages.labels("applied").inc()
        view.last_message = received
        if not retained:
            view.last_live = received
            if view.database_problem is not None:
                view.database_problem = None
        for name, value in updates:
            view.values[name] = (value, received)
        self._update_facts(vin, view)
        if (view.state, view.healthy) != before:
            self._on_facts_changed([vin])
        if updates:
            self._offer(SOURCE, vin, [(name, value, received) for name, value in updates])

    def _update_facts(self, vin: str, view: TeslaMateCarView) -> None:
        facts = self._facts(vin)
        heard = view.last_live
        if self._session_started is not None and view.last_message is not None:
            # Retained messages count as heard at the start of the session.
            heard = max(heard or 0.0, self._session_started)
        facts.last_heard = heard
        facts.activity = view.activity
        facts.activity_at = heard
        facts.healthy = view.healthy
        facts.link_problem = self._broker_problem or self._web_problem or view.database_problem

    def model_of(self, vin: str) -> str | None:
        """The car's model in TeslaMate's cars table ("Model 3 P74D"), if known."""
        for car_id, mapped in self.car_map.vins.items():
            if mapped == vin and car_id in self.car_map.models:
                model, trim = self.car_map.models[car_id]
                parts = [p for p in (_model(model or ""), _text(trim or "")) if p]
                return " ".join(parts) or None
        return None

    def name_of(self, vin: str) -> str | None:
        """The car's name in TeslaMate's cars table, if known."""
        for car_id, mapped in self.car_map.vins.items():
            if mapped == vin:
                return self.car_map.names.get(car_id)
        return None

    def replay(self, vin: str) -> None:
        """Offer everything TeslaMate said about ``vin`` again (it is trusted again)."""
        for car_id, view in self.cars.items():
            if self.car_map.vin(car_id) == vin and view.values:
                self._offer(
                    SOURCE, vin, [(name, value, at) for name, (value, at) in view.values.items()]
                )

    # ------------------------------------------------------------ database

    async def refresh_car_map(self) -> None:
        if self.database is None:
            return
        try:
            cars = await self.database.cars()
        except TeslaMateDatabaseError as error:
            if self.database_error != str(error):
                log.warning("cannot read TeslaMate's cars", error=str(error))
            self.database_error = str(error)
            return
        self.database_error = None
        new_map = build_car_map(self.settings.cars, cars)
        for car_id in new_map.unmapped:
            if car_id not in self.car_map.unmapped:
                log.warning(
                    "TeslaMate has no VIN for a car; add it to teslamate.cars",
                    car_id=car_id,
                    name=new_map.names.get(car_id, ""),
                    example=f'teslamate.cars = {{ {car_id} = "<VIN>" }}',
                )
        if new_map.vins != self.car_map.vins:
            log.info(
                "TeslaMate cars mapped",
                cars=", ".join(f"{i}={v}" for i, v in sorted(new_map.vins.items())),
            )
        self.use_car_map(new_map)

    def use_car_map(self, car_map: CarMap) -> None:
        """Map car ids with ``car_map`` from now on; apply what waited for a VIN."""
        self.car_map = car_map
        for car_id in list(self._pending):
            vin = self.car_map.vin(car_id)
            if vin is None:
                continue
            messages = self._pending.pop(car_id)
            # State first, so the speed and similar keys are read against it.
            for key in sorted(messages, key=lambda k: k != "state"):
                text, received, retained = messages[key]
                self._apply(vin, car_id, key, text, received, retained)

    async def _database_loop(self, stop: asyncio.Event) -> None:
        assert self.database is not None
        next_map = self.clock.now().timestamp() + self.settings.cars_refresh_interval
        while not stop.is_set():
            sleep = asyncio.create_task(self.clock.sleep(self.settings.database_check_interval))
            wanted = asyncio.create_task(self._map_wanted.wait())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({sleep, wanted, stopping}, return_when=asyncio.FIRST_COMPLETED)
            for task in (sleep, wanted, stopping):
                task.cancel()
            if stop.is_set():
                return
            now = self.clock.now().timestamp()
            if self._map_wanted.is_set() or now >= next_map:
                self._map_wanted.clear()
                await self.refresh_car_map()
                next_map = now + self.settings.cars_refresh_interval
                if self._pending:
                    # Do not hammer the database for a car TeslaMate has no VIN for.
                    await sleep_unless_stopped(1.0, stop)
            await self.check_database()

    async def check_database(self) -> None:
        """Compare TeslaMate's newest rows per car with what MQTT delivered."""
        if self.database is None:
            return
        try:
            activity = await self.database.latest_activity()
        except TeslaMateDatabaseError as error:
            if self.database_error != str(error):
                log.warning("cannot check TeslaMate's database", error=str(error))
            self.database_error = str(error)
            return
        self.database_error = None
        changed = []
        for car_id, rows in activity.items():
            vin = self.car_map.vin(car_id)
            view = self.cars.get(car_id)
            if vin is None:
                continue
            if view is None:
                view = self.cars[car_id] = TeslaMateCarView(car_id)
            view.database_newest = rows.newest
            problem = database_lag_problem(
                rows.newest,
                last_live=view.last_live,
                session_started=self._session_started,
                tolerance=self.settings.database_lag_tolerance,
            )
            if problem != view.database_problem:
                view.database_problem = problem
                if problem:
                    log.warning(
                        "TeslaMate's MQTT output is behind its database", vin=vin, detail=problem
                    )
                self._update_facts(vin, view)
                changed.append(vin)
        if changed:
            self._on_facts_changed(changed)

    # ------------------------------------------------------------ liveness

    async def _web_loop(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=_WEB_TIMEOUT, follow_redirects=False) as client:
            while not stop.is_set():
                await self.check_web(client)
                if await sleep_or_wake(self.clock, self.settings.web_check_interval, stop):
                    return

    async def check_web(self, client: httpx.AsyncClient) -> None:
        """Ask TeslaMate's web interface whether TeslaMate runs.

        TeslaMate has no last will and publishes nothing while its cars sleep; without
        this, its death goes unnoticed until a car drives and nobody reports it. Any
        answer below 500 is a running TeslaMate; two failed checks in a row are a dead
        one, and its cars go to the other sources until it answers again.
        """
        url = self.settings.web_url
        assert url is not None
        try:
            response = await client.get(url)
            error = f"HTTP {response.status_code}" if response.status_code >= 500 else None
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        if error is None:
            self._web_failures = 0
            if self._web_problem is not None:
                log.info("TeslaMate answers again", url=url)
                self._web_problem = None
                self._refresh_all_facts()
            return
        self._web_failures += 1
        if self._web_failures >= _WEB_FAILURES and self._web_problem is None:
            self._web_problem = f"TeslaMate does not answer at {url} ({error})"
            log.warning("TeslaMate does not answer; its data is not trusted", url=url, error=error)
            self._refresh_all_facts()

    def health(self) -> str | None:
        if not self.connected.is_set():
            return f"not connected to {self.peer} ({self.last_error or 'connecting'})"
        if self._web_problem:
            return self._web_problem
        if self.database_error:
            return self.database_error
        return None


def database_lag_problem(
    newest_in_database: float | None,
    *,
    last_live: float | None,
    session_started: float | None,
    tolerance: float,
) -> str | None:
    """Why MQTT is behind TeslaMate's database for one car, or None.

    TeslaMate writes a position, state change or charge sample and publishes the
    changed values in the same poll. A row newer than the last live message (or than
    the start of our subscription, whose retained snapshot covers older rows) by more
    than ``tolerance`` seconds means those messages never arrived: TeslaMate's MQTT
    session or the broker is gone although TeslaMate still polls the car.
    """
    if newest_in_database is None:
        return None
    baseline = max(t for t in (last_live, session_started, 0.0) if t is not None)
    if newest_in_database - baseline <= tolerance:
        return None
    stamp = datetime.fromtimestamp(newest_in_database, UTC).strftime("%H:%M:%S UTC")
    return (
        f"TeslaMate's database has data from {stamp} that never arrived over MQTT "
        "(TeslaMate's MQTT connection or the broker is down)"
    )
