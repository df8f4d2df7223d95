"""Produce one Fleet Telemetry record to Kafka, as Tesla's fleet-telemetry server would.

Used by the vehicles VM test. The record is built with gridmate's own generated
protobuf code (gridmate.sim.fleet_telemetry), keyed by VIN and with the server's
headers, as protobuf (the server's default) or, with ``--json``, as protojson
(the server's ``transmit_decoded_records``).

    produce-telemetry.py --bootstrap 127.0.0.1:9092 --namespace tesla \\
        --vin 5YJ3F7EB000000001 --signal BatteryLevel=63.5 --signal VehicleName=Car
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer

from gridmate.sim.fleet_telemetry import telemetry_record


def _value(text: str) -> Any:
    """A signal value from the command line: a number when it looks like one."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


async def produce(
    bootstrap: str, namespace: str, vin: str, signals: dict[str, Any], as_json: bool
) -> None:
    record = telemetry_record(namespace, vin, datetime.now(UTC), signals, as_json=as_json)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        metadata = await producer.send_and_wait(
            record.topic, record.value, key=record.key, headers=record.headers
        )
    finally:
        await producer.stop()
    form = "protojson" if as_json else "protobuf"
    print(f"produced {form} record to {record.topic} partition {metadata.partition} "
          f"offset {metadata.offset}: {signals}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--vin", required=True)
    parser.add_argument(
        "--signal", action="append", default=[], metavar="NAME=VALUE", help="repeatable"
    )
    parser.add_argument("--json", action="store_true", help="protojson instead of protobuf")
    arguments = parser.parse_args()
    signals = {}
    for item in arguments.signal:
        name, _, value = item.partition("=")
        signals[name] = _value(value)
    asyncio.run(
        produce(arguments.bootstrap, arguments.namespace, arguments.vin, signals, arguments.json)
    )


if __name__ == "__main__":
    main()
