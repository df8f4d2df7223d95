"""The time-of-use schedule engine: properties over random tariffs, DST, wraps, holidays."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gridmate.energy.tariff.presets import PRESETS
from gridmate.energy.tariff.schedule import (
    PERIODS,
    EventConfig,
    Schedule,
    ScheduleVersionConfig,
    holiday_dates,
)

ZONES = ["America/Los_Angeles", "America/Phoenix", "America/New_York", "Europe/Berlin"]
instants = st.datetimes(
    min_value=datetime(2024, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)
)


def _hm(minutes: int) -> str:
    return "24:00" if minutes == 1440 else f"{minutes // 60:02d}:{minutes % 60:02d}"


@st.composite
def versions(draw) -> ScheduleVersionConfig:
    """A random valid schedule: two seasons, non-overlapping windows, maybe holidays."""
    cut = draw(st.sampled_from(["04-30", "05-31", "09-30", "10-31"]))
    month, day = (int(x) for x in cut.split("-"))
    after = date(2001, month, day) + timedelta(days=1)
    seasons = [("summer", after.strftime("%m-%d"), "12-31"), ("winter", "01-01", cut)]
    built = []
    for name, start, end in seasons:
        # Quarter-hour boundaries for each kind of day; pairs of them become windows.
        windows = []
        for days in draw(st.sampled_from([["weekdays"], ["weekends", "weekdays"], ["every_day"]])):
            points = sorted(draw(st.sets(st.integers(1, 95), min_size=2, max_size=6)))
            if len(points) % 2:
                points = points[:-1]
            for a, b in zip(points[::2], points[1::2], strict=True):
                windows.append(
                    {
                        "period": draw(st.sampled_from(PERIODS)),
                        "start": _hm(a * 15),
                        "end": _hm(b * 15),
                        "days": days,
                    }
                )
        built.append({"name": name, "start": start, "end": end, "windows": windows})
    holidays = None
    if draw(st.booleans()):
        holidays = {
            "days": ["new_years_day", "independence_day", "thanksgiving", "christmas"],
            "treat_as": draw(st.sampled_from(["off_peak", "weekend", "super_off_peak"])),
        }
    return ScheduleVersionConfig.model_validate(
        {"effective_from": "2020-01-01", "seasons": built, "holidays": holidays}
    )


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(version=versions(), zone=st.sampled_from(ZONES), when=instants)
def test_every_instant_belongs_to_exactly_one_period(version, zone, when):
    schedule = Schedule([version], zone)
    segment = schedule.segment_at(when)
    assert segment.period in PERIODS
    plan = schedule.day_plan(schedule.local_date(when))
    # The day's segments tile the local day with no gap and no overlap.
    assert plan.segments[0].start_minute == 0
    assert plan.segments[-1].end_minute == 1440
    for first, second in zip(plan.segments, plan.segments[1:], strict=False):
        assert first.end_minute == second.start_minute
    local = when.astimezone(ZoneInfo(zone))
    minute = local.hour * 60 + local.minute
    owners = [s for s in plan.segments if s.start_minute <= minute < s.end_minute]
    assert owners == [segment]


@settings(max_examples=40, deadline=None)
@given(when=instants, preset=st.sampled_from(sorted(PRESETS)))
def test_block_contains_the_instant_and_is_maximal(when, preset):
    p = PRESETS[preset]
    schedule = Schedule(p.versions, p.timezone)
    start, end, segment = schedule.block_at(when)
    assert start <= when < end
    assert schedule.period_at(start) == segment.period
    assert schedule.period_at(end - timedelta(minutes=1)) == segment.period
    assert schedule.period_at(end) != segment.period
    assert schedule.period_at(start - timedelta(minutes=1)) != segment.period


@settings(max_examples=80, deadline=None)
@given(
    when=instants,
    preset=st.sampled_from(sorted(PRESETS)),
    zone=st.sampled_from([None, "UTC", *ZONES]),
    fold=st.sampled_from([0, 1]),
)
def test_segment_and_block_agree_with_the_separate_lookups(when, preset, zone, fold):
    """The planner's one-conversion lookup gives what segment_at and next_block give,
    whatever zone the instant is written in (the repeated hour of a DST change too)."""
    p = PRESETS[preset]
    schedule = Schedule(p.versions, p.timezone)
    written = when if zone is None else when.astimezone(ZoneInfo(zone)).replace(fold=fold)
    periods = frozenset({"peak", "partial_peak"} if fold else {"peak"})
    segment, block = schedule.segment_and_block(written, periods)
    assert segment == schedule.segment_at(written)
    assert block == schedule.next_block(written, periods)
    if block is not None:
        assert block[1] > written
        assert block[0].tzinfo is UTC and block[1].tzinfo is UTC


def test_next_block_refuses_a_naive_time():
    schedule = Schedule(PRESETS["pge-e-tou-c"].versions, "America/Los_Angeles")
    with pytest.raises(TypeError):
        schedule.next_block(datetime(2026, 7, 1, 12, 0))
    with pytest.raises(TypeError):
        schedule.segment_and_block(datetime(2026, 7, 1, 12, 0), frozenset({"peak"}))


@pytest.mark.parametrize(
    ("day", "hours"),
    [(date(2026, 3, 8), 23), (date(2026, 11, 1), 25), (date(2026, 7, 1), 24)],
)
def test_dst_days_keep_wall_clock_peaks(day, hours):
    schedule = Schedule(PRESETS["pge-e-tou-c"].versions, "America/Los_Angeles")
    plan = schedule.day_plan(day)
    assert (plan.segments[-1].end - plan.segments[0].start) == timedelta(hours=hours)
    (peak,) = plan.periods("peak")
    assert peak.end - peak.start == timedelta(hours=5)
    la = ZoneInfo("America/Los_Angeles")
    assert peak.start.astimezone(la).hour == 16
    assert peak.end.astimezone(la).hour == 21


def _wrapping(zone: str = "America/Los_Angeles") -> Schedule:
    version = ScheduleVersionConfig.model_validate(
        {
            "effective_from": "2020-01-01",
            "seasons": [
                {
                    "name": "all",
                    "start": "01-01",
                    "end": "12-31",
                    "windows": [
                        {
                            "period": "super_off_peak",
                            "start": "23:00",
                            "end": "05:00",
                            "days": "every_day",
                            "wraps": True,
                        },
                        {"period": "peak", "start": "16:00", "end": "21:00"},
                    ],
                }
            ],
        }
    )
    return Schedule([version], zone)


@given(when=instants)
def test_wrapping_window_covers_both_sides_of_midnight(when):
    schedule = _wrapping()
    local = when.astimezone(schedule.tz)
    expected_super = local.hour >= 23 or local.hour < 5
    assert (schedule.period_at(when) == "super_off_peak") == expected_super


def test_wrapping_window_across_spring_forward_is_shorter():
    schedule = _wrapping()
    start, end = schedule.next_block(
        datetime(2026, 3, 7, 22, tzinfo=ZoneInfo("America/Los_Angeles")), "super_off_peak"
    )
    assert end - start == timedelta(hours=5)  # 23:00 PST to 05:00 PDT
    assert start.astimezone(schedule.tz).hour == 23


# Observed holiday dates as the utilities publish them, written out by hand (not taken
# from the engine): APS's ten and SRP's six, with Saturday holidays on the Friday
# before and Sunday ones on the Monday after.
KNOWN_HOLIDAYS = {
    "aps-tou-4pm-7pm": [
        date(2026, 1, 1),  # New Year's Day
        date(2026, 1, 19),  # Martin Luther King Jr. Day
        date(2026, 2, 16),  # Presidents' Day
        date(2026, 3, 31),  # Cesar Chavez Day
        date(2026, 5, 25),  # Memorial Day
        date(2026, 7, 3),  # Independence Day (July 4 is a Saturday)
        date(2026, 9, 7),  # Labor Day
        date(2026, 11, 11),  # Veterans Day
        date(2026, 11, 26),  # Thanksgiving
        date(2026, 12, 25),  # Christmas
        date(2027, 7, 5),  # Independence Day (a Sunday)
        date(2027, 12, 24),  # Christmas (a Saturday)
        date(2027, 12, 31),  # New Year's Day 2028 (a Saturday)
    ],
    "srp-tou": [
        date(2026, 1, 1),
        date(2026, 5, 25),
        date(2026, 7, 3),
        date(2026, 9, 7),
        date(2026, 11, 26),
        date(2026, 12, 25),
        date(2027, 1, 1),
        date(2027, 5, 31),
        date(2027, 7, 5),
        date(2027, 9, 6),
        date(2027, 11, 25),
        date(2027, 12, 24),
        date(2027, 12, 31),
    ],
}


@pytest.mark.parametrize(
    ("preset", "day"), [(name, day) for name, days in KNOWN_HOLIDAYS.items() for day in days]
)
def test_holidays_are_off_peak_all_day(preset, day):
    p = PRESETS[preset]
    schedule = Schedule(p.versions, p.timezone)
    assert [s.period for s in schedule.day_plan(day).segments] == ["off_peak"], day
    # The same weekday two weeks later is an ordinary day with a peak.
    ordinary = schedule.day_plan(day + timedelta(days=14))
    assert "peak" in {s.period for s in ordinary.segments}, day


def test_observed_dates():
    aps = PRESETS["aps-tou-4pm-7pm"].versions[0].holidays
    days = holiday_dates(aps, 2027)
    assert date(2027, 7, 5) in days  # Independence Day on a Sunday: Monday
    assert date(2027, 12, 24) in days  # Christmas on a Saturday: Friday before
    assert date(2027, 12, 31) in days  # New Year's Day 2028 on a Saturday
    sce = PRESETS["sce-tou-d-4-9pm"].versions[0].holidays
    sce_days = holiday_dates(sce, 2027)
    assert date(2027, 12, 24) not in sce_days  # SCE does not move Saturday holidays
    assert date(2027, 7, 5) in sce_days


def test_sce_holiday_on_a_weekday_uses_weekend_periods():
    p = PRESETS["sce-tou-d-4-9pm"]
    schedule = Schedule(p.versions, p.timezone)
    plan = schedule.day_plan(date(2026, 9, 7))  # Labor Day, a Monday
    assert "peak" not in {s.period for s in plan.segments}
    assert "partial_peak" in {s.period for s in plan.segments}


def test_event_day_overrides_and_effective_dates():
    base = PRESETS["original"]
    change = ScheduleVersionConfig.model_validate(
        {
            "effective_from": "2027-01-01",
            "name": "new hours",
            "seasons": [
                {
                    "name": "all",
                    "start": "01-01",
                    "end": "12-31",
                    "windows": [{"period": "peak", "start": "17:00", "end": "20:00"}],
                }
            ],
        }
    )
    event = EventConfig(date=date(2026, 8, 15), start="14:00", end="19:00", name="critical peak")
    schedule = Schedule([*base.versions, change], base.timezone, [event])
    saturday = schedule.day_plan(date(2026, 8, 15))
    assert [s.describe() for s in saturday.periods("peak")] == [
        "14:00-19:00 peak (event: critical peak)"
    ]
    assert schedule.day_plan(date(2026, 12, 30)).version == "original defaults"
    after = schedule.day_plan(date(2027, 1, 5))
    assert after.version == "new hours"
    assert [s.describe() for s in after.periods("peak")] == ["17:00-20:00 peak (all peak)"]


def test_overlapping_windows_are_refused_with_their_keys():
    with pytest.raises(ValidationError) as info:
        ScheduleVersionConfig.model_validate(
            {
                "effective_from": "2020-01-01",
                "seasons": [
                    {
                        "name": "all",
                        "start": "01-01",
                        "end": "12-31",
                        "windows": [
                            {"period": "peak", "start": "16:00", "end": "19:00"},
                            {"period": "super_off_peak", "start": "18:00", "end": "22:00"},
                        ],
                    }
                ],
            }
        )
    error = info.value.errors()[0]
    assert error["ctx"]["key"] == "windows.1"
    assert "overlaps windows.0" in error["ctx"]["reason"]


# ---------------------------------------------------------------- SRP E-28 and prices


def _spans(preset: str, day: date) -> list[tuple[str, str, str]]:
    """(period, local start, local end) of each segment of ``day``."""
    p = PRESETS[preset]
    schedule = Schedule(p.versions, p.timezone)
    return [
        (s.period, f"{s.start_minute // 60:02d}:00", f"{s.end_minute // 60:02d}:00")
        for s in schedule.day_plan(day).segments
    ]


@pytest.mark.parametrize("day", [date(2026, 1, 7), date(2026, 7, 15), date(2026, 10, 14)])
def test_srp_e28_weekday_has_its_evening_peak_and_midday_super_off_peak(day):
    assert _spans("srp-e28", day) == [
        ("off_peak", "00:00", "08:00"),
        ("super_off_peak", "08:00", "15:00"),
        ("off_peak", "15:00", "18:00"),
        ("peak", "18:00", "21:00"),
        ("off_peak", "21:00", "24:00"),
    ]


@pytest.mark.parametrize(
    "day",
    [
        date(2026, 7, 11),  # a Saturday
        date(2026, 7, 3),  # Independence Day observed (a Friday)
        date(2026, 12, 25),  # Christmas (a Friday)
        date(2026, 11, 26),  # Thanksgiving
    ],
)
def test_srp_e28_weekends_and_holidays_keep_super_off_peak_without_peak(day):
    assert _spans("srp-e28", day) == [
        ("off_peak", "00:00", "08:00"),
        ("super_off_peak", "08:00", "15:00"),
        ("off_peak", "15:00", "24:00"),
    ]


@pytest.mark.parametrize(
    ("when", "period", "price"),
    [
        # SRP's E-26 sheet effective with the November 2024 billing cycle.
        (datetime(2026, 7, 15, 15), "peak", 0.2610),  # summer peak season
        (datetime(2026, 7, 15, 22), "off_peak", 0.0931),
        (datetime(2026, 6, 10, 15), "peak", 0.2295),  # summer
        (datetime(2026, 9, 9, 10), "off_peak", 0.0928),
        (datetime(2026, 1, 7, 6), "peak", 0.1215),  # winter
        (datetime(2026, 1, 7, 12), "off_peak", 0.0955),
        (datetime(2024, 7, 15, 15), "peak", None),  # before that sheet: no price known
    ],
)
def test_srp_tou_carries_the_published_e26_prices_from_their_effective_date(when, period, price):
    p = PRESETS["srp-tou"]
    schedule = Schedule(p.versions, p.timezone)
    segment = schedule.segment_at(when.replace(tzinfo=ZoneInfo("America/Phoenix")))
    assert segment.period == period
    assert segment.price_per_kwh == price


@pytest.mark.parametrize(
    "preset", ["srp-e28", "aps-tou-4pm-7pm", "pge-e-tou-c", "sce-tou-d-4-9pm", "original"]
)
def test_presets_without_a_readable_price_sheet_carry_no_prices(preset):
    # No invented prices: where no published figure was found the report shows none.
    for version in PRESETS[preset].versions:
        assert all(not season.prices for season in version.seasons), preset
