"""Real parts for the backup tests: zfs-fuse pools, Sanoid, syncoid, restic, PostgreSQL,
and dropbear as the NAS's ssh server.

Used by tests/test_backup_preseed.py. zfs-fuse (Debian) runs file-backed pools
in user space through /dev/fuse; the daemon is started here when none
answers, and stopped again by whoever started it. dropbear (Debian's
dropbear-bin) listens on 127.0.0.1 with a host key and root's authorized key
in a test directory; the machine's own ssh setup and root's ~/.ssh stay as
they are.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SBIN_PATH = os.pathsep.join(
    [os.environ.get("PATH", "/usr/bin:/bin"), "/usr/local/sbin", "/usr/sbin", "/sbin"]
)
PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_ADMIN = "postgres"


def sh(
    *argv: str,
    check: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PATH": SBIN_PATH, **(env or {})},
        input=input_text,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {result.returncode}: {result.stderr or result.stdout}"
        )
    return result


def which(program: str) -> str | None:
    return shutil.which(program, path=SBIN_PATH)


# ------------------------------------------------------------------ the CLI


def gridmate(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GRIDMATE_", "SERVICE_"))}
    clean.pop("CREDENTIALS_DIRECTORY", None)
    return subprocess.run(
        [sys.executable, "-m", "gridmate.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**clean, "PATH": SBIN_PATH, **(env or {})},
        check=False,
    )


def toml(data: dict[str, Any], prefix: str = "") -> str:
    """Just enough TOML for the test configurations."""
    scalars, tables = [], []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            scalars.append(f"{key} = {_toml_value(value)}")
    text = "\n".join(scalars) + ("\n" if scalars else "")
    for key, value in tables:
        name = f"{prefix}.{key}" if prefix else key
        text += f"\n[{name}]\n" + toml(value, name)
    return text


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


# ------------------------------------------------------------------ ZFS


class ZfsUnavailable(Exception):
    pass


def _zpool_answers() -> bool:
    zpool = which("zpool")
    if zpool is None:
        return False
    return sh(zpool, "list", check=False, timeout=30).returncode == 0


@contextmanager
def zfs_fuse_daemon() -> Iterator[None]:
    """A zfs-fuse daemon: the one already running, or one of our own for the session."""
    if _zpool_answers():
        yield
        return
    daemon = which("zfs-fuse")
    if daemon is None or which("zpool") is None:
        raise ZfsUnavailable("zfs-fuse is not installed (apt-get install zfs-fuse; ./dev setup)")
    if not Path("/dev/fuse").exists() or os.geteuid() != 0:
        raise ZfsUnavailable("zfs-fuse needs root and /dev/fuse, which this machine lacks")
    process = subprocess.Popen(
        [daemon, "--no-daemon", "--no-kstat-mount"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not _zpool_answers():
            if process.poll() is not None:
                error = process.stderr.read().decode() if process.stderr else ""
                raise ZfsUnavailable(f"zfs-fuse exited with {process.returncode}: {error}")
            if time.monotonic() > deadline:
                raise ZfsUnavailable("zfs-fuse did not answer within 30 s")
            time.sleep(0.1)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@dataclass
class Pools:
    local: str
    nas: str
    directory: Path

    def destroy(self) -> None:
        for pool in (self.local, self.nas):
            if sh("zpool", "list", pool, check=False).returncode != 0:
                continue
            names = sh("zfs", "list", "-H", "-o", "name", "-r", pool, check=False).stdout.split()
            for name in reversed(names):
                sh("zfs", "unmount", "-f", name, check=False)
            sh("zpool", "destroy", "-f", pool, check=False)


@contextmanager
def file_pools(directory: Path) -> Iterator[Pools]:
    """Two pools on files: this host's ('local') and the NAS's."""
    suffix = uuid.uuid4().hex[:8]
    pools = Pools(f"gml{suffix}", f"gmn{suffix}", directory)
    try:
        for pool in (pools.local, pools.nas):
            image = directory / f"{pool}.img"
            with image.open("wb") as handle:
                handle.truncate(128 * 1024 * 1024)
            sh("zpool", "create", "-m", "none", pool, str(image))
        yield pools
    finally:
        pools.destroy()


def take_sanoid_snapshots(directory: Path, dataset: str) -> list[str]:
    """Run the real sanoid for ``dataset``; returns the dataset's snapshot names."""
    config = directory / f"sanoid-{uuid.uuid4().hex[:6]}"
    for sub in ("", "cache", "run"):
        (config / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy("/usr/share/sanoid/sanoid.defaults.conf", config / "sanoid.defaults.conf")
    (config / "sanoid.conf").write_text(
        f"[{dataset}]\n\tuse_template = service\n\n"
        "[template_service]\n\thourly = 24\n\tdaily = 7\n\tmonthly = 0\n\tyearly = 0\n"
        "\tautosnap = yes\n\tautoprune = no\n"
    )
    # zfs-fuse lacks a few 'zfs get' flags sanoid uses for its cache; the snapshots
    # themselves are taken all the same, which is what is checked.
    sh(
        "sanoid",
        f"--configdir={config}",
        f"--cache-dir={config / 'cache'}",
        f"--run-dir={config / 'run'}",
        "--take-snapshots",
        check=False,
    )
    return snapshots(dataset)


def snapshots(dataset: str) -> list[str]:
    out = sh(
        "zfs", "list", "-H", "-t", "snapshot", "-o", "name", "-s", "creation", "-d", "1", dataset
    ).stdout
    return [line.split("@", 1)[1] for line in out.split()]


def zfs_destroy(dataset: str) -> None:
    """Destroy through gridmate's own ZFS wrapper, which waits out a transient 'busy'."""
    from gridmate.backup.settings import ZfsSettings
    from gridmate.backup.zfs import Zfs

    Zfs(ZfsSettings(zfs_binary=which("zfs") or "zfs")).destroy(dataset)


def zfs_exists(dataset: str) -> bool:
    return sh("zfs", "list", "-H", "-o", "name", dataset, check=False).returncode == 0


def zfs_get(dataset: str, prop: str) -> str:
    return sh("zfs", "get", "-H", "-o", "value", prop, dataset).stdout.strip()


# ------------------------------------------------------------------ ssh: the NAS's login


class SshUnavailable(Exception):
    pass


LOOPBACK = "127.0.0.1"


@dataclass
class NasSsh:
    """dropbear on 127.0.0.1 letting root in with ``key``: the NAS's ssh server."""

    port: int
    key: Path
    """The private key the NAS accepts (OpenSSH format, no passphrase)."""
    known_hosts: Path
    """The server's true host key, for [127.0.0.1]:port."""
    log: Path
    """dropbear's log: one 'Pubkey auth succeeded' line per login."""

    def replica(self, dataset: str) -> str:
        return f"root@{LOOPBACK}:{dataset}"

    def known_hosts_line(self, public_key: str) -> str:
        return f"[{LOOPBACK}]:{self.port} {public_key}\n"


def new_ssh_key(directory: Path, name: str) -> Path:
    """An OpenSSH ed25519 key pair ``name`` and ``name.pub`` without a passphrase."""
    key = directory / name
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"gridmate-test-{name}", "-f", str(key))
    return key


def new_host_key(directory: Path, name: str) -> tuple[Path, str]:
    """A dropbear ed25519 host key and its public line ('ssh-ed25519 AAAA... comment')."""
    key = directory / name
    sh("dropbearkey", "-t", "ed25519", "-f", str(key))
    lines = sh("dropbearkey", "-y", "-f", str(key)).stdout.splitlines()
    public = next(line for line in lines if line.startswith("ssh-ed25519 "))
    return key, " ".join(public.split()[:2])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def _syncoid_version() -> tuple[int, ...]:
    out = sh("syncoid", "--version", check=False).stdout
    match = re.search(r"version (\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(part) for part in match.groups()) if match else (0,)


# zfs-fuse's 'zfs get' has no -t, so syncoid lists a dataset's snapshots with its
# fallback command; before sanoid 2.2.0 that fallback prefixed the ssh command twice
# for a replica on another host ('snapshots couldn't be listed', sanoid issue 749), so
# syncoid 2.1.0 (Debian 12) cannot pull from a remote zfs-fuse at all. On the NAS side
# this wrapper drops '-t TYPE' from 'zfs get', as syncoid 2.2.0's working fallback
# does in effect: the rows of the dataset itself come along, and syncoid keeps only
# the rows naming a snapshot. Everything else goes to the real zfs unchanged.
_ZFS_GET_WITHOUT_TYPE = """#!/bin/sh
if [ "$1" = get ]; then
  skip=
  for arg in "$@"; do
    shift
    if [ -n "$skip" ]; then skip=; continue; fi
    if [ "$arg" = -t ]; then skip=1; continue; fi
    set -- "$@" "$arg"
  done
fi
exec {zfs} "$@"
"""

_FORCED_COMMAND = """#!/bin/sh
PATH={bin}:$PATH
export PATH
exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"
"""


def _authorized_keys(directory: Path, key: Path) -> str:
    """root's authorized_keys line for ``key``; with a syncoid older than 2.2.0 a
    forced command puts the NAS-side zfs wrapper first on PATH."""
    public = key.with_suffix(".pub").read_text().strip()
    if _syncoid_version() >= (2, 2, 0):
        return public + "\n"
    nas_bin = directory / "nas-bin"
    nas_bin.mkdir()
    wrapper = nas_bin / "zfs"
    wrapper.write_text(_ZFS_GET_WITHOUT_TYPE.format(zfs=which("zfs")))
    wrapper.chmod(0o755)
    forced = directory / "nas-login"
    forced.write_text(_FORCED_COMMAND.format(bin=nas_bin))
    forced.chmod(0o755)
    return f'command="{forced}" {public}\n'


def _root_home_elsewhere(directory: Path, home: Path) -> dict[str, str]:
    """Environment making dropbear see root's home at ``home``, through nss_wrapper:
    root's real ~/.ssh is neither read nor written, and no user is created.

    dropbear 2025.87 and later also take -D (the authorized_keys directory), but
    then want every directory above it up to / unwritable by others, which /tmp is
    not; nss_wrapper works the same with every dropbear."""
    libraries = sorted(
        glob.glob("/usr/lib/*/libnss_wrapper.so") + glob.glob("/usr/lib/libnss_wrapper.so")
    )
    if not libraries:
        raise SshUnavailable(
            "libnss-wrapper, which lets the test's dropbear read root's keys from a test "
            "directory, is not installed (apt-get install libnss-wrapper; ./dev setup)"
        )
    passwd, group = directory / "passwd", directory / "group"
    # The sessions' shell is sh: syncoid's remote commands are POSIX shell.
    passwd.write_text(f"root:x:0:0:root:{home}:/bin/sh\n")
    group.write_text("root:x:0:\n")
    # dropbear clears its sessions' environment, so the wrapper stays with the server.
    return {
        "LD_PRELOAD": libraries[0],
        "NSS_WRAPPER_PASSWD": str(passwd),
        "NSS_WRAPPER_GROUP": str(group),
    }


@contextmanager
def dropbear_server(directory: Path) -> Iterator[NasSsh]:
    """Debian's dropbear (dropbear-bin) as the NAS's ssh server on 127.0.0.1, with a
    host key and root's authorized key of its own in ``directory``."""
    if which("dropbear") is None or which("dropbearkey") is None:
        raise SshUnavailable(
            "dropbear is not installed (apt-get install dropbear-bin; ./dev setup)"
        )
    if which("ssh") is None or which("ssh-keygen") is None:
        raise SshUnavailable("OpenSSH's client is not installed (apt-get install openssh-client)")
    if os.geteuid() != 0:
        raise SshUnavailable("logging in to the NAS as root needs the tests to run as root")
    directory.mkdir(mode=0o700)
    host_key, host_public = new_host_key(directory, "host_key")
    key = new_ssh_key(directory, "nas_key")
    # root's home as the NAS's ssh server sees it; dropbear insists that neither it
    # nor .ssh nor authorized_keys be writable by anyone but root.
    home = directory / "nas-root"
    (home / ".ssh").mkdir(mode=0o700, parents=True)
    authorized = home / ".ssh" / "authorized_keys"
    authorized.write_text(_authorized_keys(directory, key))
    authorized.chmod(0o600)
    env = _root_home_elsewhere(directory, home)
    log = directory / "dropbear.log"
    port = _free_port()
    argv = [
        which("dropbear") or "dropbear",
        "-F",  # stay in the foreground, so terminate() ends it
        "-E",  # log to stderr (the log file), not syslog
        "-s",  # keys only, no passwords
        "-p",
        f"{LOOPBACK}:{port}",
        "-r",
        str(host_key),
        "-P",
        str(directory / "dropbear.pid"),
    ]
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
        )
    try:
        deadline = time.monotonic() + 30
        while not _listening(port):
            # Installed but not working is a failure, not a reason to skip.
            if process.poll() is not None:
                raise AssertionError(
                    f"dropbear exited with {process.returncode}: {log.read_text().strip()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"dropbear did not listen within 30 s: {log.read_text()}")
            time.sleep(0.05)
        known_hosts = directory / "known_hosts"
        known_hosts.write_text(f"[{LOOPBACK}]:{port} {host_public}\n")
        yield NasSsh(port, key, known_hosts, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((LOOPBACK, port)) == 0


# ------------------------------------------------------------------ files


def tree(root: Path, ignore: frozenset[str] = frozenset({".gridmate-preseed"})) -> dict[str, Any]:
    """Every file under ``root``: relative path -> (content, permission bits)."""
    result: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if relative.parts[0] in ignore or relative.parts[0] == "lost+found":
            continue
        mode = stat.S_IMODE(path.lstat().st_mode)
        result[str(relative)] = (path.read_bytes() if path.is_file() else "dir", oct(mode))
    return result


def seed_state_directory(root: Path) -> None:
    """gridmate state as the daemons leave it: tokens, budgets, journals, the notify queue."""
    (root / "tesla").mkdir(parents=True)
    (root / "tesla" / "tokens.json").write_text('{"refresh_token": "rt-abc", "rotated": 3}')
    os.chmod(root / "tesla" / "tokens.json", 0o600)
    (root / "energy" / "journal").mkdir(parents=True)
    (root / "energy" / "journal" / "2026-12-05.jsonl").write_text(
        '{"kind": "sample", "soc": 81.5}\n{"kind": "peak", "event": "start"}\n'
    )
    (root / "energy" / "budget.json").write_text('{"writes_today": 4}')
    (root / "notify" / "queue").mkdir(parents=True)
    (root / "notify" / "queue" / "0001.json").write_bytes(b"\x00\x01binary\xff")


def empty_directory(root: Path) -> None:
    for entry in list(root.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


# ------------------------------------------------------------------ restic


@dataclass
class Repository:
    location: str
    password_file: Path

    def env(self) -> dict[str, str]:
        return {
            "RESTIC_REPOSITORY": self.location,
            "RESTIC_PASSWORD_FILE": str(self.password_file),
            "RESTIC_CACHE_DIR": str(self.password_file.parent / "restic-cache"),
        }

    def backup(self, tag: str, *paths: Path) -> None:
        sh("restic", "backup", "--quiet", "--tag", tag, *map(str, paths), env=self.env())


def new_repository(directory: Path) -> Repository:
    password = directory / "restic-password"
    password.write_text("correct horse battery staple\n")
    repository = Repository(str(directory / "restic-repo"), password)
    sh("restic", "init", "--quiet", env=repository.env())
    return repository


# ------------------------------------------------------------------ PostgreSQL


def psql(database: str, sql: str, *, check: bool = True) -> str:
    return sh(
        "psql",
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        PG_HOST,
        "-p",
        str(PG_PORT),
        "-U",
        PG_ADMIN,
        "-d",
        database,
        "-f",
        "-",
        input_text=sql,
        check=check,
    ).stdout.strip()


def database_exists(name: str) -> bool:
    return psql("postgres", f"SELECT 1 FROM pg_database WHERE datname = '{name}'") == "1"


def drop_database(name: str) -> None:
    psql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_comment(name: str) -> str:
    return psql(
        "postgres",
        "SELECT coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database "
        f"WHERE datname = '{name}'",
    )


TESLAMATE_SCHEMA = """
CREATE EXTENSION IF NOT EXISTS cube;
CREATE EXTENSION IF NOT EXISTS earthdistance;
CREATE SCHEMA private;
CREATE TABLE schema_migrations (version bigint PRIMARY KEY, inserted_at timestamp(0));
CREATE TABLE car_settings (id serial PRIMARY KEY, suspend_min integer NOT NULL DEFAULT 21);
CREATE TABLE cars (
    id smallserial PRIMARY KEY,
    eid bigint NOT NULL UNIQUE,
    vid bigint NOT NULL UNIQUE,
    vin text NOT NULL UNIQUE,
    name text,
    model varchar(255),
    settings_id integer NOT NULL UNIQUE REFERENCES car_settings(id)
);
CREATE TABLE geofences (
    id serial PRIMARY KEY, name varchar(255) NOT NULL,
    latitude numeric(8,6) NOT NULL, longitude numeric(9,6) NOT NULL, radius smallint NOT NULL
);
CREATE INDEX geofences_earth ON geofences
    USING gist (ll_to_earth(latitude::float8, longitude::float8));
CREATE TABLE positions (
    id serial PRIMARY KEY, car_id smallint NOT NULL REFERENCES cars(id),
    date timestamp NOT NULL, latitude numeric(8,6), longitude numeric(9,6),
    battery_level smallint, odometer double precision
);
CREATE TABLE drives (
    id serial PRIMARY KEY, car_id smallint NOT NULL REFERENCES cars(id),
    start_date timestamp NOT NULL, end_date timestamp, distance double precision
);
CREATE TABLE charging_processes (
    id serial PRIMARY KEY, car_id smallint NOT NULL REFERENCES cars(id),
    start_date timestamp NOT NULL, charge_energy_added numeric(8,2)
);
CREATE TABLE private.tokens (
    id integer PRIMARY KEY, access bytea, refresh bytea,
    inserted_at timestamp(0) NOT NULL, updated_at timestamp(0) NOT NULL
);
"""

TESLAMATE_ROWS = """
INSERT INTO schema_migrations VALUES (20250924215353, '2025-11-06 10:00:00');
INSERT INTO car_settings (suspend_min) VALUES (21), (15);
INSERT INTO cars (eid, vid, vin, name, model, settings_id) VALUES
    (1492931337, 1234567890, '5YJ3E1EA7KF000001', 'Blue Thunder', '3', 1),
    (1492931338, 1234567891, '7SAYGDEE9NF000002', 'Daily', 'Y', 2);
INSERT INTO geofences (name, latitude, longitude, radius)
    VALUES ('Home', 33.448376, -112.074036, 50);
INSERT INTO positions (car_id, date, latitude, longitude, battery_level, odometer)
SELECT 1 + (g % 2), timestamp '2026-12-01' + g * interval '1 minute',
       33.4 + g / 100000.0, -112.0 - g / 100000.0, 50 + g % 40, 12000 + g * 0.1
FROM generate_series(1, 500) AS g;
INSERT INTO drives (car_id, start_date, end_date, distance) VALUES
    (1, '2026-12-01 08:00', '2026-12-01 08:40', 31.5), (2, '2026-12-02 17:10', NULL, 4.2);
INSERT INTO charging_processes (car_id, start_date, charge_energy_added) VALUES
    (1, '2026-12-01 22:00', 41.25);
INSERT INTO private.tokens VALUES
    (1, '\\x010a4145532e47434d2e5631aa', '\\x010a4145532e47434d2e5631bb',
     '2026-11-01 00:00:00', '2026-12-05 06:00:00');
"""

SNAPSHOT_QUERIES = (
    "SELECT id, eid, vid, vin, name, model, settings_id FROM cars ORDER BY id",
    "SELECT count(*), sum(battery_level), min(date), max(date) FROM positions",
    "SELECT * FROM drives ORDER BY id",
    "SELECT * FROM charging_processes ORDER BY id",
    "SELECT id, encode(access, 'hex'), encode(refresh, 'hex'), updated_at FROM private.tokens",
    "SELECT name FROM geofences WHERE earth_box(ll_to_earth(33.448, -112.074), 1000) "
    "@> ll_to_earth(latitude::float8, longitude::float8)",
    "SELECT indexname FROM pg_indexes WHERE tablename = 'geofences' ORDER BY 1",
)


def seed_teslamate(database: str) -> None:
    psql("postgres", f'CREATE DATABASE "{database}"')
    psql(database, TESLAMATE_SCHEMA + TESLAMATE_ROWS)


def teslamate_rows(database: str) -> list[str]:
    return [psql(database, query) for query in SNAPSHOT_QUERIES]
