"""Benchmark of the vehicles hub: Fleet Telemetry records from Kafka to MQTT.

Starts a private Kafka-protocol broker and Mosquitto (gridmate.sim.brokers), runs the
real service (``gridmate vehicles run``) in a child process pinned to one CPU core,
and measures with realistic records (a simulated car's signals, about 10 datums each,
protobuf with the server's headers):

1. sustained throughput: a backlog of records consumed as fast as the hub can;
2. latency from produce to MQTT receive (p50/p99) at a steady 100 and 1,000 records/s;
3. resident memory of the hub once it holds 10,000 distinct vehicles.

The producer, the MQTT receiver and the brokers run on the other cores.

    .venv/bin/python bench/vehicles_pipeline.py [--backlog 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
from aiokafka import AIOKafkaProducer

from gridmate.sim.brokers import create_kafka_topics, free_port, kafka_broker, mosquitto_broker
from gridmate.sim.fleet_telemetry import SimulatedCar, sample_vin, telemetry_record
from gridmate.vehicles.telemetry.kafka import topic_names

NAMESPACE = "bench"
BASE = "gridmate"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def records_consumed(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(m.group(1))
        for m in re.finditer(r"^gridmate_vehicles_records_total\{[^}]*\} (\S+)$", text, re.M)
    )


def delivery_buckets(port: int) -> list[tuple[float, float]]:
    """The hub's fetch-to-PUBACK histogram: cumulative (upper bound, count) pairs."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    pattern = r'^gridmate_vehicles_delivery_seconds_bucket\{le="([^"]+)"\} (\S+)$'
    return [(float(m.group(1)), float(m.group(2))) for m in re.finditer(pattern, text, re.M)]


def histogram_quantile(before, after, q: float) -> float:
    """Prometheus-style quantile (linear within a bucket) of what happened in between, ms."""
    counts = [(le, a - b) for (le, a), (_, b) in zip(after, before, strict=True)]
    total = counts[-1][1]
    if total == 0:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for le, cumulative in counts:
        if cumulative >= rank:
            if le == float("inf"):
                return lower * 1000
            share = (rank - below) / (cumulative - below) if cumulative > below else 1.0
            return (lower + (le - lower) * share) * 1000
        lower, below = le, cumulative
    return lower * 1000


class Fleet:
    """Cars that drive about, each record carrying ~10 changed signals."""

    def __init__(self, count: int, offset: int = 0) -> None:
        self.cars = [SimulatedCar(sample_vin(offset + n), name=f"Car {n}") for n in range(count)]
        self.turn = 0

    def next_record(self, created_at: datetime):
        car = self.cars[self.turn % len(self.cars)]
        self.turn += 1
        car.drive(5, random.uniform(20, 70), turn_deg=random.uniform(-20, 20))
        signals = car.signals()
        signals["InsideTemp"] = round(random.uniform(18, 24), 1)
        return telemetry_record(NAMESPACE, car.vin, created_at, signals)


async def produce(producer: AIOKafkaProducer, records) -> None:
    pending = []
    for record in records:
        pending.append(
            await producer.send(record.topic, record.value, key=record.key, headers=record.headers)
        )
        if len(pending) >= 2000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)


async def wait_consumed(
    metrics_port: int, target: float, limit: float = 600
) -> tuple[float, float]:
    """Poll the hub's counter until it reaches ``target``; (first change, done) times."""
    start = records_consumed(metrics_port)
    first = None
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        count = await asyncio.to_thread(records_consumed, metrics_port)
        now = time.monotonic()
        if first is None and count > start:
            first = now
        if count >= target:
            return first or now, now
        await asyncio.sleep(0.02)
    raise TimeoutError(f"the hub consumed {count:.0f} of {target:.0f} records")


async def latency_run(producer, fleet: Fleet, mqtt: tuple[str, int], rate: int, seconds: float):
    """Produce at ``rate`` records/s; latency = MQTT receive time - record creation time."""
    latencies: list[float] = []
    expected: dict[str, float] = {}
    async with aiomqtt.Client(*mqtt) as client:
        await client.subscribe(f"{BASE}/+/state", qos=0)

        async def receive() -> None:
            async for message in client.messages:
                received = time.time()
                vin = str(message.topic).split("/")[1]
                sent = expected.pop(vin, None)
                if sent is None:
                    continue
                document = json.loads(message.payload)
                if document["_m"]["fleet_telemetry"].get("inside_temp_c", 0) >= sent - 0.0005:
                    latencies.append(received - sent)
                else:
                    expected[vin] = sent

        receiver = asyncio.create_task(receive())
        await asyncio.sleep(0.5)  # retained messages first
        total = int(rate * seconds)
        start = time.monotonic()
        for n in range(total):
            due = start + n / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now = datetime.now(UTC)
            record = fleet.next_record(now)
            expected[record.key.decode()] = now.timestamp()
            await producer.send(record.topic, record.value, key=record.key, headers=record.headers)
        await asyncio.sleep(2)
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiver
    latencies.sort()
    return total, latencies


def percentile(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(len(values) * p))] * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--vehicles", type=int, default=1000)
    parser.add_argument("--memory-vehicles", type=int, default=10_000)
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    hub_core = cores[0]
    print(f"machine: nproc={os.cpu_count()} cpu={cpu_model()!r} python={platform.python_version()}")
    print(f"hub pinned to core {hub_core}; brokers, producer and receiver on {cores[1:] or cores}")

    async with kafka_broker() as bootstrap, mosquitto_broker() as mqtt:
        # Keep the brokers and this process off the hub's core.
        others = set(cores[1:]) or set(cores)
        os.sched_setaffinity(0, others)
        await create_kafka_topics(bootstrap, dict.fromkeys(topic_names(NAMESPACE), 4))
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
        await producer.start()
        fleet = Fleet(args.vehicles)
        try:
            started = time.monotonic()
            now = datetime.now(UTC)
            backlog = [fleet.next_record(now) for _ in range(args.backlog)]
            datums = statistics.mean(len(r.value) for r in backlog[:1000])  # bytes, for the report
            await produce(producer, backlog)
            del backlog
            print(
                f"produced {args.backlog} records ({datums:.0f} bytes each) "
                f"in {time.monotonic() - started:.1f}s"
            )

            metrics_port = free_port()
            with tempfile.TemporaryDirectory() as workdir:
                config = Path(workdir) / "vehicles.toml"
                config.write_text(
                    f'state_directory = "{workdir}"\nruntime_directory = "{workdir}"\n'
                    f"[metrics]\nport = {metrics_port}\n"
                    f'[kafka]\nbootstrap_servers = "{bootstrap}"\nnamespace = "{NAMESPACE}"\n'
                    # tansu has no static membership (see docs/vehicles.md).
                    "static_membership = false\n"
                    f'[mqtt]\nhost = "{mqtt[0]}"\nport = {mqtt[1]}\n'
                    f'[homeassistant]\nbase_topic = "{BASE}"\n'
                )
                hub_log = (Path(workdir) / "hub.log").open("w")
                hub = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-c",
                    "from gridmate.cli import main; main()",
                    "vehicles",
                    "run",
                    "--config",
                    str(config),
                    preexec_fn=lambda: os.sched_setaffinity(0, {hub_core}),
                    stderr=hub_log,
                )
                try:
                    for _ in range(200):
                        with contextlib.suppress(OSError):
                            records_consumed(metrics_port)
                            break
                        await asyncio.sleep(0.1)
                    first, done = await wait_consumed(metrics_port, args.backlog)
                    rate = args.backlog / (done - first)
                    print(
                        f"throughput: {rate:,.0f} records/s sustained "
                        f"({args.backlog} records in {done - first:.1f}s, ~10 datums each)"
                    )
                    print(f"memory with {args.vehicles} vehicles: {rss_mb(hub.pid):.0f} MB RSS")

                    for target in (100, 1000):
                        before = delivery_buckets(metrics_port)
                        sent, latencies = await latency_run(
                            producer, fleet, mqtt, target, args.latency_seconds
                        )
                        after = delivery_buckets(metrics_port)
                        print(
                            f"latency at {target} records/s: "
                            f"p50 {percentile(latencies, 0.5):.1f} ms, "
                            f"p99 {percentile(latencies, 0.99):.1f} ms produce to MQTT receive "
                            f"({len(latencies)} of {sent} records matched); added by the hub "
                            f"(fetch to PUBACK): p50 {histogram_quantile(before, after, 0.5):.1f} "
                            f"ms, p99 {histogram_quantile(before, after, 0.99):.1f} ms"
                        )

                    big = Fleet(args.memory_vehicles, offset=100_000)
                    already = records_consumed(metrics_port)
                    now = datetime.now(UTC)
                    records = []
                    for car in big.cars:
                        records.append(
                            telemetry_record(NAMESPACE, car.vin, now, car.signals(everything=True))
                        )
                    await produce(producer, records)
                    await wait_consumed(metrics_port, already + len(records))
                    await asyncio.sleep(2)
                    print(
                        f"memory with {args.memory_vehicles + args.vehicles} vehicles: "
                        f"{rss_mb(hub.pid):.0f} MB RSS"
                    )
                finally:
                    hub.terminate()
                    await hub.wait()
                    hub_log.close()
                    log = (Path(workdir) / "hub.log").read_text()
                    problems = [
                        line for line in log.splitlines() if "ERROR" in line or "Traceback" in line
                    ]
                    if problems:
                        print("hub log problems:", *problems[:10], sep="\n  ")
        finally:
            await producer.stop()


if __name__ == "__main__":
    asyncio.run(main())
