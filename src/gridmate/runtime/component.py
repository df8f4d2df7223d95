"""What a component (vehicles, energy, report, ...) provides to the CLI."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gridmate.runtime.daemon import RunFunction
from gridmate.runtime.settings import ComponentSettings


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    return None


@dataclass(frozen=True)
class Command:
    """An extra ``gridmate <component> <name>`` command, run with the loaded settings."""

    name: str
    help: str
    execute: Callable[[Any, argparse.Namespace], int | Awaitable[int]]
    add_arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments
    description: str | None = None
    shortcut: bool = False
    """Also offered as ``gridmate <name>``, for commands people and units call by name."""


@dataclass(frozen=True)
class Component:
    name: str
    summary: str
    """One line for ``gridmate --help``."""
    description: str
    """A paragraph for ``gridmate <name> --help``."""
    settings_model: type[ComponentSettings]
    run: RunFunction | None = None
    """The daemon's main coroutine; None for components that only have commands."""
    commands: tuple[Command, ...] = field(default=())
