"""Car controls from Home Assistant: the "Charging control" switch (``controls.enable``).

Announced only when a command path is configured (Fleet API tokens and Tesla's
vehicle-command proxy). Home Assistant publishes ``ON``/``OFF`` on
``<base>/<VIN>/set/charging``; gridmate starts or stops charging through the Fleet
API, within the per-vehicle daily request budget (a command past it is refused and
says so), and never wakes a sleeping car unless that car is in
``controls.wake_vins`` (a wake is the most expensive Fleet API call). The result is
visible: the "Charging" state follows from the car's next data, and a refused or
failed command is logged and shown in the car's "Last command error" entity (cleared
by the next command that succeeds).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection
from typing import Any

from gridmate.homeassistant.commands import CommandRejected, parse_command, switch
from gridmate.runtime.clock import Clock
from gridmate.runtime.logs import get_logger
from gridmate.tesla.fleet_api import FleetApi, FleetApiError
from gridmate.vehicles.state import GRIDMATE_SOURCE, Applied, StateStore

log = get_logger("vehicles.controls")

COMMAND_ERROR_FIELD = "command_error"
CHARGING = switch("charging")
WAKE_WAIT_SECONDS = 90.0
WAKE_CHECK_SECONDS = 5.0


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
    ) -> None:
        self.fleet = fleet
        self.store = store
        self.base = base
        self.clock = clock
        self.on_change = on_change
        self.wake_vins = frozenset(wake_vins)
        self._tasks: set[asyncio.Task[Any]] = set()

    def handle(self, topic: str, payload: bytes) -> None:
        """A command from Home Assistant (the link delivers only live ones)."""
        parsed = parse_command_topic(self.base, topic)
        if parsed is None:
            return
        vin, key = parsed
        if key != CHARGING.key:
            log.warning("unknown car command ignored", vin=vin, command=key[:40])
            return
        try:
            wanted = parse_command(CHARGING, payload)
        except CommandRejected as error:
            self._refused(vin, str(error))
            return
        task = asyncio.create_task(self.charge(vin, bool(wanted)), name=f"vehicles.charge.{vin}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def charge(self, vin: str, start: bool) -> bool:
        """Start or stop charging; True when the car reports it done."""
        state = self.store.get(vin)
        if state is None:
            self._refused(vin, "unknown car")
            return False
        if state.value("online") is not True:
            if vin not in self.wake_vins:
                self._refused(
                    vin,
                    "the car is asleep or offline; gridmate does not wake it for a command "
                    "(add it to controls.wake_vins to allow that)",
                )
                return False
            if not await self._wake(vin):
                return False
        name = "charge_start" if start else "charge_stop"
        try:
            result = await (self.fleet.charge_start if start else self.fleet.charge_stop)(vin)
        except FleetApiError as error:
            self._refused(vin, f"{name}: {error}")
            return False
        if not result.achieved:
            self._refused(vin, f"{name}: the car refused ({result.reason or 'no reason given'})")
            return False
        log.info("car command done", vin=vin, command=name)
        self._note(vin, None)
        return True

    async def _wake(self, vin: str) -> bool:
        try:
            await self.fleet.wake_up(vin)
            waited = 0.0
            while waited < WAKE_WAIT_SECONDS:
                listing = {car.vin: car for car in await self.fleet.vehicles()}
                car = listing.get(vin)
                if car is not None and car.online:
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
        self._note(vin, reason)

    def _note(self, vin: str, error: str | None) -> None:
        state = self.store.get(vin)
        if state is None:
            return
        if state.value(COMMAND_ERROR_FIELD) == error and COMMAND_ERROR_FIELD in state.fields:
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
