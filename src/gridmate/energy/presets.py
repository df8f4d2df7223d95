"""Built-in tariffs: the original defaults and common US time-of-use plans.

Hours, seasons and holidays as the utilities publish them (check your bill:
plans change, and a change is a new schedule version in the configuration,
with its own ``effective_from``). Prices are left out on purpose because they
change every year; ``[tariff.prices.<season>]`` in the configuration adds them
by season name, giving ``price_per_kwh`` in the journal and the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from gridmate.energy.tariff import ScheduleVersionConfig

__all__ = ["PRESETS", "Preset", "preset_names"]

_SINCE = date(2000, 1, 1)


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    timezone: str
    versions: tuple[ScheduleVersionConfig, ...]
    notes: str = ""


def _version(**fields: Any) -> ScheduleVersionConfig:
    return ScheduleVersionConfig.model_validate({"effective_from": _SINCE, **fields})


def _peak(start: str, end: str, days: str = "weekdays") -> dict[str, Any]:
    return {"period": "peak", "start": start, "end": end, "days": days}


_ORIGINAL = Preset(
    name="original",
    title="gridmate's original defaults (summer 4-7 PM, winter 6-9 AM and 5-8 PM, weekdays)",
    timezone="America/Phoenix",
    versions=(
        _version(
            name="original defaults",
            seasons=[
                {
                    "name": "summer",
                    "start": "05-01",
                    "end": "10-31",
                    "windows": [_peak("16:00", "19:00")],
                },
                {
                    "name": "winter",
                    "start": "11-01",
                    "end": "04-30",
                    "windows": [_peak("06:00", "09:00"), _peak("17:00", "20:00")],
                },
            ],
        ),
    ),
)

_APS = Preset(
    name="aps-tou-4pm-7pm",
    title="APS Time-of-Use 4pm-7pm Weekdays",
    timezone="America/Phoenix",
    notes="Winter super off-peak 10 AM-3 PM weekdays; weekends and ten holidays off-peak "
    "(Saturday holidays on the Friday before, Sunday holidays on the Monday after).",
    versions=(
        _version(
            name="APS TOU 4pm-7pm Weekdays",
            utility="APS",
            seasons=[
                {
                    "name": "summer",
                    "start": "05-01",
                    "end": "10-31",
                    "windows": [_peak("16:00", "19:00")],
                },
                {
                    "name": "winter",
                    "start": "11-01",
                    "end": "04-30",
                    "windows": [
                        {"period": "super_off_peak", "start": "10:00", "end": "15:00"},
                        _peak("16:00", "19:00"),
                    ],
                },
            ],
            holidays={
                "days": [
                    "new_years_day",
                    "mlk_day",
                    "presidents_day",
                    "cesar_chavez_day",
                    "memorial_day",
                    "independence_day",
                    "labor_day",
                    "veterans_day",
                    "thanksgiving",
                    "christmas",
                ],
                "saturday": "friday",
                "sunday": "monday",
                "treat_as": "off_peak",
            },
        ),
    ),
)

_SRP = Preset(
    name="srp-tou",
    title="SRP Time-of-Use (E-26)",
    timezone="America/Phoenix",
    notes="Summer (May-Jun, Sep-Oct) and summer peak (Jul-Aug) 2-8 PM weekdays; winter "
    "5-9 AM and 5-9 PM weekdays; six observed holidays off-peak.",
    versions=(
        _version(
            name="SRP Time-of-Use",
            utility="SRP",
            seasons=[
                {"name": "winter", "start": "11-01", "end": "04-30", "windows": [
                    _peak("05:00", "09:00"), _peak("17:00", "21:00")]},
                {"name": "summer", "start": "05-01", "end": "06-30", "windows": [
                    _peak("14:00", "20:00")]},
                {"name": "summer peak", "start": "07-01", "end": "08-31", "windows": [
                    _peak("14:00", "20:00")]},
                {"name": "summer", "start": "09-01", "end": "10-31", "windows": [
                    _peak("14:00", "20:00")]},
            ],
            holidays={
                "days": [
                    "new_years_day",
                    "memorial_day",
                    "independence_day",
                    "labor_day",
                    "thanksgiving",
                    "christmas",
                ],
                "saturday": "friday",
                "sunday": "monday",
                "treat_as": "off_peak",
            },
        ),
    ),
)  # fmt: skip

_PGE = Preset(
    name="pge-e-tou-c",
    title="PG&E E-TOU-C (peak 4-9 PM every day)",
    timezone="America/Los_Angeles",
    notes="Peak every day including weekends and holidays; summer Jun-Sep has the higher "
    "prices. Residential PG&E plans have no holiday exception.",
    versions=(
        _version(
            name="PG&E E-TOU-C",
            utility="PG&E",
            seasons=[
                {
                    "name": "summer",
                    "start": "06-01",
                    "end": "09-30",
                    "windows": [_peak("16:00", "21:00", "every_day")],
                },
                {
                    "name": "winter",
                    "start": "10-01",
                    "end": "05-31",
                    "windows": [_peak("16:00", "21:00", "every_day")],
                },
            ],
        ),
    ),
)

_SCE = Preset(
    name="sce-tou-d-4-9pm",
    title="SCE TOU-D-4-9PM",
    timezone="America/Los_Angeles",
    notes="Summer (Jun-Sep): on-peak 4-9 PM weekdays, mid-peak (partial_peak) 4-9 PM on "
    "weekends and holidays. Winter (Oct-May): mid-peak 4-9 PM and super off-peak 8 AM-4 PM "
    "every day. Holidays as weekends; a Sunday holiday moves to Monday, Saturday ones do not.",
    versions=(
        _version(
            name="SCE TOU-D-4-9PM",
            utility="SCE",
            seasons=[
                {
                    "name": "summer",
                    "start": "06-01",
                    "end": "09-30",
                    "windows": [
                        _peak("16:00", "21:00", "weekdays"),
                        {
                            "period": "partial_peak",
                            "start": "16:00",
                            "end": "21:00",
                            "days": "weekends",
                        },
                    ],
                },
                {
                    "name": "winter",
                    "start": "10-01",
                    "end": "05-31",
                    "windows": [
                        {
                            "period": "super_off_peak",
                            "start": "08:00",
                            "end": "16:00",
                            "days": "every_day",
                        },
                        {
                            "period": "partial_peak",
                            "start": "16:00",
                            "end": "21:00",
                            "days": "every_day",
                        },
                    ],
                },
            ],
            holidays={
                "days": [
                    "new_years_day",
                    "presidents_day",
                    "memorial_day",
                    "independence_day",
                    "labor_day",
                    "veterans_day",
                    "thanksgiving",
                    "christmas",
                ],
                "saturday": "none",
                "sunday": "monday",
                "treat_as": "weekend",
            },
        ),
    ),
)

PRESETS: dict[str, Preset] = {p.name: p for p in (_ORIGINAL, _APS, _SRP, _PGE, _SCE)}


def preset_names() -> list[str]:
    return sorted(PRESETS)
