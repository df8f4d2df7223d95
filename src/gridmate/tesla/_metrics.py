"""Prometheus collectors shared by every Tesla client that uses the same registry.

Several clients (a FleetApi and its token provider, or two providers) may be
built on one daemon registry; prometheus_client refuses a second collector of
the same name, so collectors are created once per registry and reused.
"""

from __future__ import annotations

import weakref
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

_Collector = TypeVar("_Collector", Counter, Gauge)

_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, Counter | Gauge]] = (
    weakref.WeakKeyDictionary()
)


def collector(
    kind: type[_Collector],
    registry: CollectorRegistry,
    name: str,
    documentation: str,
    labels: tuple[str, ...] = (),
) -> _Collector:
    known = _by_registry.setdefault(registry, {})
    existing = known.get(name)
    if existing is None:
        existing = kind(name, documentation, labels, registry=registry)
        known[name] = existing
    if not isinstance(existing, kind):
        raise TypeError(f"metric {name} already exists as {type(existing).__name__}")
    return existing
