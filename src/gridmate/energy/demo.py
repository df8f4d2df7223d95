"""Demo: a hot summer weekday and a winter weekday through the simulators.

The real energy service runs against the Tesla cloud simulator, the local
gateway, the Honeywell simulator and the weather simulators, while the house
model drains and charges the battery and moves the indoor temperature, all in
accelerated simulated time.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

from gridmate.demo import DemoContext, Scenario
from gridmate.energy.reconciler import CycleReport
from gridmate.energy.service import build_runtime, run_loop, start_home_assistant_device
from gridmate.energy.settings import (
    EnergySettings,
    GatewaySettings,
    HomeAssistantDeviceSettings,
    HoneywellSettings,
    PowerwallSettings,
    TariffSettings,
    ThermostatSettings,
    WeatherSettings,
)
from gridmate.energy.timeline import day_timeline
from gridmate.homeassistant.view import HomeAssistantView
from gridmate.runtime.clock import SimulatedClock
from gridmate.runtime.secrets import Secret
from gridmate.runtime.settings import MetricsSettings, MqttSettings
from gridmate.sim.honeywell import SimulatedThermostat, honeywell_simulator
from gridmate.sim.house import HouseModel, gateway_simulator, outdoor_profile
from gridmate.sim.tesla_cloud import SimulatedEnergySite, tesla_cloud_simulator
from gridmate.sim.weather import weather_simulator
from gridmate.tesla.fleet_api import FleetApi
from gridmate.tesla.tokens import StaticTokenProvider

PHOENIX = ZoneInfo("America/Phoenix")
DEVICE = "gridmate energy"
# The 'original' preset's hours with prices in the range of Arizona time-of-use
# plans, so the journal (and the daily report built from it) carries money.
DEMO_TARIFF = TariffSettings(
    preset="original",
    prices={
        "summer": {"peak": 0.32, "off_peak": 0.12},
        "winter": {"peak": 0.27, "off_peak": 0.11},
    },
)


@dataclass
class Leg:
    """A stretch of simulated time to run the service through."""

    start: datetime
    end: datetime


@dataclass
class Steer:
    """Home Assistant in the demo: the energy device, and one command a user gives."""

    broker: tuple[str, int]
    at: datetime
    entity: str
    payload: str
    view: HomeAssistantView | None = None


@dataclass
class DayResult:
    precooled: bool
    peaks: int
    ladder_levels: list[int]
    restores_verified: int
    site: SimulatedEnergySite
    thermostat: SimulatedThermostat
    writes: int


async def _simulate_day(
    ctx: DemoContext,
    *,
    label: str,
    day: date,
    high_f: float,
    low_f: float,
    legs: list[Leg],
    site: SimulatedEnergySite,
    thermostat: SimulatedThermostat,
    speed: float,
    solar_kw: float = 0.0,
    steer: Steer | None = None,
) -> DayResult:
    clock = SimulatedClock(legs[0].start, speed=speed)
    house = HouseModel(
        site,
        "America/Phoenix",
        [thermostat],
        outdoor=outdoor_profile(high_f, low_f),
        solar_peak_kw=solar_kw,
    )
    house.step(clock.now())
    workdir = ctx.workdir / f"energy-{label}"
    result = DayResult(False, 0, [], 0, site, thermostat, 0)
    async with (
        tesla_cloud_simulator(
            sites=[site], clock=clock, access_token_lifetime=7 * 86400.0
        ) as cloud,
        honeywell_simulator([thermostat], clock=clock, timezone="America/Phoenix") as honeywell,
        weather_simulator(clock=clock, timezone="America/Phoenix", highs={day: high_f}) as weather,
        gateway_simulator(house) as gateway,
    ):
        settings = EnergySettings(
            tariff=DEMO_TARIFF,
            state_directory=workdir / "state",
            runtime_directory=workdir / "run",
            metrics=MetricsSettings(enable=False),
            cycle_seconds=120.0,
            thermostats=[
                ThermostatSettings(
                    id="living",
                    kind="honeywell",
                    device_id=thermostat.device_id,
                    location_id=thermostat.location_id,
                )
            ],
            honeywell=HoneywellSettings(
                base_url=honeywell.base_url,
                api_key="sim-consumer-key",
                client_secret=Secret("sim-consumer-secret"),
                refresh_token=Secret(honeywell.issue_refresh_token()),
                poll_seconds=120.0,
            ),
            ha_device=HomeAssistantDeviceSettings(
                enable=steer is not None,
                mqtt=MqttSettings(
                    host=steer.broker[0] if steer else "127.0.0.1",
                    port=steer.broker[1] if steer else 1883,
                ),
                base_topic="demo-gridmate",
            ),
            weather=WeatherSettings(
                latitude=33.45,
                longitude=-112.07,
                user_agent="gridmate-demo/1 (demo@localhost)",
                nws_url=weather.nws_base_url,
                open_meteo_url=weather.open_meteo_base_url,
            ),
            powerwall=PowerwallSettings(
                site_id=site.site_id,
                gateway=GatewaySettings(url=gateway.base_url, password=Secret("ABCDE")),
            ),
        )
        if label == "summer":
            for line in day_timeline(settings, day, high_f)[-9:]:
                ctx.say("plan", line.strip())
        access, _ = cloud.issue_tokens()
        fleet = FleetApi(StaticTokenProvider(Secret(access)), base_url=cloud.base_url, clock=clock)
        runtime = await build_runtime(settings, clock=clock, fleet=fleet)
        tz = PHOENIX
        last_phase = {"phase": "idle"}
        said: set[str] = set()

        def narrate(report: CycleReport) -> None:
            plan = report.plan
            when = report.at.astimezone(tz)
            if plan is None:
                return
            if plan.phase != last_phase["phase"]:
                reading = report.reading
                soc = (
                    f"{reading.soc_percent:.0f} %"
                    if reading is not None and reading.soc_percent is not None
                    else "?"
                )
                ctx.say("energy", f"phase {last_phase['phase']} -> {plan.phase} (battery {soc})",
                        when)  # fmt: skip
                if plan.phase == "peak":
                    result.peaks += 1
                last_phase["phase"] = plan.phase
            for decision in plan.decisions:
                detail = decision.detail
                if decision.what == "precool":
                    high = detail.get("forecast_high_f")
                    verdict = "precool" if detail.get("decided") else "no precool"
                    source = detail.get("source")
                    threshold = detail.get("threshold_f")
                    ctx.say("energy", f"forecast high {high} °F from {source}: {verdict} "
                            f"(threshold {threshold} °F)", when)  # fmt: skip
                elif decision.what == "ladder":
                    result.ladder_levels.append(int(detail["level"]))
                    why = "energy left < energy needed" if detail.get("energy_rule") else "ladder"
                    ctx.say("energy", f"battery {detail['soc']:.0f} %, {detail['minutes_left']:.0f}"
                            f" min left: step {detail['level']} ({why})", when)  # fmt: skip
                elif (
                    decision.what == "reserve"
                    and detail.get("skipped")
                    and detail["reason"] not in said
                ):
                    said.add(detail["reason"])
                    ctx.say("energy", f"Powerwall left alone: {detail['reason']}", when)
            for action in report.actions:
                detail = action["detail"]
                if action["device"] == "powerwall":
                    text = f"{action['action']} {detail['value']}"
                else:
                    value = detail["cool_setpoint_f"] if thermostat.mode == "Cool" else detail[
                        "heat_setpoint_f"]  # fmt: skip
                    until = detail.get("hold_until")
                    if detail["hold"] == "until" and until:
                        hold = f"hold until {datetime.fromisoformat(until).astimezone(tz):%H:%M}"
                    elif detail["hold"] == "schedule":
                        hold = "back to its schedule"
                    else:
                        hold = f"{detail['hold']} hold"
                    text = f"setpoint {value:g} °F, {hold}"
                    if detail["reason"].startswith("precool"):
                        result.precooled = True
                state = "verified" if action["ok"] else f"FAILED: {action['error']}"
                ctx.say(action["device"].split(":")[0], f"{text} ({state})", when)
            for kind, facts in report.events:
                if kind == "reserve_restore_verified":
                    result.restores_verified += 1
                    ctx.say("powerwall", f"restore read back: reserve {facts['reserve']} %, "
                            f"mode {facts['mode']}", when)  # fmt: skip

        try:
            for leg in legs:
                clock.jump_to(leg.start)
                house.step(clock.now())  # the house lives through the skipped hours too
                stop = asyncio.Event()
                house_task = asyncio.create_task(house.run(clock, stop, tick_seconds=30.0))

                async def stop_at(end: datetime, stop: asyncio.Event = stop) -> None:
                    await clock.sleep((end - clock.now()).total_seconds())
                    stop.set()

                timer = asyncio.create_task(stop_at(leg.end))
                device, wake = start_home_assistant_device(runtime, clock=clock, stop=stop)
                user = None
                if steer is not None and device is not None:
                    user = asyncio.create_task(_user_in_home_assistant(ctx, steer, clock))
                await run_loop(
                    runtime, clock=clock, stop=stop, on_cycle=narrate, wake=wake,
                    on_health=device.observe if device is not None else None,
                )  # fmt: skip
                await timer
                await house_task
                if user is not None:
                    await user
        finally:
            await runtime.close()
            await fleet.aclose()
        result.writes = len(site.writes)
    return result


async def _user_in_home_assistant(ctx: DemoContext, steer: Steer, clock: SimulatedClock) -> None:
    """What a person does in Home Assistant's UI, read and sent the way Home Assistant does."""
    assert steer.view is not None
    view = steer.view

    def now() -> datetime:
        return clock.now().astimezone(PHOENIX)

    await view.wait_for(lambda e: e.get((DEVICE, "Peak active")) is not None
                        and e[(DEVICE, "Peak active")].state == "on")  # fmt: skip
    await clock.sleep(max(0.0, (steer.at - clock.now()).total_seconds()))
    shown = view.entities()
    ctx.say("ha", f"{DEVICE}: peak active, backup reserve "
            f"{shown[(DEVICE, 'Backup reserve')].state:g} %, {len(shown)} entities",
            now())  # fmt: skip
    ctx.say("ha", f"user sets {steer.entity} to {steer.payload}", now())
    await view.command(DEVICE, steer.entity, steer.payload)
    entities = await view.wait_for(
        lambda e: (
            e[(DEVICE, steer.entity)].state == steer.payload.lower()
            and e[(DEVICE, "Backup reserve")].state == 30.0
        )
    )
    ctx.say("ha", f"{DEVICE}: {steer.entity} {entities[(DEVICE, steer.entity)].state}, peak "
            f"active {entities[(DEVICE, 'Peak active')].state}, backup reserve "
            f"{entities[(DEVICE, 'Backup reserve')].state:g} %", now())  # fmt: skip


def _summer_site() -> SimulatedEnergySite:
    """The summer days' Powerwall: nearly full, 30 % reserve, autonomous (time-based)."""
    return SimulatedEnergySite(
        percentage_charged=96.0,
        backup_reserve_percent=30,
        operation_mode="autonomous",
        installation_time_zone="America/Phoenix",
    )


async def _run(ctx: DemoContext) -> list[str]:
    speed = ctx.speed or 2400.0
    summer_day = date(2026, 7, 1)

    def at(day: date, hour: int, minute: int = 0) -> datetime:
        return datetime(day.year, day.month, day.day, hour, minute, tzinfo=PHOENIX)

    ctx.say("demo", f"summer weekday {summer_day:%a %d %b}, forecast high 100 °F, tariff "
            "'original' (peak 4-7 PM)")  # fmt: skip
    summer = await _simulate_day(
        ctx,
        label="summer",
        day=summer_day,
        high_f=100.0,
        low_f=80.0,
        legs=[Leg(at(summer_day, 15, 20), at(summer_day, 19, 16))],
        site=_summer_site(),
        thermostat=SimulatedThermostat(indoor_f=77.0, mode="Cool"),
        speed=speed,
    )
    ctx.expect(summer.precooled, "the summer day precooled before the peak")
    ctx.expect(summer.peaks == 1, "the summer day had one peak")
    ctx.expect(bool(summer.ladder_levels), "the battery ladder raised the setpoint")
    ctx.expect(summer.restores_verified == 1, "the reserve restore was read back")
    ctx.expect(
        (summer.site.backup_reserve_percent, summer.site.operation_mode) == (30, "autonomous"),
        "the Powerwall is back to 30 % in autonomous mode",
    )
    ctx.expect(summer.thermostat.setpoint_status == "NoHold", "the thermostat is back on schedule")

    steer_day = date(2026, 7, 2)
    ctx.say("demo", f"summer weekday {steer_day:%a %d %b}, steered from Home Assistant: "
            "peak control switched off during the peak")  # fmt: skip
    broker = await ctx.mqtt_broker()
    view = HomeAssistantView(*broker, discovery_prefix="homeassistant", base="demo-gridmate")
    async with view.running():
        steered = await _simulate_day(
            ctx,
            label="steered",
            day=steer_day,
            high_f=90.0,
            low_f=78.0,
            legs=[Leg(at(steer_day, 15, 50), at(steer_day, 17, 0))],
            site=_summer_site(),
            thermostat=SimulatedThermostat(indoor_f=77.0, mode="Cool"),
            speed=speed,
            steer=Steer(broker, at(steer_day, 16, 30), "Peak control", "OFF", view),
        )
        shown = view.entities()
    ctx.expect(
        (steered.site.backup_reserve_percent, steered.site.operation_mode) == (30, "autonomous"),
        "switching peak control off in Home Assistant restored the Powerwall",
    )
    ctx.expect(shown[(DEVICE, "Peak control")].state == "off", "Home Assistant shows it off")
    ctx.expect(steered.writes == 4, "one peak change and one restore, nothing after")

    winter_day = date(2026, 1, 14)
    ctx.say("demo", f"winter weekday {winter_day:%a %d %b}, forecast high 62 °F, peaks 6-9 AM "
            "and 5-8 PM")  # fmt: skip
    winter = await _simulate_day(
        ctx,
        label="winter",
        day=winter_day,
        high_f=62.0,
        low_f=38.0,
        legs=[
            Leg(at(winter_day, 5, 20), at(winter_day, 9, 16)),
            Leg(at(winter_day, 16, 20), at(winter_day, 20, 16)),
        ],
        site=SimulatedEnergySite(
            percentage_charged=70.0,
            backup_reserve_percent=20,
            operation_mode="self_consumption",
            installation_time_zone="America/Phoenix",
        ),
        thermostat=SimulatedThermostat(
            indoor_f=69.0, mode="Heat", heat_setpoint_f=70.0, schedule_heat_f=70.0
        ),
        speed=speed,
        solar_kw=6.0,
    )
    ctx.expect(not winter.precooled, "no precooling on a winter day")
    ctx.expect(winter.peaks == 2, "the winter day had two peaks")
    ctx.expect(winter.restores_verified == 2, "both winter peaks were restored and verified")
    ctx.expect(winter.site.backup_reserve_percent == 20, "the winter reserve is back to 20 %")
    return [
        f"summer: precooled, reserve 30 % -> 0 % -> 30 % verified, ladder steps "
        f"{sorted(set(summer.ladder_levels))}, {summer.writes} Powerwall writes",
        f"Home Assistant: peak control switched off at 16:30, reserve restored to 30 %, "
        f"{len([k for k in shown if k[0] == DEVICE])} entities on the energy device",
        f"winter: two peaks, {winter.restores_verified} verified restores, ladder steps "
        f"{sorted(set(winter.ladder_levels)) or 'none'}, {winter.writes} Powerwall writes",
    ]


scenario = Scenario("energy", "Energy: time-of-use peaks on a summer and a winter weekday", _run)
