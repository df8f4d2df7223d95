"""``gridmate demo``: every component against built-in simulators, no services needed.

Each component contributes a :class:`Scenario` (module listed in
``SCENARIO_MODULES``, exporting ``scenario``). A scenario drives the real
component over its real wire protocols, prints a timeline through
:meth:`DemoContext.say`, checks what it expects to see, and returns summary
lines. Brokers are started on demand and shared between scenarios.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TextIO

from gridmate.sim.brokers import BrokerUnavailable

# Adding a component's demo is one line here.
SCENARIO_MODULES: tuple[str, ...] = (
    "gridmate.energy.demo",
    # After the energy scenario: the report reads its journal from the shared workdir.
    "gridmate.report.demo",
    "gridmate.vehicles.demo",
    "gridmate.vehicles.demo_sources",
)


class DemoFailure(Exception):
    """A scenario did not see what it expected."""


@dataclass
class DemoContext:
    out: TextIO
    workdir: Path
    speed: float | None
    stack: AsyncExitStack
    _mqtt: tuple[str, int] | None = field(default=None, init=False)
    _kafka: str | None = field(default=None, init=False)

    def say(self, who: str, text: str, when: datetime | None = None) -> None:
        stamp = when.strftime("%a %H:%M") if when else "         "
        print(f"  {stamp}  {who:<11} {text}", file=self.out, flush=True)

    def expect(self, condition: bool, what: str) -> None:
        if not condition:
            raise DemoFailure(what)

    async def mqtt_broker(self) -> tuple[str, int]:
        """A private Mosquitto for the demo, started on first use."""
        address = self._mqtt
        if address is None:
            from gridmate.sim.brokers import mosquitto_broker

            address = self._mqtt = await self.stack.enter_async_context(mosquitto_broker())
        return address

    async def kafka_broker(self) -> str:
        """A private Kafka-protocol broker for the demo, started on first use."""
        address = self._kafka
        if address is None:
            from gridmate.sim.brokers import kafka_broker

            address = self._kafka = await self.stack.enter_async_context(kafka_broker())
        return address


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    run: Callable[[DemoContext], Awaitable[list[str]]]


def load_scenarios(only: Sequence[str] | None = None) -> list[Scenario]:
    scenarios = [importlib.import_module(m).scenario for m in SCENARIO_MODULES]
    if only:
        unknown = set(only) - {s.name for s in scenarios}
        if unknown:
            names = ", ".join(s.name for s in scenarios)
            raise SystemExit(f"gridmate demo: unknown scenario {sorted(unknown)}; have: {names}")
        scenarios = [s for s in scenarios if s.name in only]
    return scenarios


async def run_demo(
    speed: float | None = None, only: Sequence[str] | None = None, out: TextIO | None = None
) -> int:
    out = out or sys.stdout
    scenarios = load_scenarios(only)
    print("gridmate demo: real components, simulated cars, house and cloud APIs\n", file=out)
    results: list[tuple[Scenario, str, list[str], float]] = []
    with tempfile.TemporaryDirectory(prefix="gridmate-demo-") as workdir:
        async with AsyncExitStack() as stack:
            context = DemoContext(out=out, workdir=Path(workdir), speed=speed, stack=stack)
            for scenario in scenarios:
                print(f"== {scenario.title}", file=out, flush=True)
                started = time.monotonic()
                try:
                    summary = await scenario.run(context)
                    outcome = "ok"
                except DemoFailure as failure:
                    summary, outcome = [f"FAILED: {failure}"], "FAILED"
                except BrokerUnavailable as missing:
                    # Not the component's fault: say what to install and go on.
                    summary, outcome = [f"skipped: {missing}"], "skipped"
                    print(f"  skipped: {missing}", file=out)
                results.append((scenario, outcome, summary, time.monotonic() - started))
                print(file=out)
    print("== Summary", file=out)
    for scenario, outcome, summary, seconds in results:
        print(f"  [{outcome}] {scenario.title} ({seconds:.1f}s)", file=out)
        for line in summary:
            print(f"         {line}", file=out)
    if not results:
        print("  no scenarios", file=out)
    counts = {o: sum(r[1] == o for r in results) for o in ("ok", "FAILED", "skipped")}
    skipped = f", {counts['skipped']} skipped" if counts["skipped"] else ""
    print(f"\nscenarios: {counts['ok']} ok, {counts['FAILED']} failed{skipped}", file=out)
    return 1 if counts["FAILED"] else 0
