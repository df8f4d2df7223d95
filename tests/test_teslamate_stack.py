"""The pieces of services.gridmate.teslamate that run on the host, run for real.

* ``nix/teslamate/write-env.sh``: TeslaMate's env file from systemd credentials.
* ``nix/teslamate/set-role-password.sql``: a role's password set by psql from the
  environment, against the real PostgreSQL.
* The Mosquitto ACLs the module gives ``teslamate``, ``gridmate`` and
  ``homeassistant``, loaded into a real Mosquitto.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import shutil
import stat
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# as in conftest.py
POSTGRES_ADMIN_DSN = os.environ.get(
    "GRIDMATE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
WRITE_ENV = ROOT / "nix" / "teslamate" / "write-env.sh"
SET_ROLE_PASSWORD = ROOT / "nix" / "teslamate" / "set-role-password.sql"

# --------------------------------------------------------------- env file


@pytest.fixture(autouse=True)
def _nix_files_present() -> None:
    if not WRITE_ENV.exists():
        pytest.skip("nix/teslamate is not part of this source tree (e.g. the Nix build)")


def _write_env(
    tmp_path: Path, credentials: Mapping[str, bytes], *pairs: str
) -> subprocess.CompletedProcess[str]:
    directory = tmp_path / "credentials"
    directory.mkdir(exist_ok=True)
    for name, content in credentials.items():
        (directory / name).write_bytes(content)
    env = {"PATH": os.environ["PATH"], "CREDENTIALS_DIRECTORY": str(directory)}
    return subprocess.run(
        ["bash", str(WRITE_ENV), str(tmp_path / "run" / "teslamate.env"), *pairs],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_env_file_holds_each_secret_in_a_private_directory(tmp_path: Path) -> None:
    result = _write_env(
        tmp_path,
        {"key": b"k3y=with spaces and $dollar\n", "db": b"db-password", "mqtt": b"m\\q"},
        "ENCRYPTION_KEY=key",
        "DATABASE_PASS=db",
        "MQTT_PASSWORD=mqtt",
    )
    assert result.returncode == 0, result.stderr
    env_file = tmp_path / "run" / "teslamate.env"
    assert env_file.read_text() == (
        "ENCRYPTION_KEY=k3y=with spaces and $dollar\n"
        "DATABASE_PASS=db-password\n"
        "MQTT_PASSWORD=m\\q\n"
    )
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(env_file.parent.stat().st_mode) == 0o700
    assert result.stdout == result.stderr == ""


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"two\nlines", "contains a newline or a quote"),
        (b"two\nlines\n\n", "contains a newline or a quote"),
        (b"carriage\rreturn", "contains a newline or a quote"),
        (b'with"double', "contains a newline or a quote"),
        (b"with'single", "contains a newline or a quote"),
        (b"\n", "is empty"),
        (b"", "is empty"),
    ],
)
def test_env_file_refuses_what_podman_cannot_carry(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    # A file from an earlier start must not survive a refused one.
    assert _write_env(tmp_path, {"key": b"fine"}, "ENCRYPTION_KEY=key").returncode == 0
    result = _write_env(tmp_path, {"key": content}, "ENCRYPTION_KEY=key")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("gridmate-teslamate: the credential key (for ENCRYPTION_KEY) ")
    assert reason in line
    secret = content.decode().strip()
    if secret:
        assert secret not in result.stderr
    assert list((tmp_path / "run").iterdir()) == []


def test_env_file_needs_every_credential(tmp_path: Path) -> None:
    result = _write_env(tmp_path, {"key": b"k"}, "ENCRYPTION_KEY=key", "DATABASE_PASS=db")
    assert result.returncode == 1
    assert "the credential db (for DATABASE_PASS) is missing" in result.stderr
    assert list((tmp_path / "run").iterdir()) == []
    result = subprocess.run(
        ["bash", str(WRITE_ENV), str(tmp_path / "run" / "env"), "X=key"],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1 and "no $CREDENTIALS_DIRECTORY" in result.stderr


# --------------------------------------------------------------- PostgreSQL


def _scram_matches(verifier: str, password: str) -> bool:
    """Whether a PostgreSQL SCRAM-SHA-256 verifier is one of ``password`` (RFC 5802)."""
    method, rest = verifier.split("$", 1)
    assert method == "SCRAM-SHA-256"
    iterations_salt, keys = rest.split("$")
    iterations, salt = iterations_salt.split(":")
    stored_key, _server_key = keys.split(":")
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(salt), int(iterations)
    )
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    return hmac.compare_digest(hashlib.sha256(client_key).digest(), base64.b64decode(stored_key))


def _psql() -> str:
    psql = shutil.which("psql")
    if psql is None:
        pytest.fail("psql is not installed (Debian package postgresql-client; ./dev setup)")
    return psql


def _admin(sql: str) -> str:
    return subprocess.run(
        [_psql(), POSTGRES_ADMIN_DSN, "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-tAc", sql],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def _set_password(role: str, password: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GRIDMATE_ROLE_PASSWORD"}
    if password is not None:
        env["GRIDMATE_ROLE_PASSWORD"] = password
    return subprocess.run(
        [
            _psql(),
            POSTGRES_ADMIN_DSN,
            "--no-psqlrc",
            "--quiet",
            "-v",
            f"role={role}",
            "-f",
            str(SET_ROLE_PASSWORD),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.services
def test_role_password_is_set_from_the_environment_only() -> None:
    role = f"gm_tm_{uuid.uuid4().hex[:8]}"
    _admin(f'CREATE ROLE "{role}" NOLOGIN')
    try:
        password = 'it\'s a "quoted" pass\\word; DROP ROLE postgres; --'
        result = _set_password(role, password)
        assert result.returncode == 0, result.stderr
        assert password not in result.stdout + result.stderr
        verifier = _admin(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'")
        assert _scram_matches(verifier, password)
        assert not _scram_matches(verifier, "something else")
        assert _admin(f"SELECT rolcanlogin FROM pg_roles WHERE rolname = '{role}'") == "t"
        # running it again (every start of postgresql-setup) changes the password
        assert _set_password(role, "rotated").returncode == 0
        verifier = _admin(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'")
        assert _scram_matches(verifier, "rotated")
    finally:
        _admin(f'DROP ROLE IF EXISTS "{role}"')


@pytest.mark.services
def test_role_password_without_a_value_fails_and_changes_nothing() -> None:
    role = f"gm_tm_{uuid.uuid4().hex[:8]}"
    _admin(f"CREATE ROLE \"{role}\" LOGIN PASSWORD 'before'")
    try:
        result = _set_password(role, None)
        assert result.returncode != 0
        assert "GRIDMATE_ROLE_PASSWORD is not set" in result.stderr
        verifier = _admin(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'")
        assert _scram_matches(verifier, "before")
    finally:
        _admin(f'DROP ROLE IF EXISTS "{role}"')


@pytest.mark.services
def test_teslamate_extensions_are_available() -> None:
    """cube and earthdistance, which postgresql-setup creates in TeslaMate's database."""
    database = f"gm_tm_{uuid.uuid4().hex[:8]}"
    _admin(f'CREATE DATABASE "{database}"')
    try:
        dsn = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0] + f"/{database}"
        for statement in (
            "CREATE EXTENSION IF NOT EXISTS cube",
            "CREATE EXTENSION IF NOT EXISTS earthdistance",
            "CREATE EXTENSION IF NOT EXISTS cube",
        ):
            subprocess.run(
                [_psql(), dsn, "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-qc", statement],
                check=True,
                capture_output=True,
            )
        distance = subprocess.run(
            [
                _psql(),
                dsn,
                "--no-psqlrc",
                "-tAc",
                "SELECT round(earth_distance("
                "ll_to_earth(52.52, 13.40), ll_to_earth(48.14, 11.58)))",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        assert 500_000 < float(distance) < 510_000  # Berlin to Munich, in metres
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
