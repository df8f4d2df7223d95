"""Tesla Fleet API polling: the fallback source, used as little as possible.

* A car is polled only while no fresher source covers it (the arbitration selected
  ``tesla_api`` for it).
* A car is never woken: the vehicle list, which does not wake cars, says whether it
  is online, and ``vehicle_data`` is asked only of online cars. A car that fell asleep
  in between answers 408 and stays asleep.
* Every poll counts against the per-vehicle daily budget of the Fleet API client;
  polls are spread so the remaining budget lasts until the end of the (UTC) day
  (:func:`poll_delay`). A 429 blocks polling for as long as Tesla says.

Values come in the Fleet API's units (miles, mph, kW, hours, °C, bar), the catalogue's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from gridmate.runtime.clock import Clock, sleep_or_wake
from gridmate.runtime.logs import get_logger
from gridmate.tesla.fleet_api import (
    ApiUnreachable,
    BudgetExhausted,
    FleetApi,
    FleetApiError,
    Forbidden,
    RateLimited,
    ServerError,
    Unauthorized,
    VehicleListing,
    VehicleUnavailable,
)
from gridmate.tesla.tokens import TokenUnavailable
from gridmate.vehicles.arbitration import TESLA_API, Activity, SourceFacts
from gridmate.vehicles.catalogue import CHARGING_STATES, MAX_STATE_LENGTH

log = get_logger("vehicles.polling")

SOURCE = TESLA_API
ENDPOINTS: tuple[str, ...] = (
    "charge_state",
    "climate_state",
    "drive_state",
    "location_data",
    "vehicle_state",
    "vehicle_config",
)
"""``location_data`` is needed for GPS on current firmware; none of these wakes the car."""


# ---------------------------------------------------------------- decisions


def poll_delay(
    activity: Activity,
    *,
    used: int,
    budget: int | None,
    seconds_left_today: float,
    active_interval: float,
    idle_interval: float,
    asleep_interval: float,
) -> float:
    """Seconds until the next poll of one car.

    The interval for the car's activity, stretched so that the remaining daily
    budget (``budget - used``, after the poll just made) lasts until midnight UTC,
    when Tesla's per-day counts restart.
    """
    base = {
        Activity.ACTIVE: active_interval,
        Activity.IDLE: idle_interval,
        Activity.SLEEPING: asleep_interval,
    }.get(activity, idle_interval)
    if budget is None:
        return base
    remaining = budget - used
    if remaining <= 0:
        return max(base, seconds_left_today)
    # The remaining polls evenly spaced before midnight (the last one not at midnight).
    return max(base, seconds_left_today / (remaining + 1))


def listing_activity(listing: VehicleListing) -> Activity:
    return Activity.IDLE if listing.online else Activity.SLEEPING


# ---------------------------------------------------------------- vehicle_data mapping


def _num(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _label(value: Any) -> str | None:
    if not isinstance(value, str) or not value or value.startswith("<"):
        return None  # Tesla says "<invalid>" for no cable
    return value[:MAX_STATE_LENGTH]


def _charging_state(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    option = "".join(f"_{c.lower()}" if c.isupper() else c for c in value).lstrip("_")
    return option if option in CHARGING_STATES else None


_CAR_TYPES = {
    "models": "Model S",
    "models2": "Model S",
    "modelx": "Model X",
    "model3": "Model 3",
    "modely": "Model Y",
    "cybertruck": "Cybertruck",
}


Put = Callable[[str, Any], None]

_UPDATE_PENDING = frozenset(
    {"available", "downloading", "downloading_wifi_wait", "scheduled", "installing"}
)
"""``software_update.status`` values that mean an update is there (TeslaMate's rule)."""


def _windows(vehicle: Mapping[str, Any], put: Put) -> None:
    # fd/fp/rd/rp_window: 0 closed, more is (partly) open.
    known = []
    for code, name in (
        ("fd_window", "driver_front"),
        ("rd_window", "driver_rear"),
        ("fp_window", "passenger_front"),
        ("rp_window", "passenger_rear"),
    ):
        position = _num(vehicle.get(code))
        if position is not None:
            put(f"window_{name}_open", position > 0)
            known.append(position > 0)
    if len(known) == 4:
        put("windows_open", any(known))


def _software_update(update: Any, put: Put) -> None:
    if not isinstance(update, Mapping) or not isinstance(update.get("status"), str):
        return
    pending = update["status"] in _UPDATE_PENDING
    put("update_available", pending)
    version = update.get("version")
    version = version.strip().split(" ", 1)[0] if isinstance(version, str) else ""
    put("update_version", version[:MAX_STATE_LENGTH] or None)
    for source_key, key in (
        ("download_perc", "update_download_percent"),
        ("install_perc", "update_install_percent"),
    ):
        if source_key in update:
            put(key, _num(update[source_key]))


def _route(drive: Mapping[str, Any], put: Put) -> None:
    # Without a route the car leaves the active_route_* keys out (TeslaMate's "nil").
    destination = _label(drive.get("active_route_destination"))
    put("destination_name", destination)
    routed = destination is not None
    for source_key, key in (
        ("active_route_minutes_to_arrival", "minutes_to_arrival"),
        ("active_route_miles_to_arrival", "miles_to_arrival"),
        ("active_route_energy_at_arrival", "energy_at_arrival"),
        ("active_route_traffic_minutes_delay", "traffic_delay_minutes"),
    ):
        put(key, _num(drive.get(source_key)) if routed else None)
    latitude = _num(drive.get("active_route_latitude"))
    longitude = _num(drive.get("active_route_longitude"))
    if routed and latitude is not None and longitude is not None:
        put("destination_location", (float(latitude), float(longitude)))
    else:
        put("destination_location", None)


def _timestamp(value: Any) -> str | None:
    """Unix seconds (the Fleet API's times) as ISO 8601 in UTC."""
    seconds = _num(value)
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def map_vehicle_data(
    data: Mapping[str, Any], received: float
) -> tuple[float, list[tuple[str, Any]]]:
    """The canonical fields in one ``vehicle_data`` answer, and when they were observed."""
    charge = data.get("charge_state") or {}
    climate = data.get("climate_state") or {}
    drive = {**(data.get("drive_state") or {}), **(data.get("location_data") or {})}
    vehicle = data.get("vehicle_state") or {}
    config = data.get("vehicle_config") or {}
    stamps = [
        section["timestamp"] / 1000
        for section in (charge, climate, drive, vehicle)
        if isinstance(section.get("timestamp"), int | float)
    ]
    # The car's own time when it gave one, never in the future of our clock.
    observed = min(max(stamps), received) if stamps else received
    out: list[tuple[str, Any]] = []

    def put(key: str, value: Any) -> None:
        out.append((key, value))

    name = vehicle.get("vehicle_name") or data.get("display_name")
    if isinstance(name, str) and name.strip():
        put("vehicle_name", name[:MAX_STATE_LENGTH])
    put("online", True)
    if charge:
        for source_key, key in (
            ("battery_level", "battery_level"),
            ("usable_battery_level", "usable_battery_level"),
            ("charge_limit_soc", "charge_limit_soc"),
            ("charge_limit_soc_min", "charge_limit_soc_min"),
            ("charge_limit_soc_max", "charge_limit_soc_max"),
            ("charger_actual_current", "charger_current_a"),
            ("charger_voltage", "charger_voltage_v"),
            ("charger_phases", "charger_phases"),
            ("charge_current_request", "charge_current_request_a"),
            ("charge_current_request_max", "charge_current_request_max_a"),
            ("time_to_full_charge", "time_to_full_charge_h"),
            ("battery_range", "rated_range_mi"),
            ("est_battery_range", "est_range_mi"),
            ("ideal_battery_range", "ideal_range_mi"),
        ):
            if source_key in charge:
                put(key, _num(charge[source_key]))
        put("charge_state", _charging_state(charge.get("charging_state")))
        fast = _bool(charge.get("fast_charger_present"))
        power = _num(charge.get("charger_power"))
        put("dc_charging_power_kw" if fast else "ac_charging_power_kw", power)
        put("ac_charging_power_kw" if fast else "dc_charging_power_kw", None)
        if "fast_charger_present" in charge:
            put("fast_charger_present", fast)
            put("fast_charger_type", _label(charge.get("fast_charger_type")))
        if "conn_charge_cable" in charge:
            put("charging_cable_type", _label(charge.get("conn_charge_cable")))
        if "charge_port_door_open" in charge:
            put("charge_port_door_open", _bool(charge["charge_port_door_open"]))
        if "charge_energy_added" in charge:
            put("charge_energy_added_kwh", _num(charge["charge_energy_added"]))
        if "scheduled_charging_start_time" in charge:
            put("scheduled_charging_start", _timestamp(charge["scheduled_charging_start_time"]))
    if climate:
        put("inside_temp_c", _num(climate.get("inside_temp")))
        put("outside_temp_c", _num(climate.get("outside_temp")))
        for source_key, key in (
            ("is_climate_on", "climate_on"),
            ("is_preconditioning", "preconditioning"),
        ):
            if source_key in climate:
                put(key, _bool(climate[source_key]))
    if drive:
        latitude, longitude = _num(drive.get("latitude")), _num(drive.get("longitude"))
        if latitude is not None and longitude is not None:
            put("location", (float(latitude), float(longitude)))
        if "heading" in drive:
            put("heading_deg", _num(drive["heading"]))
        shift = drive.get("shift_state")
        shift = shift.lower() if isinstance(shift, str) and shift.lower() in "prnd" else None
        put("shift_state", shift)
        put("speed_mph", _num(drive.get("speed")))
        _route(drive, put)
    if vehicle:
        if "odometer" in vehicle:
            put("odometer_mi", _num(vehicle["odometer"]))
        if "locked" in vehicle:
            put("locked", _bool(vehicle["locked"]))
        sentry = _bool(vehicle.get("sentry_mode"))
        if sentry is not None:
            put("sentry_mode", "armed" if sentry else "off")
        version = vehicle.get("car_version")
        if isinstance(version, str) and version:
            put("software_version", version.split(" ", 1)[0][:MAX_STATE_LENGTH])
        for corner, key in (("fl", "front_left"), ("fr", "front_right")):
            if f"tpms_pressure_{corner}" in vehicle:
                put(f"tpms_{key}_bar", _num(vehicle[f"tpms_pressure_{corner}"]))
        for corner, key in (("rl", "rear_left"), ("rr", "rear_right")):
            if f"tpms_pressure_{corner}" in vehicle:
                put(f"tpms_{key}_bar", _num(vehicle[f"tpms_pressure_{corner}"]))
        doors = {
            door: bool(vehicle[code])
            for code, door in (
                ("df", "driver_front"),
                ("dr", "driver_rear"),
                ("pf", "passenger_front"),
                ("pr", "passenger_rear"),
                ("ft", "trunk_front"),
                ("rt", "trunk_rear"),
            )
            if isinstance(vehicle.get(code), int | bool)
        }
        if doors:
            put("doors", doors)
        _windows(vehicle, put)
        if "is_user_present" in vehicle:
            put("user_present", _bool(vehicle["is_user_present"]))
        for corner, tyre in (
            ("fl", "front_left"),
            ("fr", "front_right"),
            ("rl", "rear_left"),
            ("rr", "rear_right"),
        ):
            if f"tpms_soft_warning_{corner}" in vehicle:
                put(f"tpms_soft_warning_{tyre}", _bool(vehicle[f"tpms_soft_warning_{corner}"]))
        _software_update(vehicle.get("software_update"), put)
        # Cars without a sunroof say null and "unknown": nothing to show.
        sunroof_open = _num(vehicle.get("sun_roof_percent_open"))
        if sunroof_open is not None:
            put("sunroof_percent_open", sunroof_open)
        sunroof_state = _label(vehicle.get("sun_roof_state"))
        if sunroof_state is not None and sunroof_state.lower() != "unknown":
            put("sunroof_state", sunroof_state)
    if config:
        car_type = config.get("car_type")
        if isinstance(car_type, str) and car_type:
            put("car_type", _CAR_TYPES.get(car_type.lower(), car_type[:MAX_STATE_LENGTH]))
        trim = config.get("trim_badging")
        if isinstance(trim, str) and trim:
            put("trim", trim[:MAX_STATE_LENGTH])
        sunroof = _num(config.get("sun_roof_installed"))
        if sunroof is not None:
            put("sunroof_installed", sunroof > 0)  # 0 none, else the sunroof's generation
    return observed, out


def data_activity(fields: Iterable[tuple[str, Any]]) -> Activity:
    values = dict(fields)
    if values.get("charge_state") in ("charging", "starting"):
        return Activity.ACTIVE
    if values.get("shift_state") in ("d", "r") or (values.get("speed_mph") or 0) > 0:
        return Activity.ACTIVE
    return Activity.IDLE


# ---------------------------------------------------------------- the source

Offer = Callable[[str, str, list[tuple[str, Any, float]]], None]


@dataclass
class _Car:
    due: float = 0.0
    activity: Activity = Activity.UNKNOWN
    name: str | None = None
    last_data: list[tuple[str, Any, float]] = field(default_factory=list)
    """The fields of the last poll that returned data, as offered."""


class PollingSource:
    """Polls the Fleet API for the cars the arbitration hands to it.

    ``wanted(vin)`` says whether ``vin`` is currently to be polled; ``known_vins()``
    lists the cars other sources know. ``facts(vin)`` and ``offer`` are the
    arbitration's, as for the other sources.
    """

    def __init__(
        self,
        api: FleetApi,
        *,
        offer: Offer,
        facts: Callable[[str], SourceFacts],
        wanted: Callable[[str], bool],
        known_vins: Callable[[], Iterable[str]],
        clock: Clock,
        registry: CollectorRegistry,
        active_interval: float = 120.0,
        idle_interval: float = 600.0,
        asleep_interval: float = 900.0,
        start_delay: float = 30.0,
        tick: float = 5.0,
        on_facts_changed: Callable[[Iterable[str]], None] | None = None,
    ) -> None:
        self.api = api
        self._offer = offer
        self._facts = facts
        self._wanted = wanted
        self._known_vins = known_vins
        self.clock = clock
        self.active_interval = active_interval
        self.idle_interval = idle_interval
        self.asleep_interval = asleep_interval
        self.start_delay = start_delay
        self.tick = tick
        self._on_facts_changed = on_facts_changed or (lambda _vins: None)
        self.cars: dict[str, _Car] = {}
        self.problem: str | None = None
        self._account_blocked_until = 0.0
        self._listed_once = False
        self.polls = Counter(
            "gridmate_vehicles_polls",
            "Fleet API polls for vehicle data, by outcome.",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("data", "asleep", "fell_asleep", "budget", "rate_limited", "error"):
            self.polls.labels(outcome)

    # ------------------------------------------------------------ loop

    async def run(self, stop: asyncio.Event) -> None:
        if await sleep_or_wake(self.clock, self.start_delay, stop):
            return
        while not stop.is_set():
            try:
                await self.poll_once()
            except Exception as error:  # the loop must survive anything a poll throws
                log.warning("polling failed", error=f"{type(error).__name__}: {error}")
            if await sleep_or_wake(self.clock, self.tick, stop):
                return

    def _due(self, now: float) -> list[str]:
        due = []
        for vin in self._known_vins():
            car = self.cars.setdefault(vin, _Car())
            self._facts(vin)  # from now on the arbitration may hand this car to polling
            if self._wanted(vin) and now >= car.due:
                due.append(vin)
        return due

    async def poll_once(self) -> None:
        """One round: list the account's cars if any is due, then read the online ones."""
        now = self.clock.now().timestamp()
        if now < self._account_blocked_until:
            return
        due = self._due(now)
        # With nothing due, the list is read only once, to find the account's cars
        # when no other source knows any.
        if not due and (self._listed_once or self.cars):
            return
        try:
            listing = await self.api.vehicles()
        except Exception as error:
            self._account_problem(error, now)
            return
        self._listed_once = True
        self._set_problem(None)
        by_vin = {car.vin: car for car in listing}
        new = [vin for vin in by_vin if vin not in self.cars]
        for vin in new:
            self.cars[vin] = _Car(name=by_vin[vin].display_name)
            self._facts(vin)  # the car becomes known to the arbitration
        if new:
            log.info("cars on the Tesla account", vins=", ".join(sorted(by_vin)))
            self._on_facts_changed(new)
            due = self._due(now)
        for vin in due:
            car = by_vin.get(vin)
            if car is None:
                self.cars[vin].due = now + self.asleep_interval
                continue
            await self._poll_car(car)

    async def _poll_car(self, listing: VehicleListing) -> None:
        vin = listing.vin
        car = self.cars[vin]
        facts = self._facts(vin)
        now = self.clock.now().timestamp()
        if not listing.online:
            self.polls.labels("asleep").inc()
            self._offer(SOURCE, vin, [("online", False, now)])
            self._note(vin, car, facts, Activity.SLEEPING, now)
            return
        try:
            data = await self.api.vehicle_data(vin, ENDPOINTS)
        except VehicleUnavailable:
            # Fell asleep between the list and the read; it stays asleep.
            self.polls.labels("fell_asleep").inc()
            self._offer(SOURCE, vin, [("online", False, now)])
            self._note(vin, car, facts, Activity.SLEEPING, now)
            return
        except BudgetExhausted as error:
            self.polls.labels("budget").inc()
            car.due = now + error.retry_after
            self._car_problem(vin, facts, "the daily Tesla API budget for this car is used up")
            return
        except RateLimited as error:
            self.polls.labels("rate_limited").inc()
            car.due = now + max(error.retry_after, self.active_interval)
            self._car_problem(
                vin, facts, f"Tesla's API rate limit; polling again in {error.retry_after:.0f} s"
            )
            return
        except (TokenUnavailable, Unauthorized, Forbidden) as error:
            self._account_problem(error, now)
            return
        except (ApiUnreachable, ServerError, FleetApiError) as error:
            self.polls.labels("error").inc()
            car.due = now + self.active_interval
            log.warning("polling a car failed; will retry", vin=vin, error=str(error))
            facts.last_failed = now
            self._on_facts_changed([vin])
            return
        self.polls.labels("data").inc()
        observed, fields = map_vehicle_data(data, now)
        if facts.link_problem:
            facts.link_problem = None
            self._on_facts_changed([vin])
        car.last_data = [(key, value, observed) for key, value in fields]
        self._offer(SOURCE, vin, car.last_data)
        self._note(vin, car, facts, data_activity(fields), now)

    def _note(
        self, vin: str, car: _Car, facts: SourceFacts, activity: Activity, now: float
    ) -> None:
        first = facts.last_heard is None or facts.last_failed is not None
        facts.last_heard = now
        facts.last_failed = None
        facts.activity = activity
        facts.activity_at = now
        car.activity = activity
        used = next(
            (
                u.used
                for u in self.api.budget_use()
                if u.budget == "vehicle_daily" and u.device == vin
            ),
            0,
        )
        car.due = now + poll_delay(
            activity,
            used=used,
            budget=self.api.daily_vehicle_budget,
            seconds_left_today=_seconds_to_midnight(now),
            active_interval=self.active_interval,
            idle_interval=self.idle_interval,
            asleep_interval=self.asleep_interval,
        )
        if first:
            self._on_facts_changed([vin])  # it delivers now: "Data source" may name it

    def _car_problem(self, vin: str, facts: SourceFacts, problem: str) -> None:
        if facts.link_problem != problem:
            log.warning("Tesla API polling paused for a car", vin=vin, reason=problem)
            facts.link_problem = problem
            self._on_facts_changed([vin])

    def _account_problem(self, error: BaseException, now: float) -> None:
        if isinstance(error, RateLimited):
            self._account_blocked_until = now + error.retry_after
            problem = f"Tesla's API rate limit; trying again in {error.retry_after:.0f} s"
        elif isinstance(error, TokenUnavailable):
            self._account_blocked_until = now + 60
            problem = f"no Tesla API token ({error})"
        elif isinstance(error, Unauthorized | Forbidden):
            self._account_blocked_until = now + 300
            problem = f"Tesla's API refused the token ({error})"
        else:
            self._account_blocked_until = now + 60
            problem = f"Tesla's API is not answering ({type(error).__name__}: {error})"
            log.warning("listing the cars failed; will retry", error=problem)
            return
        self._set_problem(problem)

    def _set_problem(self, problem: str | None) -> None:
        if problem == self.problem:
            return
        self.problem = problem
        if problem:
            log.warning("Tesla API polling is not possible", reason=problem)
        vins = list(self.cars)
        for vin in vins:
            self._facts(vin).link_problem = problem
        self._on_facts_changed(vins)

    def replay(self, vin: str) -> None:
        """Offer the car's last polled data again (the hub rebuilt its state from the
        broker, which may predate that poll), without asking Tesla again."""
        car = self.cars.get(vin)
        if car is not None and car.last_data:
            self._offer(SOURCE, vin, car.last_data)

    def poll_soon(self, vin: str) -> None:
        """Read the car at the next round, if polling serves it (it was just handed to
        polling, or a command from Home Assistant changed it)."""
        self.cars.setdefault(vin, _Car()).due = 0.0

    def health(self) -> str | None:
        return self.problem


def _seconds_to_midnight(now: float) -> float:
    moment = datetime.fromtimestamp(now, UTC)
    midnight = datetime.combine(moment.date() + timedelta(days=1), datetime.min.time(), UTC)
    return (midnight - moment).total_seconds()
