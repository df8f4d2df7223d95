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
from gridmate.energy.component import day_timeline
from gridmate.energy.reconciler import CycleReport
from gridmate.energy.service import build_runtime, run_loop
from gridmate.energy.settings import (
    EnergySettings,
    GatewaySettings,
    HoneywellSettings,
    PowerwallSettings,
    TariffSettings,
    ThermostatSettings,
    WeatherSettings,
)
from gridmate.runtime.clock import SimulatedClock
from gridmate.runtime.secrets import Secret
from gridmate.runtime.settings import MetricsSettings
from gridmate.sim.honeywell import SimulatedThermostat, honeywell_simulator
from gridmate.sim.house import HouseModel, gateway_simulator, outdoor_profile
from gridmate.sim.tesla_cloud import SimulatedEnergySite, tesla_cloud_simulator
from gridmate.sim.weather import weather_simulator
from gridmate.tesla.fleet_api import FleetApi
from gridmate.tesla.tokens import StaticTokenProvider

PHOENIX = ZoneInfo("America/Phoenix")
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
                await run_loop(runtime, clock=clock, stop=stop, on_cycle=narrate)
                await timer
                await house_task
        finally:
            await runtime.close()
            await fleet.aclose()
        result.writes = len(site.writes)
    return result


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
        site=SimulatedEnergySite(
            percentage_charged=96.0,
            backup_reserve_percent=30,
            operation_mode="autonomous",
            installation_time_zone="America/Phoenix",
        ),
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
        f"winter: two peaks, {winter.restores_verified} verified restores, ladder steps "
        f"{sorted(set(winter.ladder_levels)) or 'none'}, {winter.writes} Powerwall writes",
    ]


scenario = Scenario("energy", "Energy: time-of-use peaks on a summer and a winter weekday", _run)
