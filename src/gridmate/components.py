"""The components the CLI offers. Adding one is one line here."""

from __future__ import annotations

import importlib

from gridmate.runtime.component import Component

# Each module exports ``component``.
COMPONENT_MODULES: tuple[str, ...] = (
    "gridmate.backup.component",
    "gridmate.energy.component",
    "gridmate.report.component",
    "gridmate.vehicles.component",
)


def all_components() -> list[Component]:
    return [importlib.import_module(name).component for name in COMPONENT_MODULES]
