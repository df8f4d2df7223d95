"""Replay a year of one-minute control cycles through the tariff engine and the planner.

No I/O: a synthetic site (battery draining at peak, recharging off peak) and
forecast feed :func:`gridmate.energy.planner.plan` every minute of a year, the
memory carried from cycle to cycle as the service does. Prints the time taken.

    .venv/bin/python bench/energy_year.py [--preset NAME] [--year 2026] [--days N]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from gridmate.energy.planner import (
    Forecast,
    PeakMemory,
    PlannerConfig,
    SiteReading,
    ThermostatReading,
    plan,
)
from gridmate.energy.settings import ReserveSettings, ThermostatPolicy
from gridmate.energy.tariff.presets import PRESETS
from gridmate.energy.tariff.schedule import Schedule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="original", choices=sorted(PRESETS))
    parser.add_argument("--year", type=int, default=2026)
    parser.add_argument(
        "--days",
        type=int,
        default=None,
        help="replay only the first N days (under valgrind, a one-day run gives the "
        "start-up cost to subtract from a year's count)",
    )
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    tz = ZoneInfo(preset.timezone)
    config = PlannerConfig(
        reserve=ReserveSettings(),
        policy=ThermostatPolicy(),
        thermostat_ids=("living",),
    )
    start = datetime(args.year, 1, 1, tzinfo=tz)
    end = datetime(args.year + 1, 1, 1, tzinfo=tz)
    if args.days is not None:
        end = min(end, start + timedelta(days=args.days))

    started = time.perf_counter()
    cpu_started = time.process_time()
    schedule = Schedule(preset.versions, preset.timezone)
    memory = PeakMemory()
    soc = 80.0
    reserve, mode = 30, "autonomous"
    thermostat = ThermostatReading("cool", 76.0, 68.0, 75.0, "schedule")
    forecasts: dict[date, Forecast] = {}
    phases: dict[str, int] = {}
    cycles = 0
    now = start
    step = timedelta(minutes=1)
    while now < end:
        day = now.date() if now.tzinfo is tz else now.astimezone(tz).date()
        forecast = forecasts.get(day)
        if forecast is None:
            # A hot summer, mild winters: about a third of summer days precool.
            high = 70.0 + 30.0 * (1 - abs(day.timetuple().tm_yday - 196) / 183) + (day.day % 7)
            forecast = forecasts[day] = Forecast(day, high, "synthetic")
        site = SiteReading(
            soc_percent=soc,
            load_kw=2.5,
            reserve_percent=reserve,
            mode=mode,
            thermostats={"living": thermostat},
        )
        result = plan(now, schedule, site, forecast, config, memory)
        memory = result.memory
        if result.powerwall is not None:
            reserve, mode = result.powerwall.reserve_percent, result.powerwall.mode
            memory = replace(
                memory,
                powerwall_changed=result.phase == "peak" or memory.powerwall_changed,
                powerwall_restored=result.phase == "restore",
            )
        if result.phase == "restore" and memory.restore_complete:
            memory = PeakMemory()
        # The battery: drains during peak, recharges slowly otherwise.
        if result.phase == "peak":
            soc = max(reserve, soc - 2.5 / 13.5 * 100 / 60)
        else:
            soc = min(100.0, soc + 0.05)
        phases[result.phase] = phases.get(result.phase, 0) + 1
        cycles += 1
        now += step
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    print(f"energy_year: preset {args.preset}, year {args.year}")
    print(f"  {cycles} one-minute cycles (schedule + planner, no I/O) in {elapsed:.2f} s "
          f"= {elapsed / cycles * 1e6:.1f} µs per cycle")  # fmt: skip
    print(f"  CPU time {cpu:.2f} s (wall time includes waiting for a busy machine)")
    print("  minutes by phase: " + ", ".join(f"{k} {v}" for k, v in sorted(phases.items())))


if __name__ == "__main__":
    main()
