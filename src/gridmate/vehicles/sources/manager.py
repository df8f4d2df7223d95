"""TeslaMate, Tesla API polling and Fleet Telemetry side by side, one state per VIN.

:class:`SourceManager` owns the arbitration (:mod:`gridmate.vehicles.arbitration`)
and the sources other than Fleet Telemetry (whose records the hub applies itself).
Every few seconds it judges each source for each vehicle, picks the vehicle's data
source, and when that changes it says so in plain words in the log, updates the
``data_source`` field (a diagnostic entity in Home Assistant) and the
``gridmate_vehicles_data_source`` metric, and tells the notifier (``telemetry_stale``
as a condition per vehicle and source, ``telemetry_source_switched`` once per switch).

The hub hands in ``on_change``: it receives an :class:`Applied` for each change to
the state, exactly like Fleet Telemetry's, so Home Assistant sees the same device
and the same entities whatever the source.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from gridmate.runtime.clock import Clock
from gridmate.runtime.logs import get_logger
from gridmate.vehicles.arbitration import (
    DATA_SOURCE_OPTIONS,
    FLEET_TELEMETRY,
    GRIDMATE,
    NO_SOURCE,
    SOURCE_NAMES,
    TESLA_API,
    TESLAMATE,
    Activity,
    SourceBook,
    SourceFacts,
    Switch,
    describe_switch,
    shown_source,
)
from gridmate.vehicles.homeassistant.discovery import vehicle_name
from gridmate.vehicles.sources.polling import PollingSource
from gridmate.vehicles.sources.teslamate import TeslaMateSource
from gridmate.vehicles.state import Applied, FieldValue, Outcome, StateStore, VehicleState

log = get_logger("vehicles.sources")

DATA_SOURCE_FIELD = "data_source"


def fleet_telemetry_facts(state: VehicleState) -> SourceFacts | None:
    """What Fleet Telemetry last said about a car, read from the fields it provided."""
    mine = {key: value for key, value in state.fields.items() if value.source == FLEET_TELEMETRY}
    if not mine:
        return None
    last = max(value.observed_at for value in mine.values())
    activity = Activity.UNKNOWN
    online = mine.get("online")
    charge = mine.get("charge_state")
    shift = mine.get("shift_state")
    speed = mine.get("speed_mph")
    charging = charge is not None and charge.value in ("charging", "starting")
    moving = (shift is not None and shift.value in ("d", "r")) or (
        speed is not None and isinstance(speed.value, int | float) and speed.value > 0
    )
    if charging or moving:
        activity = Activity.ACTIVE
    elif online is not None:
        activity = Activity.IDLE if online.value else Activity.SLEEPING
    if online is not None and online.value is False and online.observed_at >= last:
        # Disconnected after its last data: the car went to sleep (or out of coverage).
        activity = Activity.SLEEPING
    return SourceFacts(last_heard=last, activity=activity, activity_at=last)


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.data_source = Gauge(
            "gridmate_vehicles_data_source",
            "1 for the source currently providing a vehicle's telemetry, 0 for the others.",
            ["vin", "source"],
            registry=registry,
        )
        self.trusted = Gauge(
            "gridmate_vehicles_source_trusted",
            "1 when a source's data about a vehicle is fresh (or quiet while it sleeps).",
            ["vin", "source"],
            registry=registry,
        )
        self.switches = Counter(
            "gridmate_vehicles_source_switches",
            "Changes of a vehicle's data source, by the source switched to.",
            ["source"],
            registry=registry,
        )
        for name in DATA_SOURCE_OPTIONS:
            self.switches.labels(name)


class SourceManager:
    def __init__(
        self,
        store: StateStore,
        *,
        book: SourceBook,
        names: Mapping[str, str],
        clock: Clock,
        registry: CollectorRegistry,
        on_change: Callable[[Applied], None],
        notifier: Any = None,
        evaluate_interval: float = 5.0,
    ) -> None:
        self.store = store
        self.book = book
        self.names = dict(names)
        self.clock = clock
        self.on_change = on_change
        self.notifier = notifier
        self.evaluate_interval = evaluate_interval
        self.metrics = _Metrics(registry)
        self.teslamate: TeslaMateSource | None = None
        self.polling: PollingSource | None = None
        self._notifications: list[Switch] = []
        self._wake = asyncio.Event()
        for vin in names:
            book.vehicle(vin)

    # ------------------------------------------------------------ hooks for sources

    def facts(self, source: str) -> Callable[[str], SourceFacts]:
        return lambda vin: self.book.facts(vin, source)

    def known_vins(self) -> list[str]:
        vins = dict.fromkeys(self.book.vins())
        for state in self.store:
            vins.setdefault(state.vin)
        return list(vins)

    def wants_polling(self, vin: str) -> bool:
        return self.book.selected(vin) == TESLA_API

    def facts_changed(self, vins: Iterable[str]) -> None:
        """A source learned something that may change a verdict: judge those cars now."""
        self.evaluate(list(vins))

    def offer(self, source: str, vin: str, updates: list[tuple[str, Any, float]]) -> None:
        """Arbitrate one source's observations into the state."""
        if source not in self.book.trusted(vin):
            # It may just have come back; judge before deciding on its values.
            self.evaluate([vin])
        state = self.store.get(vin)
        applied = Applied(vin, [])
        for key, value, at in updates:
            current = state.fields.get(key) if state is not None else None
            if not self.book.accepts(vin, current, FieldValue(value, at, source)):
                continue
            outcome = self.store.update(vin, key, value, at, source)
            state = state or self.store.get(vin)
            if outcome is Outcome.CHANGED:
                applied.changed.append(key)
            elif outcome is Outcome.TOUCHED:
                applied.touched = True
        if applied.changed or applied.touched:
            self.on_change(applied)

    def restored(self) -> None:
        """The hub rebuilt the state from the broker: say each car's source again and
        offer what TeslaMate said and the last poll returned again (TeslaMate publishes
        changes only, and the next poll may be many minutes away, so their values would
        otherwise be missing until then).
        """
        now = self.clock.now().timestamp()
        for vin in self.book.vins():
            selected = self.book.selected(vin)
            if vin in self.store or selected != NO_SOURCE:
                outcome = self.store.update(vin, DATA_SOURCE_FIELD, selected, now, GRIDMATE)
                if outcome is Outcome.CHANGED:
                    self.on_change(Applied(vin, [DATA_SOURCE_FIELD]))
            if self.teslamate is not None:
                self.teslamate.replay(vin)
            if self.polling is not None:
                self.polling.replay(vin)

    # ------------------------------------------------------------ judging

    def _refresh_fleet_telemetry(self, vins: list[str] | None) -> None:
        if FLEET_TELEMETRY not in self.book.configured:
            return
        states = (
            list(self.store)
            if vins is None
            else [s for vin in vins if (s := self.store.get(vin)) is not None]
        )
        for state in states:
            facts = fleet_telemetry_facts(state)
            if facts is not None:
                self.book.vehicle(state.vin).facts[FLEET_TELEMETRY] = facts

    def evaluate(self, vins: list[str] | None = None) -> list[Switch]:
        """Judge every source (of ``vins``, or of every car) and act on the switches."""
        self._refresh_fleet_telemetry(vins)
        now = self.clock.now().timestamp()
        if vins is None:
            for state in self.store:
                self.book.vehicle(state.vin)
        switches = self.book.evaluate(now, vins)
        for vin in vins if vins is not None else self.book.vins():
            for name in self.book.configured:
                verdict = self.book.verdict(vin, name)
                self.metrics.trusted.labels(vin, name).set(1 if verdict and verdict.trusted else 0)
        for switch in switches:
            self._switched(switch, now)
        for vin in vins if vins is not None else self.book.vins():
            self._show_source(vin, now)
        return switches

    def _show_source(self, vin: str, now: float) -> None:
        """Name the source that delivers for the car in its "Data source" field."""
        selected = self.book.selected(vin)
        shown = shown_source(selected, self.book.vehicle(vin).facts.get(selected))
        state = self.store.get(vin)
        if state is None and shown == NO_SOURCE:
            return
        if state is not None and state.value(DATA_SOURCE_FIELD) == shown:
            return
        outcome = self.store.update(vin, DATA_SOURCE_FIELD, shown, now, GRIDMATE)
        if outcome is Outcome.CHANGED:
            self.on_change(Applied(vin, [DATA_SOURCE_FIELD]))

    def _name(self, vin: str) -> str:
        name = vehicle_name(vin, self.store.get(vin), self.names)
        if name == vin and self.teslamate is not None:
            # Before the car's own name arrives, the name in TeslaMate's cars table.
            name = self.teslamate.name_of(vin) or vin
        return name

    def _switched(self, switch: Switch, now: float) -> None:
        vin = switch.vin
        if switch.previous != switch.current:
            words = describe_switch(switch, self._name(vin))
            if switch.reason or switch.current == NO_SOURCE:
                log.warning(words, vin=vin, source=switch.current, previous=switch.previous)
            else:
                log.info(words, vin=vin, source=switch.current, previous=switch.previous)
            self.metrics.switches.labels(switch.current).inc()
            for name in DATA_SOURCE_OPTIONS:
                self.metrics.data_source.labels(vin, name).set(1 if name == switch.current else 0)
        for name in switch.stale:
            if name != switch.previous or switch.previous == switch.current:
                verdict = self.book.verdict(vin, name)
                log.warning(
                    f"data from {SOURCE_NAMES.get(name, name)} for {self._name(vin)} is "
                    f"{verdict.health if verdict else 'stale'}",
                    vin=vin,
                    reason=verdict.reason if verdict else "",
                )
        if self.teslamate is not None and (
            (switch.current == TESLAMATE and switch.previous != TESLAMATE)
            or TESLAMATE in switch.recovered
        ):
            # Values TeslaMate sent while it was not trusted (it sends changes only).
            self.teslamate.replay(vin)
        if self.polling is not None and switch.current == TESLA_API:
            self.polling.poll_soon(vin)
        if self.notifier is not None:
            self._notifications.append(switch)
            self._wake.set()

    # ------------------------------------------------------------ notifications

    async def _notify(self, switch: Switch) -> None:
        from gridmate.notify import Event, EventKind

        vin, name = switch.vin, self._name(switch.vin)
        current = SOURCE_NAMES.get(switch.current, switch.current)
        for source in switch.stale:
            verdict = self.book.verdict(vin, source)
            label = SOURCE_NAMES.get(source, source)
            await self.notifier.send(
                Event(
                    EventKind.telemetry_stale,
                    subject=f"Data from {label} for {name} is stale",
                    what_happened=verdict.reason if verdict else f"{label} stopped delivering",
                    what_gridmate_did=(
                        f"Telemetry for {name} now comes from {current}."
                        if switch.current != NO_SOURCE
                        else f"No other source is available for {name}; its values are kept."
                    ),
                    what_you_can_do=_advice(source),
                    key=f"{vin}/{source}",
                )
            )
        for source in switch.recovered:
            await self.notifier.resolve(
                EventKind.telemetry_stale,
                key=f"{vin}/{source}",
                note=f"{SOURCE_NAMES.get(source, source)} delivers data for {name} again.",
            )
        if switch.previous != switch.current and switch.previous != NO_SOURCE:
            await self.notifier.send(
                Event(
                    EventKind.telemetry_source_switched,
                    subject=f"Telemetry for {name} now comes from {current}",
                    what_happened=describe_switch(switch, name),
                    what_gridmate_did=f"Home Assistant keeps the same entities; the "
                    f"'Data source' entity shows {current}.",
                    key=vin,
                )
            )

    async def _flush_notifications(self) -> None:
        pending, self._notifications = self._notifications, []
        for switch in pending:
            try:
                await self._notify(switch)
            except Exception as error:  # notifications must not stop the arbitration
                log.warning("notification failed", error=f"{type(error).__name__}: {error}")

    # ------------------------------------------------------------ running

    async def run(self, stop: asyncio.Event) -> None:
        tasks = []
        if self.teslamate is not None:
            tasks.append(asyncio.create_task(self.teslamate.run(stop), name="vehicles.teslamate"))
        if self.polling is not None:
            tasks.append(asyncio.create_task(self.polling.run(stop), name="vehicles.polling"))
        try:
            while not stop.is_set():
                self.evaluate()
                await self._flush_notifications()
                self._wake.clear()
                sleeper = asyncio.create_task(self.clock.sleep(self.evaluate_interval))
                waiters = {sleeper, asyncio.create_task(stop.wait())}
                waiters.add(asyncio.create_task(self._wake.wait()))
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for task in waiters:
                    task.cancel()
            await self._flush_notifications()
        finally:
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(task, 15)

    def health_teslamate(self) -> str | None:
        return self.teslamate.health() if self.teslamate else None

    def health_polling(self) -> str | None:
        return self.polling.health() if self.polling else None


def _advice(source: str) -> str:
    if source == TESLAMATE:
        return (
            "Check that TeslaMate runs and can reach its MQTT broker (docker logs teslamate "
            "or journalctl -u teslamate), and TeslaMate's web page for the car's state."
        )
    if source == FLEET_TELEMETRY:
        return (
            "Check the fleet-telemetry server, its Kafka output, and the car's telemetry "
            "configuration."
        )
    if source == TESLA_API:
        return "Check the Tesla API token and the daily request budget."
    return ""


# ---------------------------------------------------------------- construction


def build_source_manager(
    settings: Any,
    store: StateStore,
    *,
    clock: Clock,
    registry: CollectorRegistry,
    on_change: Callable[[Applied], None],
    fleet_api: Any = None,
    notifier: Any = None,
    fleet_telemetry: bool = True,
) -> SourceManager | None:
    """The manager for a :class:`VehiclesSettings`, or None if only Fleet Telemetry runs.

    ``fleet_api`` is the :class:`~gridmate.tesla.fleet_api.FleetApi` for polling
    (None when no token source is configured).
    """
    from gridmate.vehicles.sources.teslamate_cars import TeslaMateDatabase

    teslamate = settings.teslamate
    polling = settings.polling
    configured = []
    if fleet_telemetry:
        configured.append(FLEET_TELEMETRY)
    if teslamate.enable:
        configured.append(TESLAMATE)
    if polling.enable and fleet_api is not None:
        configured.append(TESLA_API)
    if configured == [FLEET_TELEMETRY]:
        return None
    arbitration = settings.arbitration
    book = SourceBook(
        configured,
        stale_after={
            FLEET_TELEMETRY: arbitration.fleet_telemetry_stale_after,
            TESLAMATE: teslamate.stale_after,
        },
        field_max_age=arbitration.field_max_age,
    )
    manager = SourceManager(
        store,
        book=book,
        names=settings.vehicles,
        clock=clock,
        registry=registry,
        on_change=on_change,
        notifier=notifier,
        evaluate_interval=arbitration.evaluate_interval,
    )
    if teslamate.enable:
        database = None
        if teslamate.use_database:
            tm_db = settings.tesla.teslamate
            database = TeslaMateDatabase(tm_db.dsn, tm_db.db_password)
        manager.teslamate = TeslaMateSource(
            teslamate,
            offer=manager.offer,
            facts=manager.facts(TESLAMATE),
            clock=clock,
            registry=registry,
            database=database,
            on_facts_changed=manager.facts_changed,
        )
    if TESLA_API in configured:
        manager.polling = PollingSource(
            fleet_api,
            offer=manager.offer,
            facts=manager.facts(TESLA_API),
            wanted=manager.wants_polling,
            known_vins=manager.known_vins,
            clock=clock,
            registry=registry,
            active_interval=polling.active_interval,
            idle_interval=polling.idle_interval,
            asleep_interval=polling.asleep_interval,
            start_delay=polling.start_delay,
            on_facts_changed=manager.facts_changed,
        )
    return manager
