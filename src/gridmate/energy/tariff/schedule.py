"""Time-of-use schedules: which price period applies at any instant.

A tariff is a list of *schedule versions*, each with an ``effective_from``
date, so a utility's change of hours is a config edit rather than a code
change. A version has *seasons* (date ranges that together cover the year),
each with *windows* (a period such as ``peak`` on some days between two
wall-clock times, possibly wrapping midnight), an optional *holiday* rule
(which days count, how Saturday and Sunday holidays are observed, and what a
holiday is treated as) and a default period for the hours no window covers.
One-off *events* (critical peak days) override everything in their hours.

All times are the utility's local wall-clock time in its IANA time zone, so
DST is handled by :mod:`zoneinfo`: a 4-9 PM peak is 4-9 PM local on both sides
of a DST change.

The configuration models (``*Config``) validate and name the offending key;
:class:`Schedule` compiles them into per-day plans (cached) so a lookup is a
time-zone conversion plus an index, cheap enough to run every minute of a
simulated year in a benchmark.

Rules that make every instant belong to exactly one period:

* seasons must cover every day of the (leap) year exactly once;
* windows of one season must not overlap in any week (checked at load);
* a window that wraps midnight belongs to the day it starts on: the hours
  after midnight follow that day's season, day type and holiday status;
* within a day, the day's own windows take precedence over the tail of the
  previous evening's wrapping window, and events take precedence over both.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import holidays as holidays_lib
from pydantic import BeforeValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from gridmate.runtime.settings import Section

__all__ = [
    "HOLIDAY_KEYS",
    "PERIODS",
    "DayPlan",
    "EventConfig",
    "HolidayConfig",
    "Period",
    "Schedule",
    "ScheduleVersionConfig",
    "SeasonConfig",
    "Segment",
    "WindowConfig",
]

Period = Literal["peak", "partial_peak", "off_peak", "super_off_peak"]
PERIODS: tuple[Period, ...] = ("peak", "partial_peak", "off_peak", "super_off_peak")

MINUTES_PER_DAY = 1440
BLOCK_HORIZON_DAYS = 8
"""How many days ahead :meth:`Schedule.next_block` looks for the next block."""
_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_SETS = {
    "weekdays": frozenset(range(5)),
    "weekends": frozenset({5, 6}),
    "every_day": frozenset(range(7)),
}
SUNDAY = 6


# ---------------------------------------------------------------- parsing helpers


def _parse_clock(value: Any, *, allow_24: bool) -> int:
    """'HH:MM' (or a datetime.time) to minutes after midnight; '24:00' as 1440."""
    if isinstance(value, time):
        return value.hour * 60 + value.minute
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= (MINUTES_PER_DAY if allow_24 else MINUTES_PER_DAY - 1):
            return value
        raise ValueError("minutes after midnight out of range")
    if not isinstance(value, str):
        raise ValueError("expected a time as 'HH:MM'")
    try:
        hours_text, minutes_text = value.strip().split(":")
        hours, minutes = int(hours_text), int(minutes_text)
    except ValueError:
        raise ValueError(f"expected a time as 'HH:MM', got {value!r}") from None
    if allow_24 and hours == 24 and minutes == 0:
        return MINUTES_PER_DAY
    if not (0 <= hours <= 23 and 0 <= minutes <= 59):
        raise ValueError(f"{value!r} is not a time of day (00:00-23:59{', or 24:00' * allow_24})")
    return hours * 60 + minutes


def format_minutes(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _parse_month_day(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)) and len(value) == 2:
        month, day = int(value[0]), int(value[1])
    elif isinstance(value, str):
        try:
            month_text, day_text = value.strip().split("-")
            month, day = int(month_text), int(day_text)
        except ValueError:
            raise ValueError(f"expected a date as 'MM-DD', got {value!r}") from None
    else:
        raise ValueError("expected a date as 'MM-DD'")
    try:
        date(2000, month, day)  # a leap year, so 02-29 is accepted
    except ValueError:
        raise ValueError(f"{value!r} is not a day of the year") from None
    return month, day


def _parse_days(value: Any) -> frozenset[int]:
    if isinstance(value, str):
        key = value.strip().lower().replace("-", "_").replace(" ", "_")
        if key in _DAY_SETS:
            return _DAY_SETS[key]
        value = [value]
    if isinstance(value, (list, tuple, set, frozenset)):
        days: set[int] = set()
        for item in value:
            if isinstance(item, int) and not isinstance(item, bool) and 0 <= item <= 6:
                days.add(item)
                continue
            name = str(item).strip().lower()[:3]
            if name not in _DAY_NAMES:
                raise ValueError(
                    f"unknown day {item!r}; use 'weekdays', 'weekends', 'every_day' or a list "
                    "of mon, tue, wed, thu, fri, sat, sun"
                )
            days.add(_DAY_NAMES.index(name))
        if not days:
            raise ValueError("the list of days is empty")
        return frozenset(days)
    raise ValueError("expected 'weekdays', 'weekends', 'every_day' or a list of day names")


ClockTime = Annotated[int, BeforeValidator(lambda v: _parse_clock(v, allow_24=False))]
ClockEnd = Annotated[int, BeforeValidator(lambda v: _parse_clock(v, allow_24=True))]
MonthDay = Annotated[tuple[int, int], BeforeValidator(_parse_month_day)]
DaySet = Annotated[frozenset[int], BeforeValidator(_parse_days)]


def _key_error(key: str, reason: str) -> PydanticCustomError:
    # The settings loader appends ctx["key"] to the location, so the message names
    # the exact key (e.g. "...windows.0.end") rather than only its table.
    return PydanticCustomError("tariff", "{reason}", {"key": key, "reason": reason})


# ---------------------------------------------------------------- configuration


class WindowConfig(Section):
    """One recurring window, e.g. peak 16:00-19:00 on weekdays."""

    period: Period
    start: ClockTime = Field(description="Local wall-clock start, 'HH:MM'.")
    end: ClockEnd = Field(
        description="Local wall-clock end, 'HH:MM' (exclusive); '24:00' = midnight."
    )
    days: DaySet = Field(
        _DAY_SETS["weekdays"],
        description="'weekdays', 'weekends', 'every_day' or a list such as ['mon', 'wed'].",
    )
    wraps: bool = Field(
        False,
        description="Set when the window crosses midnight (end earlier than start), "
        "e.g. super off-peak 23:00-05:00; the window belongs to the day it starts on.",
    )

    @model_validator(mode="after")
    def _check_order(self) -> WindowConfig:
        if self.start == self.end:
            raise _key_error("end", "the window is empty (end equals start)")
        if self.wraps and self.end > self.start:
            raise _key_error(
                "wraps",
                f"wraps = true but the window {format_minutes(self.start)}-"
                f"{format_minutes(self.end)} does not cross midnight",
            )
        if not self.wraps and self.end < self.start:
            raise _key_error(
                "end",
                f"ends ({format_minutes(self.end)}) before it starts "
                f"({format_minutes(self.start)}); set wraps = true if the window is meant to "
                "cross midnight",
            )
        if self.wraps and self.end == MINUTES_PER_DAY:
            raise _key_error("end", "a wrapping window cannot end at 24:00")
        return self

    def week_minutes(self) -> int:
        """A bit set over the 10080 minutes of a week (Monday 00:00 = bit 0)."""
        week = 7 * MINUTES_PER_DAY
        mask = 0
        for day in self.days:
            begin = day * MINUTES_PER_DAY + self.start
            length = (
                (MINUTES_PER_DAY - self.start + self.end) if self.wraps else self.end - self.start
            )
            for offset in range(0, length):
                mask |= 1 << ((begin + offset) % week)
        return mask


class SeasonConfig(Section):
    name: str = Field(min_length=1)
    start: MonthDay = Field(description="First day, 'MM-DD'.")
    end: MonthDay = Field(
        description="Last day (inclusive), 'MM-DD'; may be earlier to wrap New Year."
    )
    windows: list[WindowConfig] = Field(default_factory=list)
    prices: dict[Period, float] = Field(
        {}, description="Price per kWh of each period in this season (optional)."
    )

    def contains(self, month: int, day: int) -> bool:
        if self.start <= self.end:
            return self.start <= (month, day) <= self.end
        return (month, day) >= self.start or (month, day) <= self.end

    @model_validator(mode="after")
    def _check_overlaps(self) -> SeasonConfig:
        masks = [w.week_minutes() for w in self.windows]
        for i, first in enumerate(masks):
            for j in range(i + 1, len(masks)):
                common = first & masks[j]
                if common:
                    minute = (common & -common).bit_length() - 1
                    day, at = divmod(minute, MINUTES_PER_DAY)
                    raise _key_error(
                        f"windows.{j}",
                        f"overlaps windows.{i} (both cover {_DAY_NAMES[day]} "
                        f"{format_minutes(at)}); each minute must belong to one window",
                    )
        return self


HolidayKey = Literal[
    "new_years_day",
    "mlk_day",
    "presidents_day",
    "cesar_chavez_day",
    "memorial_day",
    "juneteenth",
    "independence_day",
    "labor_day",
    "columbus_day",
    "veterans_day",
    "thanksgiving",
    "day_after_thanksgiving",
    "christmas_eve",
    "christmas",
    "new_years_eve",
]
HOLIDAY_KEYS: tuple[str, ...] = HolidayKey.__args__  # type: ignore[attr-defined]

# Names as the holidays library spells them (federal calendar, then California's,
# which adds Cesar Chavez Day and the day after Thanksgiving).
_LIBRARY_NAMES: dict[str, tuple[str, ...]] = {
    "new_years_day": ("New Year's Day",),
    "mlk_day": ("Martin Luther King Jr. Day",),
    "presidents_day": ("Washington's Birthday", "Presidents' Day"),
    "cesar_chavez_day": ("Cesar Chavez Day",),
    "memorial_day": ("Memorial Day",),
    "juneteenth": ("Juneteenth National Independence Day",),
    "independence_day": ("Independence Day",),
    "labor_day": ("Labor Day",),
    "columbus_day": ("Columbus Day",),
    "veterans_day": ("Veterans Day",),
    "thanksgiving": ("Thanksgiving Day", "Thanksgiving"),
    "day_after_thanksgiving": ("Day After Thanksgiving",),
    "christmas": ("Christmas Day",),
}
_FIXED_DATES = {"christmas_eve": (12, 24), "new_years_eve": (12, 31)}


class HolidayConfig(Section):
    """Which days the utility treats as holidays, and how."""

    days: list[HolidayKey] = Field(description="Holidays that count (keys such as 'christmas').")
    saturday: Literal["friday", "none"] = Field(
        "friday", description="A holiday on Saturday is also observed on the Friday before."
    )
    sunday: Literal["monday", "none"] = Field(
        "monday", description="A holiday on Sunday is also observed on the Monday after."
    )
    not_moved: list[HolidayKey] = Field(
        [], description="Holidays that count only on their own date, never observed elsewhere."
    )
    extra_dates: list[date] = Field([], description="Further dates the utility names.")
    treat_as: Literal["weekend", "peak", "partial_peak", "off_peak", "super_off_peak"] = Field(
        "off_peak",
        description="'weekend' applies the windows of a Sunday; a period name makes the "
        "whole day that period.",
    )


class EventConfig(Section):
    """A one-off event such as a critical peak day."""

    date: date
    start: ClockTime
    end: ClockEnd
    period: Period = "peak"
    name: str = "critical peak"
    price_per_kwh: float | None = None

    @model_validator(mode="after")
    def _check_order(self) -> EventConfig:
        if self.end <= self.start:
            raise _key_error("end", "an event must end after it starts, on the same day")
        return self


class ScheduleVersionConfig(Section):
    effective_from: date = Field(description="First local day this version applies to.")
    name: str = ""
    utility: str = ""
    default_period: Period = Field("off_peak", description="The period of hours no window covers.")
    seasons: list[SeasonConfig] = Field(min_length=1)
    holidays: HolidayConfig | None = None

    @model_validator(mode="after")
    def _check_seasons_cover_the_year(self) -> ScheduleVersionConfig:
        day = date(2000, 1, 1)  # a leap year
        while day.year == 2000:
            owners = [i for i, s in enumerate(self.seasons) if s.contains(day.month, day.day)]
            if len(owners) != 1:
                what = (
                    "no season covers it"
                    if not owners
                    else f"seasons {', '.join(str(i) for i in owners)} all cover it"
                )
                raise _key_error(
                    "seasons",
                    f"every day of the year must be in exactly one season; "
                    f"{day.strftime('%m-%d')}: {what}",
                )
            day += timedelta(days=1)
        return self


# ---------------------------------------------------------------- compiled plan


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of one local day that has one period."""

    day: date
    start_minute: int
    end_minute: int
    start: datetime
    """UTC."""
    end: datetime
    """UTC, exclusive."""
    period: Period
    season: str
    source: Literal["window", "default", "holiday", "event"]
    label: str
    price_per_kwh: float | None

    def contains(self, when: datetime) -> bool:
        return self.start <= when < self.end

    def describe(self) -> str:
        return (
            f"{format_minutes(self.start_minute)}-{format_minutes(self.end_minute)} "
            f"{self.period} ({self.label})"
        )


@dataclass(frozen=True, slots=True)
class DayPlan:
    day: date
    version: str
    season: str
    holiday: str | None
    segments: tuple[Segment, ...]
    _starts: tuple[int, ...]

    def segment_at_minute(self, minute: int) -> Segment:
        return self.segments[bisect.bisect_right(self._starts, minute) - 1]

    def periods(self, period: str) -> list[Segment]:
        return [s for s in self.segments if s.period == period]


@dataclass(frozen=True, slots=True)
class _Cell:
    period: Period
    source: Literal["window", "default", "holiday", "event"]
    label: str
    price_per_kwh: float | None


def _local_to_utc(day: date, minute: int, tz: ZoneInfo) -> datetime:
    if minute >= MINUTES_PER_DAY:
        day, minute = day + timedelta(days=1), minute - MINUTES_PER_DAY
    local = datetime(day.year, day.month, day.day, minute // 60, minute % 60, tzinfo=tz)
    # A wall time inside a spring-forward gap does not exist; zoneinfo maps it with
    # the offset before the change, which lands on the first real minute after it.
    return local.astimezone(UTC)


def as_utc(when: datetime) -> datetime:
    """The same instant in UTC, the zone of every segment and block boundary.

    Comparing two aware times in different zones looks up both UTC offsets on every
    comparison; in the same zone it compares the fields. A naive time is returned as
    it is, so comparing it with a boundary still fails rather than being taken as the
    machine's local time.
    """
    if when.tzinfo is None or when.tzinfo is UTC:
        return when
    return when.astimezone(UTC)


@functools.lru_cache(maxsize=64)
def _library_holidays(year: int) -> dict[str, date]:
    found: dict[str, date] = {}
    for calendar in (
        holidays_lib.country_holidays("US", years=year, observed=False),
        holidays_lib.country_holidays("US", subdiv="CA", years=year, observed=False),
    ):
        for when, names in calendar.items():
            for name in str(names).split("; "):
                for key, aliases in _LIBRARY_NAMES.items():
                    if name in aliases and key not in found:
                        found[key] = when
    for key, (month, day) in _FIXED_DATES.items():
        found[key] = date(year, month, day)
    return found


def holiday_dates(rules: HolidayConfig, year: int) -> dict[date, str]:
    """The year's holiday dates under ``rules`` with a readable name each."""
    result: dict[date, str] = {}
    for source_year in (year - 1, year, year + 1):  # observed dates cross New Year
        library = _library_holidays(source_year)
        for key in rules.days:
            when = library.get(key)
            if when is None:
                continue
            name = key.replace("_", " ")
            if when.year == year:
                result.setdefault(when, name)
            if key in rules.not_moved:
                continue
            observed = None
            if when.weekday() == 5 and rules.saturday == "friday":
                observed = when - timedelta(days=1)
            elif when.weekday() == 6 and rules.sunday == "monday":
                observed = when + timedelta(days=1)
            if observed is not None and observed.year == year:
                result.setdefault(observed, f"{name} (observed)")
    for when in rules.extra_dates:
        if when.year == year:
            result.setdefault(when, "utility holiday")
    return result


class _Version:
    """A schedule version with per-year holiday caches."""

    def __init__(self, config: ScheduleVersionConfig) -> None:
        self.config = config
        self.name = config.name or f"from {config.effective_from.isoformat()}"
        self._holidays: dict[int, dict[date, str]] = {}

    def season_for(self, day: date) -> SeasonConfig:
        for season in self.config.seasons:
            if season.contains(day.month, day.day):
                return season
        raise AssertionError("validated seasons cover every day")  # pragma: no cover

    def holiday_name(self, day: date) -> str | None:
        rules = self.config.holidays
        if rules is None:
            return None
        year = self._holidays.get(day.year)
        if year is None:
            year = self._holidays[day.year] = holiday_dates(rules, day.year)
        return year.get(day)


class Schedule:
    """A compiled tariff: versions by effective date, events and the local time zone."""

    def __init__(
        self,
        versions: Sequence[ScheduleVersionConfig],
        timezone: str | ZoneInfo,
        events: Iterable[EventConfig] = (),
        *,
        cache_days: int = 800,
    ) -> None:
        if not versions:
            raise ValueError("a schedule needs at least one version")
        ordered = sorted(versions, key=lambda v: v.effective_from)
        self._versions = [_Version(v) for v in ordered]
        self._effective = [v.effective_from for v in ordered]
        self.tz = timezone if isinstance(timezone, ZoneInfo) else ZoneInfo(timezone)
        self._events: dict[date, list[EventConfig]] = {}
        for event in events:
            self._events.setdefault(event.date, []).append(event)
        self._cache: dict[date, DayPlan] = {}
        self._block_cache: dict[
            tuple[date, frozenset[str], int], tuple[tuple[datetime, datetime], ...]
        ] = {}
        self._cache_days = cache_days

    # -------------------------------------------------------------- lookups

    def version_for(self, day: date) -> _Version:
        # Days before the first effective date use the first version.
        index = max(0, bisect.bisect_right(self._effective, day) - 1)
        return self._versions[index]

    def local_date(self, when: datetime) -> date:
        return when.astimezone(self.tz).date()

    def segment_at(self, when: datetime) -> Segment:
        """The segment (and so the period) that contains ``when`` (aware datetime)."""
        local = when.astimezone(self.tz)
        plan = self.day_plan(local.date())
        return plan.segment_at_minute(local.hour * 60 + local.minute)

    def period_at(self, when: datetime) -> Period:
        return self.segment_at(when).period

    def block_at(
        self, when: datetime, periods: frozenset[str] | None = None
    ) -> tuple[datetime, datetime, Segment]:
        """The contiguous stretch around ``when`` whose periods are all in ``periods``.

        ``periods`` defaults to the period at ``when``. The stretch follows across
        midnight. Returns (start UTC, end UTC, the segment containing ``when``).
        """
        segment = self.segment_at(when)
        wanted = periods if periods is not None else frozenset({segment.period})
        if segment.period not in wanted:
            return segment.start, segment.end, segment
        limit = 14  # days; an every-day 24-hour "peak" must not loop forever
        plan = self.day_plan(segment.day)
        index = plan.segments.index(segment)
        end, day, i = segment.end, segment.day, index
        while (day - segment.day).days <= limit:
            i += 1
            if i == len(plan.segments):
                day += timedelta(days=1)
                plan, i = self.day_plan(day), 0
            if plan.segments[i].period not in wanted:
                break
            end = plan.segments[i].end
        plan = self.day_plan(segment.day)
        start, day, i = segment.start, segment.day, index
        while (segment.day - day).days <= limit:
            i -= 1
            if i < 0:
                day -= timedelta(days=1)
                plan = self.day_plan(day)
                i = len(plan.segments) - 1
            if plan.segments[i].period not in wanted:
                break
            start = plan.segments[i].start
        return start, end, segment

    def next_block(
        self,
        when: datetime,
        periods: frozenset[str] | str = "peak",
        *,
        horizon_days: int = BLOCK_HORIZON_DAYS,
    ) -> tuple[datetime, datetime] | None:
        """The current or next contiguous stretch of ``periods`` that ends after ``when``."""
        wanted = frozenset({periods}) if isinstance(periods, str) else periods
        instant = as_utc(when)
        return self._next_block(self.local_date(instant), instant, wanted, horizon_days)

    def segment_and_block(
        self, when: datetime, periods: frozenset[str]
    ) -> tuple[Segment, tuple[datetime, datetime] | None]:
        """:meth:`segment_at` and :meth:`next_block` together, with one conversion to
        local time for both (the planner asks for both every cycle)."""
        instant = as_utc(when)
        local = instant.astimezone(self.tz)
        day = local.date()
        segment = self.day_plan(day).segment_at_minute(local.hour * 60 + local.minute)
        return segment, self._next_block(day, instant, periods, BLOCK_HORIZON_DAYS)

    def _next_block(
        self, day: date, instant: datetime, wanted: frozenset[str], horizon_days: int
    ) -> tuple[datetime, datetime] | None:
        for block in self._blocks(day, wanted, horizon_days):
            if block[1] > instant:
                return block
        return None

    def _blocks(
        self, day: date, wanted: frozenset[str], horizon_days: int
    ) -> tuple[tuple[datetime, datetime], ...]:
        """Stretches of ``wanted`` touching ``day``, then the first one after it (cached)."""
        key = (day, wanted, horizon_days)
        cached = self._block_cache.get(key)
        if cached is not None:
            return cached
        blocks: list[tuple[datetime, datetime]] = []
        for offset in range(horizon_days):
            for segment in self.day_plan(day + timedelta(days=offset)).segments:
                if segment.period not in wanted:
                    continue
                if blocks and segment.start < blocks[-1][1]:
                    continue  # part of the stretch already found
                start, end, _ = self.block_at(segment.start, wanted)
                blocks.append((start, end))
            if offset > 0 and blocks and blocks[-1][1] > self.day_plan(day).segments[-1].end:
                break  # found the first stretch reaching past the day
        result = tuple(blocks)
        if len(self._block_cache) >= self._cache_days:
            self._block_cache.clear()
        self._block_cache[key] = result
        return result

    # -------------------------------------------------------------- compilation

    def day_plan(self, day: date) -> DayPlan:
        plan = self._cache.get(day)
        if plan is None:
            plan = self._compile(day)
            if len(self._cache) >= self._cache_days:
                self._cache.clear()
            self._cache[day] = plan
        return plan

    def _day_type(self, version: _Version, day: date) -> tuple[int | None, _Cell | None]:
        """Weekday used to match windows (None = no windows) and a whole-day override."""
        holiday = version.holiday_name(day)
        rules = version.config.holidays
        if holiday is None or rules is None:
            return day.weekday(), None
        if rules.treat_as == "weekend":
            return SUNDAY, None
        season = version.season_for(day)
        return None, _Cell(
            rules.treat_as, "holiday", f"holiday: {holiday}", season.prices.get(rules.treat_as)
        )

    def _compile(self, day: date) -> DayPlan:
        version = self.version_for(day)
        season = version.season_for(day)
        default = _Cell(
            version.config.default_period,
            "default",
            f"{season.name} {version.config.default_period}",
            season.prices.get(version.config.default_period),
        )
        cells: list[_Cell] = [default] * MINUTES_PER_DAY

        # Tail of yesterday's wrapping windows (they belong to yesterday).
        yesterday = day - timedelta(days=1)
        y_version = self.version_for(yesterday)
        y_season = y_version.season_for(yesterday)
        y_weekday, _ = self._day_type(y_version, yesterday)
        tail_end = 0
        if y_weekday is not None:
            for window in y_season.windows:
                if window.wraps and y_weekday in window.days:
                    cell = _Cell(
                        window.period,
                        "window",
                        f"{y_season.name} {window.period}",
                        y_season.prices.get(window.period),
                    )
                    cells[0 : window.end] = [cell] * window.end
                    tail_end = max(tail_end, window.end)

        weekday, override = self._day_type(version, day)
        if override is not None:
            # A holiday's own hours; the tail of yesterday's window keeps its period.
            cells[tail_end:] = [override] * (MINUTES_PER_DAY - tail_end)
        elif weekday is not None:
            for window in season.windows:
                if weekday not in window.days:
                    continue
                cell = _Cell(
                    window.period,
                    "window",
                    f"{season.name} {window.period}",
                    season.prices.get(window.period),
                )
                stop = MINUTES_PER_DAY if window.wraps else window.end
                cells[window.start : stop] = [cell] * (stop - window.start)

        for event in self._events.get(day, ()):
            price = (
                event.price_per_kwh
                if event.price_per_kwh is not None
                else season.prices.get(event.period)
            )
            cell = _Cell(event.period, "event", f"event: {event.name}", price)
            cells[event.start : event.end] = [cell] * (event.end - event.start)

        segments: list[Segment] = []
        begin = 0
        for minute in range(1, MINUTES_PER_DAY + 1):
            if minute == MINUTES_PER_DAY or cells[minute] != cells[begin]:
                cell = cells[begin]
                segments.append(
                    Segment(
                        day=day,
                        start_minute=begin,
                        end_minute=minute,
                        start=_local_to_utc(day, begin, self.tz),
                        end=_local_to_utc(day, minute, self.tz),
                        period=cell.period,
                        season=season.name,
                        source=cell.source,
                        label=cell.label,
                        price_per_kwh=cell.price_per_kwh,
                    )
                )
                begin = minute
        return DayPlan(
            day=day,
            version=version.name,
            season=season.name,
            holiday=version.holiday_name(day),
            segments=tuple(segments),
            _starts=tuple(s.start_minute for s in segments),
        )


__all__ += ["as_utc", "format_minutes", "holiday_dates"]
