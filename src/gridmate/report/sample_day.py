"""A realistic synthetic day in the energy journal, for the demo and the tests.

A hot summer weekday in Phoenix on a 4–7 PM peak plan: the battery fills from
solar in the morning, gridmate precools the house before peak, drops the
reserve at peak start, steps the thermostat up as the battery drains, and
restores the reserve afterwards (the Powerwall then recharges from cheap
off-peak grid power). With ``short_battery`` smoke haze cuts the solar output,
the battery starts the peak half full and the house imports from the grid at
the end of the peak.
"""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from gridmate.energy.journal import DayJournal, journal_path

DEMO_TIME_ZONE = "America/Phoenix"
PEAK_START_HOUR, PEAK_END_HOUR = 16, 19
OFF_PEAK_PRICE, PEAK_PRICE = 0.11, 0.30


def write_synthetic_day(
    state_directory: Path,
    day: date,
    *,
    tz: str = DEMO_TIME_ZONE,
    short_battery: bool = False,
) -> Path:
    """Write one day's journal (1-minute samples) and return its path."""
    zone = ZoneInfo(tz)
    journal = DayJournal(state_directory, zone)
    path = journal_path(state_directory, day)
    path.unlink(missing_ok=True)  # rewriting the same day gives the same file
    capacity_kwh = 10.0 if short_battery else 13.5
    solar_peak_kw = 2.0 if short_battery else 6.8
    soc = 84.0
    reserve = 80
    setpoint = 76.0
    indoor = 77.0
    start = datetime.combine(day, datetime.min.time(), zone)
    restored = False

    def at(hour: float) -> datetime:
        return start + timedelta(hours=hour)

    journal.append(
        "decision",
        at=at(6),
        what="precool",
        detail={"forecast_high_f": 109, "source": "nws", "threshold_f": 100, "decided": True},
    )
    journal.append("api_usage", at=at(6), api="weather", used=1, budget=48)
    for minute in range(24 * 60):
        hour = minute / 60
        moment = at(hour)
        in_peak = PEAK_START_HOUR <= hour < PEAK_END_HOUR
        if hour == 14:
            setpoint = 72.0
            journal.append(
                "action",
                at=moment,
                device="thermostat:living_room",
                action="precool_hold",
                detail={"setpoint_f": 72, "until": at(PEAK_START_HOUR)},
                ok=True,
                error=None,
            )
        if hour == PEAK_START_HOUR:
            reserve, setpoint = 20, 76.0
            journal.append("peak", at=moment, event="start", soc=round(soc, 1))
            for action, detail in (
                ("set_backup_reserve", {"percent": 20}),
                ("set_operation_mode", {"mode": "self_consumption"}),
            ):
                journal.append(
                    "action",
                    at=moment,
                    device="powerwall",
                    action=action,
                    detail=detail,
                    ok=True,
                    error=None,
                )
            journal.append(
                "action",
                at=moment,
                device="thermostat:living_room",
                action="peak_hold",
                detail={"setpoint_f": 76},
                ok=True,
                error=None,
            )
            journal.append(
                "action",
                at=moment,
                device="vehicle:5YJ3E7EB0KF000001",
                action="charge_stop",
                detail={},
                ok=True,
                error=None,
            )
        if in_peak and setpoint < 78 and soc < 70:
            setpoint = 78.0
            journal.append(
                "decision",
                at=moment,
                what="ladder",
                detail={
                    "soc": round(soc, 1),
                    "minutes_left": int((PEAK_END_HOUR - hour) * 60),
                    "setpoint_f": 78,
                },
            )
            journal.append(
                "action",
                at=moment,
                device="thermostat:living_room",
                action="ladder_step",
                detail={"setpoint_f": 78},
                ok=True,
                error=None,
            )
        if hour == PEAK_END_HOUR:
            reserve, setpoint = 80, 76.0
            journal.append("peak", at=moment, event="end", soc=round(soc, 1))
            journal.append(
                "action",
                at=moment,
                device="powerwall",
                action="set_backup_reserve",
                detail={"percent": 80},
                ok=True,
                error=None,
            )
            journal.append(
                "action",
                at=moment,
                device="thermostat:living_room",
                action="resume_schedule",
                detail={},
                ok=True,
                error=None,
            )
            journal.append(
                "action",
                at=moment,
                device="vehicle:5YJ3E7EB0KF000001",
                action="charge_start",
                detail={},
                ok=True,
                error=None,
            )
        outdoor = 78 + 31 * max(0.0, math.sin(math.pi * (hour - 7) / 14))
        solar = solar_peak_kw * max(0.0, math.sin(math.pi * (hour - 6.5) / 12.5))
        cooling = max(0.0, (outdoor - setpoint) / 9) * (1.3 if setpoint < 76 else 1.0)
        load = 0.7 + cooling + (0.4 if 7 <= hour < 9 else 0.0)
        indoor += (setpoint - indoor) * 0.05 + (outdoor - indoor) * 0.002
        net = load - solar
        if net < 0:  # surplus solar charges the battery first
            battery = -min(-net, 5.0) if soc < 100 else 0.0
        elif hour >= PEAK_END_HOUR and not restored:
            battery = -3.3  # recharging to the restored reserve from off-peak grid power
            restored = soc >= reserve
        elif soc > reserve + 0.5:
            battery = min(net, 5.0)
        else:
            battery = 0.0
        grid = net - battery
        soc = min(100.0, max(0.0, soc - battery / 60 / capacity_kwh * 100))
        journal.append(
            "sample",
            at=moment,
            soc=round(soc, 2),
            battery_kw=round(battery, 3),
            grid_kw=round(grid, 3),
            load_kw=round(load, 3),
            solar_kw=round(solar, 3),
            reserve=reserve,
            mode="self_consumption" if in_peak else "autonomous",
            period="peak" if in_peak else "off_peak",
            price_per_kwh=PEAK_PRICE if in_peak else OFF_PEAK_PRICE,
            thermostats={
                "living_room": {
                    "setpoint_f": setpoint,
                    "indoor_f": round(indoor, 1),
                    "mode": "cool",
                }
            },
        )
        if minute % 60 == 59:
            journal.append("health", at=moment, ok=True, problems=[])
            journal.append(
                "api_usage", at=moment, api="tesla_energy", used=8 + minute // 30, budget=500
            )
    journal.append("api_usage", at=at(23.99), api="honeywell", used=14, budget=1000)
    return path
