"""The day's chart: battery SoC, grid power and thermostat setpoints.

matplotlib is imported here, lazily, with the Agg backend (no display), so the
command line starts fast and the chart renders on a headless server.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import date, datetime, timedelta, tzinfo

from gridmate.report.metrics import Sample, peak_windows

CHART_CONTENT_ID = "day-chart@gridmate"


def render_day_chart(samples: Sequence[Sample], day: date, tz: tzinfo) -> bytes:
    """A PNG of the day, three panels sharing the time axis (local time)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import DateFormatter, HourLocator
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 7.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    soc_axes, power_axes, temp_axes = figure.subplots(3, 1, sharex=True)
    times = [s.t.astimezone(tz) for s in samples]
    start = datetime.combine(day, datetime.min.time(), tz)

    for axes in (soc_axes, power_axes, temp_axes):
        for begin, end in peak_windows(samples):
            axes.axvspan(begin.astimezone(tz), end.astimezone(tz), color="#fde68a", alpha=0.5)
        axes.grid(True, alpha=0.3)

    soc_axes.plot(times, [s.soc for s in samples], color="#16a34a", label="battery SoC")
    reserve = [s.reserve for s in samples]
    if any(r is not None for r in reserve):
        soc_axes.step(
            times, reserve, where="post", color="#6b7280", linestyle="--", label="backup reserve"
        )
    soc_axes.set_ylim(0, 100)
    soc_axes.set_ylabel("%")
    soc_axes.set_title(f"Battery, grid and thermostat on {day:%a %d %b %Y} (peak shaded)")
    soc_axes.legend(loc="lower left", fontsize="small")

    power_axes.axhline(0, color="#111", linewidth=0.6)
    power_axes.plot(times, [s.grid_kw for s in samples], color="#dc2626", label="grid (+ import)")
    power_axes.plot(
        times,
        [s.battery_kw for s in samples],
        color="#2563eb",
        alpha=0.7,
        label="battery (+ discharge)",
    )
    power_axes.set_ylabel("kW")
    power_axes.legend(loc="upper left", fontsize="small")

    names = sorted({name for s in samples for name in s.thermostats})
    for name in names:
        values = []
        for s in samples:
            state = s.thermostats.get(name)
            value = state.get("setpoint_f") if isinstance(state, dict) else None
            values.append(value if isinstance(value, int | float) else None)
        temp_axes.step(times, values, where="post", label=f"{name} setpoint")
    temp_axes.set_ylabel("°F")
    if names:
        temp_axes.legend(loc="upper left", fontsize="small")
    else:
        temp_axes.text(
            0.5,
            0.5,
            "no thermostat data",
            transform=temp_axes.transAxes,
            ha="center",
            va="center",
            color="#6b7280",
        )

    temp_axes.set_xlim(start, start + timedelta(days=1))
    temp_axes.xaxis.set_major_locator(HourLocator(byhour=range(0, 24, 3), tz=tz))
    temp_axes.xaxis.set_major_formatter(DateFormatter("%H:%M", tz=tz))

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
