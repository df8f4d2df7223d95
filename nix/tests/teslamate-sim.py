"""gridmate's TeslaMate simulator as a stand-in for TeslaMate's container image.

Used by the teslamate VM test as the image of podman-teslamate.service: it reads the
environment TeslaMate reads (the module's settings plus ENCRYPTION_KEY,
DATABASE_PASS and MQTT_PASSWORD from the env file written before the start), creates
TeslaMate's tables in its database with that password, and publishes one car over
MQTT as TeslaMate does, logging in as MQTT_USERNAME, until it is stopped.

A missing variable ends it with exit status 1 and the variable's name, never a value.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from urllib.parse import quote

from gridmate.sim.teslamate import (
    TeslaMateCarModel,
    create_teslamate_schema,
    simulated_teslamate,
)

VIN = "5YJ3E1EA7KF000001"
REQUIRED = (
    "ENCRYPTION_KEY",
    "DATABASE_USER",
    "DATABASE_PASS",
    "DATABASE_NAME",
    "DATABASE_HOST",
    "MQTT_HOST",
    "MQTT_USERNAME",
    "MQTT_PASSWORD",
)


async def main() -> int:
    missing = [name for name in REQUIRED if not os.environ.get(name)]
    if missing:
        print(f"teslamate-sim: not set: {', '.join(missing)}", file=sys.stderr)
        return 1
    env = os.environ
    dsn = (
        f"postgresql://{quote(env['DATABASE_USER'])}:{quote(env['DATABASE_PASS'], safe='')}"
        f"@{env['DATABASE_HOST']}:{env.get('DATABASE_PORT', '5432')}/{env['DATABASE_NAME']}"
    )
    await create_teslamate_schema(dsn)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    car = TeslaMateCarModel(1, VIN, name="VM Test Car", state="online", battery_level=71)
    async with simulated_teslamate(
        env["MQTT_HOST"],
        int(env.get("MQTT_PORT", "1883")),
        [car],
        namespace=env.get("MQTT_NAMESPACE") or None,
        database=dsn,
        polling=True,
        username=env["MQTT_USERNAME"],
        password=env["MQTT_PASSWORD"],
    ):
        print("teslamate-sim: publishing", flush=True)
        await stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
