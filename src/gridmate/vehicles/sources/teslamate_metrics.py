"""What the vehicles hub knows about TeslaMate's health, as Prometheus metrics.

TeslaMate has no ``/metrics`` of its own. The hub already follows its MQTT output
(and, with ``teslamate.use_database``, its database), so it exports, per car:

* ``gridmate_vehicles_teslamate_healthy``: TeslaMate's ``healthy`` topic, 1 or 0.
  Absent until TeslaMate says (it is not retained, and ``""`` at TeslaMate's start
  means "unknown"). 0 means TeslaMate's access to the Tesla API is failing.
* ``gridmate_vehicles_teslamate_last_message_age_seconds``: since the last message
  about the car (retained ones count from the subscription). Silence is normal while
  a car sleeps, so alert on it only together with the car's activity.
* ``gridmate_vehicles_teslamate_database_lag_seconds``: how much newer TeslaMate's
  newest row about the car is than the last MQTT message (0 when MQTT is current).
  A growing lag means TeslaMate still polls but its MQTT output is lost.

and ``gridmate_vehicles_teslamate_connected`` (1 while subscribed to its broker).
The values are computed at scrape time from the source's own view, with the hub's
clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from gridmate.vehicles.sources.teslamate import TeslaMateSource


def database_lag_seconds(
    newest_in_database: float | None, *, last_live: float | None, session_started: float | None
) -> float | None:
    """Seconds by which TeslaMate's database is ahead of its MQTT output for one car.

    The baseline is the last live message, or the start of the subscription (whose
    retained snapshot covers older rows), as in
    :func:`gridmate.vehicles.sources.teslamate.database_lag_problem`. None without a row.
    """
    if newest_in_database is None:
        return None
    baseline = max(t for t in (last_live, session_started, 0.0) if t is not None)
    return max(0.0, newest_in_database - baseline)


class TeslaMateHealthCollector(Collector):
    """Reads a :class:`TeslaMateSource` at every scrape."""

    def __init__(self, source: TeslaMateSource) -> None:
        self.source = source

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        connected, healthy, age, lag = self._families()
        source = self.source
        connected.add_metric([], 1.0 if source.connected.is_set() else 0.0)
        now = source.clock.now().timestamp()
        for car_id, view in sorted(source.cars.items()):
            vin = source.car_map.vin(car_id)
            if vin is None:
                continue
            if view.healthy is not None:
                healthy.add_metric([vin], 1.0 if view.healthy else 0.0)
            if view.last_message is not None:
                age.add_metric([vin], max(0.0, now - view.last_message))
            behind = database_lag_seconds(
                view.database_newest,
                last_live=view.last_live,
                session_started=source.session_started,
            )
            if behind is not None:
                lag.add_metric([vin], behind)
        return iter((connected, healthy, age, lag))

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "gridmate_vehicles_teslamate_connected",
                "1 while the hub is subscribed to TeslaMate's MQTT broker.",
            ),
            GaugeMetricFamily(
                "gridmate_vehicles_teslamate_healthy",
                "TeslaMate's healthy topic per car (1 true, 0 false: its Tesla API access "
                "fails); absent until TeslaMate publishes it.",
                labels=["vin"],
            ),
            GaugeMetricFamily(
                "gridmate_vehicles_teslamate_last_message_age_seconds",
                "Seconds since the last TeslaMate message about the car.",
                labels=["vin"],
            ),
            GaugeMetricFamily(
                "gridmate_vehicles_teslamate_database_lag_seconds",
                "How much newer TeslaMate's newest database row about the car is than its "
                "last MQTT message (0 when MQTT is current).",
                labels=["vin"],
            ),
        )
