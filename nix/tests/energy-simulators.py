"""Run gridmate's simulators of the energy service's cloud and devices, in real time.

Used by the energy VM test as the unit gridmate-simulators.service: a Powerwall site
behind the Tesla cloud simulator and the local gateway simulator, a Honeywell
thermostat, the NWS and Open-Meteo forecasts, and the house model that drains and
charges the battery and moves the indoor temperature.

The simulators listen on free loopback ports. Once they are up, this writes into
``--out``:

* ``energy.env``: GRIDMATE_ENERGY_* variables pointing the energy service at them
  (the unit's EnvironmentFile=; the settings file holds placeholders);
* ``tesla_refresh_token`` and ``honeywell_refresh_token``: refresh tokens the
  simulators issued (the energy unit's LoadCredential= files);
* ``status.json``, rewritten every few seconds: the site's reserve and operation
  mode and the thermostat's setpoint and hold, for the test script to assert on.

Then it tells systemd READY=1 and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path

import sdnotify

from gridmate.runtime.clock import SystemClock
from gridmate.sim.honeywell import SimulatedThermostat, honeywell_simulator
from gridmate.sim.house import HouseModel, gateway_simulator, outdoor_profile
from gridmate.sim.tesla_cloud import SimulatedEnergySite, tesla_cloud_simulator
from gridmate.sim.weather import weather_simulator

ZONE = "America/Phoenix"


def _write(path: Path, text: str) -> None:
    """Write atomically, root-only (the files hold tokens)."""
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    temporary.replace(path)


async def main(out: Path, high_f: float) -> None:
    clock = SystemClock()
    site = SimulatedEnergySite(
        percentage_charged=96.0,
        backup_reserve_percent=30,
        operation_mode="autonomous",
        installation_time_zone=ZONE,
    )
    thermostat = SimulatedThermostat(indoor_f=77.0, mode="Cool")
    house = HouseModel(site, ZONE, [thermostat], outdoor=outdoor_profile(high_f, high_f - 20))
    house.step(clock.now())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    async with (
        tesla_cloud_simulator(sites=[site], clock=clock) as cloud,
        honeywell_simulator([thermostat], clock=clock, timezone=ZONE) as honeywell,
        weather_simulator(clock=clock, timezone=ZONE, default_high_f=high_f) as weather,
        gateway_simulator(house) as gateway,
    ):
        _, tesla_refresh = cloud.issue_tokens()
        _write(out / "tesla_refresh_token", tesla_refresh + "\n")
        _write(out / "honeywell_refresh_token", honeywell.issue_refresh_token() + "\n")
        _write(
            out / "energy.env",
            "".join(
                f"GRIDMATE_ENERGY_{key}={value}\n"
                for key, value in {
                    "TESLA__BASE_URL": cloud.base_url,
                    "TESLA__OAUTH__TOKEN_URL": cloud.token_url,
                    "POWERWALL__GATEWAY__URL": gateway.base_url,
                    "HONEYWELL__BASE_URL": honeywell.base_url,
                    "WEATHER__NWS_URL": weather.nws_base_url,
                    "WEATHER__OPEN_METEO_URL": weather.open_meteo_base_url,
                }.items()
            ),
        )
        house_task = asyncio.create_task(house.run(clock, stop, tick_seconds=5.0))
        sdnotify.SystemdNotifier().notify("READY=1\nSTATUS=simulators listening")
        print(f"simulators up: cloud {cloud.base_url}, gateway {gateway.base_url}", flush=True)
        last = None
        while not stop.is_set():
            status = {
                "site": {
                    "percentage_charged": round(site.percentage_charged, 1),
                    "backup_reserve_percent": site.backup_reserve_percent,
                    "operation_mode": site.operation_mode,
                    "writes": len(site.writes),
                },
                "thermostat": {
                    "cool_setpoint_f": thermostat.cool_setpoint_f,
                    "setpoint_status": thermostat.setpoint_status,
                    "indoor_f": round(thermostat.indoor_f, 1),
                    "writes": len(thermostat.writes),
                },
            }
            _write(out / "status.json", json.dumps(status, indent=2) + "\n")
            summary = (status["site"], status["thermostat"]["cool_setpoint_f"],
                       status["thermostat"]["setpoint_status"])  # fmt: skip
            if summary != last:
                print(f"{clock.now().isoformat()} {json.dumps(status)}", flush=True)
                last = summary
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=2.0)
        await house_task


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for the files")
    parser.add_argument("--high", type=float, default=100.0, help="forecast high, °F")
    arguments = parser.parse_args()
    arguments.out.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(arguments.out, arguments.high))
