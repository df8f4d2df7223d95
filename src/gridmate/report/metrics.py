"""A day's figures, computed from the energy journal alone.

:func:`day_metrics` is a pure function of the journal's events: the same
journal always gives the same figures, so a past day can be rebuilt at any
time. The result is the ``metrics/YYYY-MM-DD.json`` document described in
docs/daily-report.md (``SCHEMA_VERSION``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any

SCHEMA_VERSION = 1

MAX_SAMPLE_GAP = timedelta(minutes=10)
"""A sample stands for the time until the next one, but never longer than this:
beyond it the journal has a gap (service down) and the time is not counted."""


@dataclass(frozen=True)
class Sample:
    t: datetime
    seconds: float
    """How long this sample stands for (until the next one, capped)."""
    soc: float | None
    battery_kw: float
    grid_kw: float
    load_kw: float
    solar_kw: float
    reserve: int | None
    mode: str | None
    period: str | None
    price: float | None
    thermostats: dict[str, dict[str, Any]]

    @property
    def hours(self) -> float:
        return self.seconds / 3600.0


def _time(value: Any) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def samples_of(events: Iterable[dict[str, Any]]) -> list[Sample]:
    """The day's samples in time order, each with the duration it stands for."""
    raw = sorted(
        ((t, e) for e in events if e.get("kind") == "sample" and (t := _time(e.get("t")))),
        key=lambda pair: pair[0],
    )
    result = []
    for index, (moment, event) in enumerate(raw):
        if index + 1 < len(raw):
            gap = raw[index + 1][0] - moment
        else:
            # The last sample stands for one typical interval.
            gap = (moment - raw[index - 1][0]) if index > 0 else timedelta(minutes=1)
        seconds = min(gap, MAX_SAMPLE_GAP).total_seconds() if gap <= MAX_SAMPLE_GAP else 0.0
        thermostats = event.get("thermostats")
        result.append(
            Sample(
                t=moment,
                seconds=max(0.0, seconds),
                soc=_number(event.get("soc")),
                battery_kw=_number(event.get("battery_kw")) or 0.0,
                grid_kw=_number(event.get("grid_kw")) or 0.0,
                load_kw=_number(event.get("load_kw")) or 0.0,
                solar_kw=_number(event.get("solar_kw")) or 0.0,
                reserve=int(r) if (r := _number(event.get("reserve"))) is not None else None,
                mode=event.get("mode") if isinstance(event.get("mode"), str) else None,
                period=event.get("period") if isinstance(event.get("period"), str) else None,
                price=_number(event.get("price_per_kwh")),
                thermostats=thermostats if isinstance(thermostats, dict) else {},
            )
        )
    return result


def _iso(moment: datetime | None) -> str | None:
    """UTC times are written with a Z, whatever form the journal used."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def peak_windows(samples: Sequence[Sample]) -> list[tuple[datetime, datetime]]:
    windows: list[tuple[datetime, datetime]] = []
    start: datetime | None = None
    for sample in samples:
        if sample.period == "peak" and start is None:
            start = sample.t
        elif sample.period != "peak" and start is not None:
            windows.append((start, sample.t))
            start = None
    if start is not None:
        last = samples[-1]
        windows.append((start, last.t + timedelta(seconds=last.seconds)))
    return windows


def _peak_section(events: Sequence[dict[str, Any]], samples: Sequence[Sample]) -> dict[str, Any]:
    peak_samples = [s for s in samples if s.period == "peak"]
    marks = {
        e.get("event"): e
        for e in sorted(events, key=lambda e: str(e.get("t")))
        if e.get("kind") == "peak" and e.get("event") in ("start", "end")
    }
    start_mark, end_mark = marks.get("start"), marks.get("end")
    soc_start = _number(start_mark.get("soc")) if start_mark else None
    soc_end = _number(end_mark.get("soc")) if end_mark else None
    if soc_start is None and peak_samples:
        soc_start = peak_samples[0].soc
    if soc_end is None and peak_samples:
        soc_end = peak_samples[-1].soc
    imports = [s for s in peak_samples if s.grid_kw > 0.05]
    started_at = _iso(_time(start_mark.get("t"))) if start_mark else None
    if started_at is None and peak_samples:
        started_at = _iso(peak_samples[0].t)
    return {
        "windows": [{"start": _iso(a), "end": _iso(b)} for a, b in peak_windows(samples)],
        "started_at": started_at,
        "ended_at": _iso(_time(end_mark.get("t"))) if end_mark else None,
        "soc_at_start_percent": _round(soc_start, 1),
        "soc_at_end_percent": _round(soc_end, 1),
        "grid_import_kwh": _round(sum(max(s.grid_kw, 0.0) * s.hours for s in peak_samples)),
        "grid_import_target_kwh": 0.0,
        "grid_import_max_kw": _round(max((s.grid_kw for s in imports), default=0.0)),
        "grid_import_minutes": round(sum(s.seconds for s in imports) / 60.0, 1),
        "battery_discharged_kwh": _round(
            sum(max(s.battery_kw, 0.0) * s.hours for s in peak_samples)
        ),
        "minutes_covered": round(sum(s.seconds for s in peak_samples) / 60.0, 1),
    }


def _thermostat_section(
    events: Sequence[dict[str, Any]], samples: Sequence[Sample]
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for sample in samples:
        for ident, state in sample.thermostats.items():
            if not isinstance(state, dict):
                continue
            entry = result.setdefault(
                str(ident), {"timeline": [], "indoor_min_f": None, "indoor_max_f": None}
            )
            setpoint, mode = _number(state.get("setpoint_f")), state.get("mode")
            timeline = entry["timeline"]
            if not timeline or (timeline[-1]["setpoint_f"], timeline[-1]["mode"]) != (
                setpoint,
                mode,
            ):
                timeline.append({"t": _iso(sample.t), "setpoint_f": setpoint, "mode": mode})
            indoor = _number(state.get("indoor_f"))
            if indoor is not None:
                low, high = entry["indoor_min_f"], entry["indoor_max_f"]
                entry["indoor_min_f"] = indoor if low is None else min(low, indoor)
                entry["indoor_max_f"] = indoor if high is None else max(high, indoor)
    for event in events:
        device = str(event.get("device", ""))
        if event.get("kind") == "action" and device.startswith("thermostat:"):
            entry = result.setdefault(
                device.split(":", 1)[1],
                {"timeline": [], "indoor_min_f": None, "indoor_max_f": None},
            )
            entry.setdefault("actions", []).append(
                {
                    "t": _iso(_time(event.get("t"))),
                    "action": event.get("action"),
                    "ok": event.get("ok"),
                }
            )
    return result


def _money_section(samples: Sequence[Sample], currency: str) -> dict[str, Any]:
    priced = [s for s in samples if s.price is not None]
    actual = sum(max(s.grid_kw, 0.0) * s.hours * (s.price or 0.0) for s in priced)
    # Without the battery the house would have imported what the battery supplied and
    # not bought what it charged; exported energy is valued at zero (conservative).
    without = sum(max(s.grid_kw + s.battery_kw, 0.0) * s.hours * (s.price or 0.0) for s in priced)
    unpriced_hours = sum(s.hours for s in samples if s.price is None)
    return {
        "currency": currency,
        "grid_cost": round(actual, 2),
        "grid_cost_without_battery": round(without, 2),
        "saved": round(without - actual, 2),
        "unpriced_hours": round(unpriced_hours, 2),
        "method": "per sample: import × price, against import + battery discharge − battery "
        "charge (floored at 0) × price; exports valued at 0; samples without a price skipped",
    }


def _api_section(events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    latest: dict[str, dict[str, Any]] = {}
    for event in sorted(
        (e for e in events if e.get("kind") == "api_usage"), key=lambda e: str(e.get("t"))
    ):
        api = str(event.get("api"))
        used = int(_number(event.get("used")) or 0)
        budget = _number(event.get("budget"))
        latest[api] = {
            "used": used,
            "budget": int(budget) if budget is not None else None,
            "share_of_budget": round(used / budget, 3) if budget else None,
        }
    return latest


def _health_section(events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    reports = sorted((e for e in events if e.get("kind") == "health"), key=lambda e: str(e["t"]))
    problems: list[str] = []
    for report in reports:
        for problem in report.get("problems") or []:
            if str(problem) not in problems:
                problems.append(str(problem))
    bad = [r for r in reports if not r.get("ok", True)]
    return {
        "ok": not bad,
        "reports": len(reports),
        "unhealthy_reports": len(bad),
        "problems": problems,
        "last": {"t": _iso(_time(reports[-1].get("t"))), "ok": bool(reports[-1].get("ok"))}
        if reports
        else None,
    }


def _precool_section(events: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    decisions = [e for e in events if e.get("kind") == "decision" and e.get("what") == "precool"]
    if not decisions:
        return None
    last = max(decisions, key=lambda e: str(e.get("t")))
    raw_detail = last.get("detail")
    detail: dict[str, Any] = raw_detail if isinstance(raw_detail, dict) else {}
    return {
        "t": _iso(_time(last.get("t"))),
        "decided": detail.get("decided"),
        "forecast_high_f": _number(detail.get("forecast_high_f")),
        "forecast_source": detail.get("source"),
        "threshold_f": _number(detail.get("threshold_f")),
        "detail": detail,
    }


def day_metrics(
    events: Sequence[dict[str, Any]],
    day: date,
    tz: tzinfo,
    *,
    generated_at: datetime,
    recovery_target_percent: float,
    currency: str = "USD",
) -> dict[str, Any]:
    """The metrics document for ``day`` from that day's journal ``events``."""
    samples = samples_of(events)
    socs = [s.soc for s in samples if s.soc is not None]
    day_start = datetime.combine(day, datetime.min.time(), tz)
    day_seconds = ((day_start + timedelta(days=1)).astimezone(UTC) - day_start).total_seconds()
    end_soc = socs[-1] if socs else None
    actions: list[dict[str, Any]] = [
        {
            "t": _iso(_time(e.get("t"))),
            "device": e.get("device"),
            "action": e.get("action"),
            "ok": bool(e.get("ok")),
            "error": e.get("error"),
            "detail": e.get("detail") if isinstance(e.get("detail"), dict) else {},
        }
        for e in sorted(events, key=lambda e: str(e.get("t")))
        if e.get("kind") == "action"
    ]
    decisions = [
        {"t": _iso(_time(e.get("t"))), "what": e.get("what"), "detail": e.get("detail")}
        for e in sorted(events, key=lambda e: str(e.get("t")))
        if e.get("kind") == "decision"
    ]
    notes = []
    covered = sum(s.seconds for s in samples)
    if not samples:
        notes.append("no samples in the journal: the energy service did not run this day")
    elif covered < 0.95 * day_seconds:
        notes.append(f"samples cover {covered / day_seconds:.0%} of the day; figures are partial")
    return {
        "schema_version": SCHEMA_VERSION,
        "date": day.isoformat(),
        "time_zone": str(tz),
        "generated_at": _iso(generated_at),
        "journal": {
            "events": len(events),
            "samples": len(samples),
            "first_sample": _iso(samples[0].t) if samples else None,
            "last_sample": _iso(samples[-1].t) if samples else None,
            "coverage": round(covered / day_seconds, 3),
        },
        "battery": {
            "discharged_kwh": _round(sum(max(s.battery_kw, 0.0) * s.hours for s in samples)),
            "charged_kwh": _round(sum(max(-s.battery_kw, 0.0) * s.hours for s in samples)),
            "soc_min_percent": _round(min(socs), 1) if socs else None,
            "soc_max_percent": _round(max(socs), 1) if socs else None,
            "soc_start_of_day_percent": _round(socs[0], 1) if socs else None,
            "soc_end_of_day_percent": _round(end_soc, 1),
            "recovery_target_percent": recovery_target_percent,
            "recovered": None if end_soc is None else end_soc >= recovery_target_percent,
        },
        "grid": {
            "import_kwh": _round(sum(max(s.grid_kw, 0.0) * s.hours for s in samples)),
            "export_kwh": _round(sum(max(-s.grid_kw, 0.0) * s.hours for s in samples)),
            "import_kwh_by_period": {
                period: _round(
                    sum(max(s.grid_kw, 0.0) * s.hours for s in samples if s.period == period)
                )
                for period in sorted({s.period for s in samples if s.period})
            },
        },
        "home": {
            "load_kwh": _round(sum(max(s.load_kw, 0.0) * s.hours for s in samples)),
            "solar_kwh": _round(sum(max(s.solar_kw, 0.0) * s.hours for s in samples)),
        },
        "peak": _peak_section(events, samples),
        "actions": actions,
        "failed_actions": sum(not a["ok"] for a in actions),
        "decisions": decisions,
        "precool": _precool_section(events),
        "thermostats": _thermostat_section(events, samples),
        "api_usage": _api_section(events),
        "health": _health_section(events),
        "money": _money_section(samples, currency),
        "notes": notes,
    }
