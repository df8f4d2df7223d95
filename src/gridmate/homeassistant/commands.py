"""Command topics: what Home Assistant's switches, buttons and numbers send, validated.

Home Assistant publishes ``ON``/``OFF`` for a switch, ``PRESS`` for a button and the
number as text for a number entity (these are its defaults; the discovery documents
gridmate sends keep them). :func:`parse_command` turns a payload into a value or
raises :class:`CommandRejected` with a one-line reason; the component logs the reason
and publishes its state again, so Home Assistant's optimistic-free entity snaps back to
the value that is really in effect.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

SWITCH_ON = "ON"
SWITCH_OFF = "OFF"
BUTTON_PRESS = "PRESS"
_MAX_PAYLOAD = 64


class CommandRejected(ValueError):
    """A command payload that is not valid for its entity."""


@dataclass(frozen=True)
class CommandSpec:
    key: str
    kind: Literal["switch", "button", "number"]
    minimum: float = 0.0
    maximum: float = 100.0
    step: float = 1.0
    check: Callable[[float], str | None] | None = None
    """For numbers: a reason the value is refused beyond the range, or None."""


def switch(key: str) -> CommandSpec:
    return CommandSpec(key, "switch")


def button(key: str) -> CommandSpec:
    return CommandSpec(key, "button")


def number(
    key: str,
    minimum: float,
    maximum: float,
    step: float = 1.0,
    check: Callable[[float], str | None] | None = None,
) -> CommandSpec:
    return CommandSpec(key, "number", minimum, maximum, step, check)


def parse_command(spec: CommandSpec, payload: bytes) -> bool | float | None:
    """The commanded value: a bool for a switch, a number, None for a button press."""
    if len(payload) > _MAX_PAYLOAD:
        raise CommandRejected(f"{spec.key}: payload longer than {_MAX_PAYLOAD} bytes")
    try:
        text = payload.decode().strip()
    except UnicodeDecodeError:
        raise CommandRejected(f"{spec.key}: payload is not UTF-8") from None
    if spec.kind == "switch":
        if text == SWITCH_ON:
            return True
        if text == SWITCH_OFF:
            return False
        raise CommandRejected(f"{spec.key}: {text!r} is neither {SWITCH_ON} nor {SWITCH_OFF}")
    if spec.kind == "button":
        if text != BUTTON_PRESS:
            raise CommandRejected(f"{spec.key}: {text!r} is not {BUTTON_PRESS}")
        return None
    try:
        value = float(text)
    except ValueError:
        raise CommandRejected(f"{spec.key}: {text!r} is not a number") from None
    if not math.isfinite(value) or not spec.minimum <= value <= spec.maximum:
        raise CommandRejected(f"{spec.key}: {text} is outside {spec.minimum:g}..{spec.maximum:g}")
    steps = (value - spec.minimum) / spec.step
    if abs(steps - round(steps)) > 1e-6:
        raise CommandRejected(f"{spec.key}: {text} is not a multiple of {spec.step:g}")
    if spec.check is not None:
        reason = spec.check(value)
        if reason is not None:
            raise CommandRejected(f"{spec.key}: {reason}")
    return value
