"""Built-in tariffs: the original defaults and common US time-of-use plans.

Hours, seasons and holidays as the utilities publish them (check your bill:
plans change, and a change is a new schedule version in the configuration,
with its own ``effective_from``).

Prices per kWh are included only where the utility's own price sheet could be
read, as a schedule version starting on the sheet's effective date, with the
sheet named next to them. Utility prices change about once a year (SRP moves
its fuel and purchased power adjustment between seasons), so
``[tariff.prices.<season>]`` in the configuration overrides a preset's prices
by season name; both give ``price_per_kwh`` in the journal and the report.
Where no published figure was found, the preset has no prices and the
comment says so: the report then shows no saving estimate until
``[tariff.prices]`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from gridmate.energy.tariff.schedule import ScheduleVersionConfig

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

# APS: no prices. The figures belong to APS's Rate Schedule TOU-E (the ACC-approved
# tariff behind "Time-of-Use 4pm-7pm Weekdays"); neither it nor an ACC filing that
# reproduces it could be read here (searched December 2026), and APS's plan page gives
# no per-kWh figures with an effective date. Set [tariff.prices.summer] (peak,
# off_peak) and [tariff.prices.winter] (peak, off_peak, super_off_peak) from your bill.
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

_SRP_HOLIDAYS = {
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
}


def _srp_e26_seasons(prices: dict[str, dict[str, float]] | None = None) -> list[dict[str, Any]]:
    prices = prices or {}
    return [
        {
            "name": "winter",
            "start": "11-01",
            "end": "04-30",
            "prices": prices.get("winter", {}),
            "windows": [_peak("05:00", "09:00"), _peak("17:00", "21:00")],
        },
        {
            "name": "summer",
            "start": "05-01",
            "end": "06-30",
            "prices": prices.get("summer", {}),
            "windows": [_peak("14:00", "20:00")],
        },
        {
            "name": "summer peak",
            "start": "07-01",
            "end": "08-31",
            "prices": prices.get("summer peak", {}),
            "windows": [_peak("14:00", "20:00")],
        },
        {
            "name": "summer",
            "start": "09-01",
            "end": "10-31",
            "prices": prices.get("summer", {}),
            "windows": [_peak("14:00", "20:00")],
        },
    ]


# SRP E-26, "Standard Price Plan for Residential Time-of-Use Service", price sheet
# "Includes Increase to Fuel & Purchased Power Adjustment, Effective: November 2024
# Billing Cycle", published November 1, 2024 (SRP ratebook, srpnet.com, price plan
# E-26): the "Total" per-kWh charge of each season, in dollars. SRP's seasons are
# billing cycles (summer: May, Jun, Sep, Oct; summer peak: Jul, Aug; winter: Nov-Apr);
# gridmate applies them by calendar date.
# Not carried, because SRP's own sheets could not be read here (searched December
# 2026): the E-26 prices SRP set with its public pricing process for the November 2025
# billing cycle (SRP FY26 ratebook, E-26), and the temporary decrease of the fuel and
# purchased power adjustment for the May-October 2026 billing cycles. Third-party
# transcriptions of both exist in public repositories but were not used as a source.
# Until those sheets are added, dates from November 2025 still get the November 2024
# figures above: set [tariff.prices] from your bill to follow SRP's current prices.
_SRP_E26_PRICES_NOV_2024 = {
    "summer": {"peak": 0.2295, "off_peak": 0.0928},
    "summer peak": {"peak": 0.2610, "off_peak": 0.0931},
    "winter": {"peak": 0.1215, "off_peak": 0.0955},
}

_SRP = Preset(
    name="srp-tou",
    title="SRP Time-of-Use (E-26; closed to new customers)",
    timezone="America/Phoenix",
    notes="Summer (May-Jun, Sep-Oct) and summer peak (Jul-Aug) 2-8 PM weekdays; winter "
    "5-9 AM and 5-9 PM weekdays; six observed holidays off-peak. SRP closed E-26 to new "
    "customers from the November 2025 billing cycle (customers already on it keep it; "
    "SRP plans to end it in 2029); new customers get E-28, preset srp-e28. Prices from "
    "SRP's E-26 sheet effective with the November 2024 billing cycle; SRP's later E-26 "
    "prices are not built in: set [tariff.prices].",
    versions=(
        _version(name="SRP Time-of-Use", utility="SRP", seasons=_srp_e26_seasons(),
                 holidays=_SRP_HOLIDAYS),
        _version(effective_from=date(2024, 11, 1), name="SRP E-26 (November 2024 prices)",
                 utility="SRP", seasons=_srp_e26_seasons(_SRP_E26_PRICES_NOV_2024),
                 holidays=_SRP_HOLIDAYS),
    ),
)  # fmt: skip


def _srp_e28_windows() -> list[dict[str, Any]]:
    return [
        {"period": "super_off_peak", "start": "08:00", "end": "15:00", "days": "every_day"},
        _peak("18:00", "21:00"),
    ]


# SRP E-28, "Conserve 6-9 p.m. and Save", open to new residential customers from the
# November 2025 billing cycle: on-peak 6-9 PM weekdays, super off-peak 8 AM-3 PM every
# day; on the six observed holidays there is no on-peak but super off-peak still applies
# (a holiday is treated as a weekend day). No prices: SRP's E-28 price sheet (FY26
# ratebook, "2025 Ratebook E-28", effective with the November 2025 billing cycle) and
# SRP's ratebook with the temporary May-October 2026 fuel adjustment could not be read
# here, and no other SRP publication of E-28's per-kWh prices was found (searched
# December 2026; SRP's pricing-process pages give the hours, not the prices). Public
# third-party transcriptions of the sheet disagree with one another in some figures
# and were not used. Set [tariff.prices.winter], [tariff.prices.summer] and
# [tariff.prices."summer peak"] (peak, off_peak, super_off_peak) from your bill.
_SRP_E28 = Preset(
    name="srp-e28",
    title='SRP "Conserve 6-9 p.m. and Save" (E-28)',
    timezone="America/Phoenix",
    notes="On-peak 6-9 PM weekdays all year; super off-peak 8 AM-3 PM every day, holidays "
    "included; six observed holidays have no on-peak. Price seasons: winter Nov-Apr, "
    "summer May-Jun and Sep-Oct, summer peak Jul-Aug. SRP's default for new customers from "
    "the November 2025 billing cycle. No built-in prices: set [tariff.prices].",
    versions=(
        _version(
            name='SRP E-28 "Conserve 6-9 p.m. and Save"',
            utility="SRP",
            seasons=[
                {"name": "winter", "start": "11-01", "end": "04-30", "windows": _srp_e28_windows()},
                {"name": "summer", "start": "05-01", "end": "06-30", "windows": _srp_e28_windows()},
                {"name": "summer peak", "start": "07-01", "end": "08-31",
                 "windows": _srp_e28_windows()},
                {"name": "summer", "start": "09-01", "end": "10-31", "windows": _srp_e28_windows()},
            ],
            holidays={**_SRP_HOLIDAYS, "treat_as": "weekend"},
        ),
    ),
)  # fmt: skip

# PG&E: no prices. The bundled "Total Energy Rates" of PG&E's Electric Schedule E-TOU-C
# (the tariff book sheet, or the CPUC advice letter that sets it) could not be read here
# (searched December 2026). Even from the sheet, one figure per period is the price
# before the baseline credit (usage within the baseline allowance costs less) and only
# for bundled customers: a CCA customer pays PG&E's delivery charges plus the CCA's own
# generation rate. Set [tariff.prices.summer] and [tariff.prices.winter] (peak,
# off_peak) from your bill.
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

# SCE: no prices, for the same reasons as PG&E: SCE's Schedule TOU-D (Option 4-9 PM)
# tariff sheets and the advice letters that set them could not be read here (searched
# December 2026; SCE's TOU plan page states bundled prices "effective as of 10/01/24",
# but its figures could not be read here), and the baseline credit and the generation
# provider (CCA) change the per-kWh price. Set [tariff.prices.summer] (peak, partial_peak,
# off_peak) and [tariff.prices.winter] (partial_peak, off_peak, super_off_peak).
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

PRESETS: dict[str, Preset] = {p.name: p for p in (_ORIGINAL, _APS, _SRP, _SRP_E28, _PGE, _SCE)}


def preset_names() -> list[str]:
    return sorted(PRESETS)
