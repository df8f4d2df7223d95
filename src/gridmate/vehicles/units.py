"""Metric source values stored in the catalogue's US units without losing them.

The catalogue keeps distances in miles and speeds in mph (Fleet Telemetry's units).
TeslaMate publishes kilometres and km/h, and Home Assistant converts the stored miles
back for metric users with its own ratios (``homeassistant.util.unit_conversion``):
``km = mi / (1 / 1609.344) * (1 / 1000)``. A rounded mile value comes back as
88.0311168 km/h for TeslaMate's 88, and even the unrounded quotient is a few ulps
off for about a quarter of the values. Of the floats next to the quotient, these
functions return the one Home Assistant converts back closest to the source's
number: exactly the source's number for most values (about 9 in 10), and one unit
in the last place of a double away (88.00000000000001) for the values no float maps
onto, since multiplying by 1.609344 skips some doubles. Display precision is Home
Assistant's business (``suggested_display_precision``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

# Home Assistant's constants, computed the way it computes them.
_MILE_TO_M = 0.0254 * 12 * 3 * 1760
_KM_TO_M = 1000
_HRS_TO_SECS = 60 * 60
_MILES_RATIO = 1 / _MILE_TO_M
_KM_RATIO = 1 / _KM_TO_M
_MPH_RATIO = _HRS_TO_SECS / _MILE_TO_M
_KMH_RATIO = _HRS_TO_SECS / _KM_TO_M
_SEARCH_ULPS = 64


def km_from_miles(miles: float) -> float:
    """What Home Assistant shows a metric user for ``miles``."""
    return (miles / _MILES_RATIO) * _KM_RATIO


def kmh_from_mph(mph: float) -> float:
    return (mph / _MPH_RATIO) * _KMH_RATIO


def _exact_inverse(value: float, guess: float, forward: Callable[[float], float]) -> float:
    best, error = guess, abs(forward(guess) - value)
    up = down = guess
    for _ in range(_SEARCH_ULPS):
        if error == 0:
            break
        up, down = math.nextafter(up, math.inf), math.nextafter(down, -math.inf)
        for candidate in (up, down):
            miss = abs(forward(candidate) - value)
            if miss < error:
                best, error = candidate, miss
    return best


def miles_from_km(km: float) -> float:
    return _exact_inverse(km, km * _KM_TO_M / _MILE_TO_M, km_from_miles)


def mph_from_kmh(kmh: float) -> float:
    return _exact_inverse(kmh, kmh * _KM_TO_M / _MILE_TO_M, kmh_from_mph)
