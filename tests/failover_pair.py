"""Pieces of the two-node failover test (tests/test_energy_failover.py) that run as
their own processes inside a node's network namespace.

``python failover_pair.py systemctl NODE_DIR ARGS...`` stands in for systemctl as
keepalived's notify script calls it: it records every call and starts or stops
the energy service as systemd would (``--no-block``: it returns at once), and
runs the ``gridmate-energy-failover@STATE`` oneshot.

``python failover_pair.py energy CONFIG CLOCK_FILE`` is the energy service itself
(``gridmate energy run``) on a clock shared by every process of the test: the
simulated time runs ``speed`` times faster than the wall clock from a common
origin, so a short peak passes in seconds while keepalived, the broker and the
lease run in real time.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class SharedClock:
    """Simulated time = ``origin`` + (wall time - ``wall_origin``) x ``speed``."""

    origin: datetime
    wall_origin: float
    speed: float

    def now(self) -> datetime:
        return self.origin + timedelta(seconds=(time.time() - self.wall_origin) * self.speed)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)

    def wall_at(self, when: datetime) -> float:
        """The wall-clock time at which simulated time reaches ``when``."""
        return self.wall_origin + (when - self.origin).total_seconds() / self.speed

    def save(self, path: Path) -> None:
        path.write_text(
            json.dumps(
                {"origin": self.origin.isoformat(), "wall": self.wall_origin, "speed": self.speed}
            )
        )

    @classmethod
    def load(cls, path: Path) -> SharedClock:
        data = json.loads(path.read_text())
        return cls(datetime.fromisoformat(data["origin"]).astimezone(UTC), data["wall"],
                   data["speed"])  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not running
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def systemctl(node: Path, args: list[str]) -> int:
    with (node / "systemctl.log").open("a") as log:
        log.write(json.dumps({"wall": time.time(), "args": args}) + "\n")
    verb, unit = args[0], args[-1]
    config = node / "energy.toml"
    pid_file = node / "energy.pid"
    pid = int(pid_file.read_text()) if pid_file.exists() else None
    if unit == "gridmate-energy.service":
        if verb == "start" and (pid is None or not _alive(pid)):
            with (node / "energy.log").open("ab") as output:
                process = subprocess.Popen(
                    [sys.executable, str(HERE / "failover_pair.py"), "energy", str(config),
                     str(node.parent / "clock.json")],
                    stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
                    env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
                )  # fmt: skip
            pid_file.write_text(str(process.pid))
        elif verb == "stop" and pid is not None and _alive(pid):
            os.kill(pid, signal.SIGTERM)
        return 0
    if unit.startswith("gridmate-energy-failover@") and verb == "start":
        state = unit.removeprefix("gridmate-energy-failover@").removesuffix(".service")
        with (node / "failover-notify.log").open("ab") as output:
            subprocess.Popen(
                [sys.executable, "-m", "gridmate", "energy", "failover-notify", "--config",
                 str(config), "INSTANCE", "gridmate-energy", state],
                stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return 0
    return 1


def energy(config: Path, clock_file: Path) -> int:
    from gridmate.energy.service import run
    from gridmate.energy.settings import EnergySettings
    from gridmate.runtime.daemon import Daemon, serve
    from gridmate.runtime.logs import configure_logging
    from gridmate.runtime.settings import load_settings

    settings = load_settings(EnergySettings, config)
    configure_logging(settings.log.level, settings.log.format)
    clock = SharedClock.load(clock_file)

    async def main() -> int:
        daemon = Daemon("energy", settings, clock=clock)
        return await serve("energy", settings, run, daemon=daemon)

    return asyncio.run(main())


if __name__ == "__main__":
    if sys.argv[1] == "systemctl":
        sys.exit(systemctl(Path(sys.argv[2]), sys.argv[3:]))
    sys.exit(energy(Path(sys.argv[2]), Path(sys.argv[3])))
