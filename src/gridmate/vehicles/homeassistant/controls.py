"""Car controls from Home Assistant (``controls.enable``).

Announced only when a command path is configured (Fleet API tokens and Tesla's
vehicle-command proxy). Per car:

* "Charging control", a switch: ``charge_start``/``charge_stop``;
* "Charge limit control", a number in %: ``set_charge_limit`` with
  ``{"percent": N}``, within the bounds the car reports (``charge_limit_soc_min``/
  ``_max``), else Tesla's 50-100;
* "Charging current control", a number in A: ``set_charging_amps`` with
  ``{"charging_amps": N}``, from 1 A up to the maximum the car reports
  (``charge_current_request_max``). It is announced once a source reported that
  maximum; gridmate does not guess a car's or a charger's limit;
* "Climate control", a switch (only with ``controls.climate``):
  ``auto_conditioning_start``/``auto_conditioning_stop``.

Home Assistant publishes on ``<base>/<VIN>/set/<control>``. Every command is
validated (a refused value is logged and shown, and the car's state is published
again, so Home Assistant's entity snaps back to the value in effect), goes through
the one Fleet API command path within the per-vehicle daily request budget (a
command past it is refused and says so), and never wakes a sleeping car unless that
car is in ``controls.wake_vins`` (a wake is the most expensive Fleet API call). The
result is visible: each entity shows the car's value from its next data, and a
refused or failed command is logged and shown in the car's "Last command error"
entity (cleared by the next command that succeeds).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from gridmate.homeassistant.commands import CommandRejected, number, parse_command, switch
from gridmate.runtime.clock import Clock
from gridmate.runtime.logs import get_logger
from gridmate.tesla.fleet_api import CHARGE_LIMIT_RANGE, FleetApi, FleetApiError
from gridmate.vehicles.state import GRIDMATE_SOURCE, Applied, StateStore, VehicleState

log = get_logger("vehicles.controls")

COMMAND_ERROR_FIELD = "command_error"
WAKE_WAIT_SECONDS = 90.0
WAKE_CHECK_SECONDS = 5.0
AWAKE_AFTER_WAKE = timedelta(minutes=5)
"""A car gridmate woke counts as awake this long, so the next command does not wake
it again before a source reports it online (a car stays awake for about 15 minutes
after activity)."""


@dataclass(frozen=True)
class CarControl:
    """One control Home Assistant shows per car, and the Fleet API command it sends."""

    key: str
    """The command topic's last level and the entity's id suffix."""
    platform: Literal["switch", "number"]
    name: str
    state_key: str
    """The value in the car's state document the entity shows."""
    icon: str
    commands: tuple[str, ...]
    """A switch: (on, off); a number: (command,)."""
    parameter: str | None = None
    """A number: the body's key for the value (``{"percent": 80}``)."""
    device_class: str | None = None
    unit: str | None = None

    def request(self, value: bool | float) -> tuple[str, dict[str, int] | None]:
        """The command's name and body for a validated value."""
        if self.platform == "switch":
            return self.commands[0] if value else self.commands[1], None
        assert self.parameter is not None
        return self.commands[0], {self.parameter: int(value)}


CHARGING = CarControl(
    "charging", "switch", "Charging control", "charging", "mdi:ev-station",
    ("charge_start", "charge_stop"),
)  # fmt: skip
CHARGE_LIMIT = CarControl(
    "charge_limit", "number", "Charge limit control", "charge_limit_soc",
    "mdi:battery-charging-80", ("set_charge_limit",), "percent", "battery", "%",
)  # fmt: skip
CHARGING_AMPS = CarControl(
    "charging_amps", "number", "Charging current control", "charge_current_request_a",
    "mdi:current-ac", ("set_charging_amps",), "charging_amps", "current", "A",
)  # fmt: skip
CLIMATE = CarControl(
    "climate", "switch", "Climate control", "climate_on", "mdi:fan",
    ("auto_conditioning_start", "auto_conditioning_stop"),
)  # fmt: skip

CONTROLS: dict[str, CarControl] = {
    c.key: c for c in (CHARGING, CHARGE_LIMIT, CHARGING_AMPS, CLIMATE)
}
CHARGING_CONTROLS: tuple[str, ...] = (CHARGING.key, CHARGE_LIMIT.key, CHARGING_AMPS.key)
"""The controls every car gets with ``controls.enable``; climate is opt-in."""


def enabled_controls(*, climate: bool) -> tuple[str, ...]:
    return (*CHARGING_CONTROLS, CLIMATE.key) if climate else CHARGING_CONTROLS


def _number(state: VehicleState, key: str) -> float | None:
    value = state.value(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def accepted_range(control: CarControl, state: VehicleState) -> tuple[int, int] | str:
    """The values the car takes now, or why no value can be sent."""
    if control is CHARGE_LIMIT:
        low = _number(state, "charge_limit_soc_min")
        high = _number(state, "charge_limit_soc_max")
        lowest, highest = CHARGE_LIMIT_RANGE
        return (
            max(lowest, int(low) if low is not None else lowest),
            min(highest, int(high) if high is not None else highest),
        )
    if control is CHARGING_AMPS:
        maximum = _number(state, "charge_current_request_max_a")
        if maximum is None:
            return (
                "the car has not reported its maximum charging current yet "
                "(charge_current_request_max); gridmate does not guess it"
            )
        if maximum < 1:
            return f"the car reports a maximum charging current of {maximum:g} A"
        return (1, int(maximum))
    raise ValueError(f"{control.key} is not a number")


def slider_range(control: CarControl, state: VehicleState) -> tuple[int, int] | None:
    """A number entity's min and max for Home Assistant, or None while it is not announced.

    The car's accepted range, widened to take in the value it reports now:
    Home Assistant drops (and logs as an error) a state outside an entity's range.
    A value in the widened part is refused when sent, saying why.
    """
    if control is CHARGING_AMPS and _number(state, "charge_current_request_max_a") is None:
        return None
    accepted = accepted_range(control, state)
    low, high = (0, 0) if isinstance(accepted, str) else accepted
    current = _number(state, control.state_key)
    if current is not None:
        low, high = min(low, math.floor(current)), max(high, math.ceil(current))
    return (min(low, high), high)


CONTROL_INPUTS: tuple[str, ...] = (
    "charge_limit_soc_min",
    "charge_limit_soc_max",
    "charge_current_request_max_a",
)
"""Fields that change which controls a car has or their ranges (its discovery)."""


def command_topic(base: str, vin: str, key: str) -> str:
    return f"{base}/{vin}/set/{key}"


def command_filter(base: str) -> str:
    return f"{base}/+/set/+"


def parse_command_topic(base: str, topic: str) -> tuple[str, str] | None:
    """(VIN, command) of a command topic, or None."""
    prefix = f"{base}/"
    if not topic.startswith(prefix):
        return None
    parts = topic[len(prefix) :].split("/")
    if len(parts) != 3 or parts[1] != "set" or not parts[0]:
        return None
    return parts[0], parts[2]


class VehicleControls:
    def __init__(
        self,
        fleet: FleetApi,
        store: StateStore,
        base: str,
        *,
        clock: Clock,
        on_change: Callable[[Applied], None],
        wake_vins: Collection[str] = (),
        enabled: Collection[str] = CHARGING_CONTROLS,
        after_command: Callable[[str], None] | None = None,
    ) -> None:
        self.fleet = fleet
        self.store = store
        self.base = base
        self.clock = clock
        self.on_change = on_change
        self.wake_vins = frozenset(wake_vins)
        self.enabled = frozenset(enabled)
        self.after_command = after_command
        """Called with the VIN of a car that carried a command out, so that the source
        serving it reads it again soon (polling, whose next read may be minutes away)."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._woken: dict[str, datetime] = {}

    def handle(self, topic: str, payload: bytes) -> None:
        """A command from Home Assistant (the link delivers only live ones)."""
        parsed = parse_command_topic(self.base, topic)
        if parsed is None:
            return
        vin, key = parsed
        control = CONTROLS.get(key)
        if control is None:
            log.warning("unknown car command ignored", vin=vin, command=key[:40])
            return
        if key not in self.enabled:
            self._refused(vin, f"{control.name} is not enabled (controls.{key} is off)")
            return
        state = self.store.get(vin)
        if state is None:
            log.warning("car command for an unknown car ignored", vin=vin[:40], command=key)
            return
        try:
            value = self.validate(control, state, payload)
        except CommandRejected as error:
            self._refused(vin, str(error))
            return
        task = asyncio.create_task(
            self.command(vin, key, value), name=f"vehicles.command.{key}.{vin}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    def validate(control: CarControl, state: VehicleState, payload: bytes) -> bool | float:
        """The commanded value, or :class:`CommandRejected` saying why not."""
        if control.platform == "switch":
            return bool(parse_command(switch(control.key), payload))
        accepted = accepted_range(control, state)
        if isinstance(accepted, str):
            raise CommandRejected(f"{control.key}: {accepted}")
        value = parse_command(number(control.key, *accepted), payload)
        assert isinstance(value, float)
        return value

    async def command(self, vin: str, key: str, value: bool | float) -> bool:
        """Send one control's command to the car; True when the car reports it done."""
        control = CONTROLS[key]
        # One command per car at a time: a second command to a sleeping car waits for
        # the first one's wake instead of waking the car again.
        async with self._locks.setdefault(vin, asyncio.Lock()):
            state = self.store.get(vin)
            if state is None:
                self._refused(vin, "unknown car")
                return False
            if not self._awake(vin, state) and not await self._wake_if_allowed(vin):
                return False
            name, parameters = control.request(value)
            try:
                result = await self.fleet.vehicle_command(vin, name, parameters)
            except FleetApiError as error:
                self._refused(vin, f"{name}: {error}")
                return False
            if not result.achieved:
                self._refused(
                    vin, f"{name}: the car refused ({result.reason or 'no reason given'})"
                )
                return False
            log.info("car command done", vin=vin, command=name, parameters=parameters)
            self._note(vin, None)
            if self.after_command is not None:
                self.after_command(vin)
            return True

    def _awake(self, vin: str, state: VehicleState) -> bool:
        if state.value("online") is True:
            return True
        woken = self._woken.get(vin)
        return woken is not None and self.clock.now() - woken < AWAKE_AFTER_WAKE

    async def _wake_if_allowed(self, vin: str) -> bool:
        if vin not in self.wake_vins:
            self._refused(
                vin,
                "the car is asleep or offline; gridmate does not wake it for a command "
                "(add it to controls.wake_vins to allow that)",
            )
            return False
        left = self.fleet.vehicle_requests_left(vin)
        if left is not None and left < 2:
            self._refused(
                vin,
                f"the car is asleep and the daily request budget has {left} left: "
                "a wake and the command need 2 (tesla.daily_vehicle_budget)",
            )
            return False
        return await self._wake(vin)

    async def _wake(self, vin: str) -> bool:
        try:
            await self.fleet.wake_up(vin)
            waited = 0.0
            while waited < WAKE_WAIT_SECONDS:
                listing = {car.vin: car for car in await self.fleet.vehicles()}
                car = listing.get(vin)
                if car is not None and car.online:
                    self._woken[vin] = self.clock.now()
                    return True
                await self.clock.sleep(WAKE_CHECK_SECONDS)
                waited += WAKE_CHECK_SECONDS
        except FleetApiError as error:
            self._refused(vin, f"wake_up: {error}")
            return False
        self._refused(vin, f"the car did not come online within {WAKE_WAIT_SECONDS:.0f} s")
        return False

    def _refused(self, vin: str, reason: str) -> None:
        log.warning("car command refused", vin=vin, reason=reason)
        self._note(vin, reason, republish=True)

    def _note(self, vin: str, error: str | None, *, republish: bool = False) -> None:
        """Show ``error`` (None: the last command succeeded) in "Last command error".

        ``republish`` publishes the car's state even when the error text is the same
        as before: Home Assistant's entity then shows the value in effect again
        instead of the one just refused.
        """
        state = self.store.get(vin)
        if state is None:
            return
        unchanged = (
            COMMAND_ERROR_FIELD in state.fields and state.value(COMMAND_ERROR_FIELD) == error
        )
        if unchanged and not republish:
            return
        now = self.clock.now().timestamp()
        self.store.update(vin, COMMAND_ERROR_FIELD, error, now, GRIDMATE_SOURCE)
        self.on_change(Applied(vin, [COMMAND_ERROR_FIELD]))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
