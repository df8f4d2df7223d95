"""Back up, lose the host, preseed: the data comes back. With real parts only.

restic (Debian), PostgreSQL on 127.0.0.1 (pg_dump, pg_restore, psql), ZFS
through Debian's zfs-fuse on file-backed pools, Sanoid taking the snapshots
and syncoid replicating to a second pool that plays the NAS, reached either
directly or over ssh through Debian's dropbear on 127.0.0.1. The tests run
the ``gridmate`` command line as the NixOS units will.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from backup_rig import (
    PG_HOST,
    PG_PORT,
    NasSsh,
    Pools,
    SshUnavailable,
    ZfsUnavailable,
    database_comment,
    database_exists,
    drop_database,
    dropbear_server,
    empty_directory,
    file_pools,
    gridmate,
    new_host_key,
    new_repository,
    new_ssh_key,
    psql,
    seed_state_directory,
    seed_teslamate,
    sh,
    snapshots,
    take_sanoid_snapshots,
    teslamate_rows,
    toml,
    tree,
    zfs_destroy,
    zfs_exists,
    zfs_fuse_daemon,
    zfs_get,
)

pytestmark = pytest.mark.services


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def zfs_daemon() -> Iterator[None]:
    try:
        with zfs_fuse_daemon():
            yield
    except ZfsUnavailable as error:
        if "not installed" in str(error):
            pytest.fail(str(error), pytrace=False)
        pytest.skip(str(error))


@pytest.fixture
def pools(zfs_daemon: None, tmp_path: Path) -> Iterator[Pools]:
    with file_pools(tmp_path) as made:
        yield made


@pytest.fixture
def database() -> Iterator[str]:
    name = f"gm_preseed_{uuid.uuid4().hex[:10]}"
    yield name
    drop_database(name)


def database_target(name: str, dumps: Path, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "database",
        "dump_directory": str(dumps),
        "restic_tag": "teslamate",
        **extra,
        "database": {"host": PG_HOST, "port": PG_PORT, "user": "postgres", "name": name},
    }


def write_config(
    tmp_path: Path,
    targets: dict[str, dict[str, Any]],
    *,
    repository: str | None = None,
    password_file: Path | None = None,
    smtp: Any = None,
    preseed: dict[str, Any] | None = None,
    zfs: dict[str, Any] | None = None,
    log_level: str = "info",
) -> Path:
    data: dict[str, Any] = {
        "state_directory": str(tmp_path / "state"),
        "textfile_directory": str(tmp_path / "textfile"),
        "log": {"format": "text", "level": log_level},
    }
    if zfs:
        data["zfs"] = zfs
    if repository is not None:
        data["restic"] = {
            "repository": repository,
            "password_file": str(password_file),
            "cache_directory": str(tmp_path / "restic-cache"),
        }
    if preseed:
        data["preseed"] = preseed
    if smtp is not None:
        data["notify"] = {
            "smtp_host": smtp.host,
            "smtp_port": smtp.port,
            "security": "none",
            "sender": "gridmate@home.test",
            "recipients": {"warning": ["owner@home.test"], "critical": ["owner@home.test"]},
            "digest_window_seconds": 0,
        }
    data["targets"] = targets
    path = tmp_path / "backup.toml"
    path.write_text(toml(data))
    return path


def preseed(config: Path, *extra: str) -> Any:
    return gridmate("preseed", "--config", str(config), *extra)


def dump_teslamate(config: Path) -> None:
    """restic's prepare hook."""
    dumped = gridmate("backup", "dump", "--target", "teslamate", "--config", str(config))
    assert dumped.returncode == 0, dumped.stderr


def metrics(tmp_path: Path, target: str) -> str:
    return (tmp_path / "textfile" / f"gridmate_preseed_{target}.prom").read_text()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_dataset(dataset: str, mountpoint: Path) -> None:
    sh("zfs", "create", "-o", f"mountpoint={mountpoint}", dataset)


# ------------------------------------------------------------------ each method in turn


def test_restic_brings_back_teslamate_and_gridmate_state(tmp_path, database):
    seed_teslamate(database)
    rows = teslamate_rows(database)
    state = tmp_path / "var/lib/private/gridmate-energy"
    seed_state_directory(state)
    files = tree(state)
    dumps = tmp_path / "var/backup/teslamate"
    repository = new_repository(tmp_path)
    config = write_config(
        tmp_path,
        {
            "teslamate": database_target(database, dumps),
            "gridmate-energy": {
                "kind": "directory",
                "path": str(state),
                "restic_tag": "gridmate",
                "methods": ["restic"],
            },
        },
        repository=repository.location,
        password_file=repository.password_file,
    )

    # The backup job: prepare hook, restic, cleanup hook.
    dumped = gridmate("backup", "dump", "--target", "teslamate", "--config", str(config))
    assert dumped.returncode == 0, dumped.stderr
    repository.backup("teslamate", dumps)
    repository.backup("gridmate", state)

    # The host is lost: no database, no state, no dumps.
    drop_database(database)
    shutil.rmtree(tmp_path / "var")

    result = preseed(config)
    assert result.returncode == 0, result.stderr
    assert teslamate_rows(database) == rows
    assert tree(state) == files
    assert database_comment(database).startswith("gridmate-preseed complete")
    assert "restic" in database_comment(database)
    assert (state / ".gridmate-preseed").read_text().startswith("complete")
    # Parents preseed had to create are private, as systemd wants /var/lib/private.
    assert oct((tmp_path / "var/lib/private").stat().st_mode & 0o777) == "0o700"
    assert "local could not restore teslamate: no dump file" in result.stderr
    assert 'gridmate_preseed_result{result="restored",target="teslamate"} 1.0' in metrics(
        tmp_path, "teslamate"
    )
    assert 'gridmate_preseed_method_success{method="restic",target="teslamate"} 1.0' in metrics(
        tmp_path, "teslamate"
    )

    # A running host never restores twice: new data stays.
    psql(database, "INSERT INTO drives (car_id, start_date, distance) VALUES (1, now(), 9.9)")
    (state / "energy" / "after-restore.json").write_text("{}")
    again = preseed(config)
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stderr
    assert psql(database, "SELECT count(*) FROM drives") == "3"
    assert (state / "energy" / "after-restore.json").exists()


def test_local_sanoid_snapshot_brings_back_datasets_and_the_dump_on_them(tmp_path, pools, database):
    state, dumps = tmp_path / "mnt" / "state", tmp_path / "mnt" / "dumps"
    make_dataset(f"{pools.local}/state", state)
    make_dataset(f"{pools.local}/dumps", dumps)
    seed_teslamate(database)
    rows = teslamate_rows(database)
    seed_state_directory(state)
    files = tree(state)
    config = write_config(
        tmp_path,
        {
            "dumps": {"kind": "dataset", "dataset": f"{pools.local}/dumps"},
            "gridmate-state": {"kind": "dataset", "dataset": f"{pools.local}/state"},
            "teslamate": database_target(database, dumps),
        },
    )
    dumped = gridmate("backup", "dump", "--target", "teslamate", "--config", str(config))
    assert dumped.returncode == 0, dumped.stderr
    for dataset in ("state", "dumps"):
        taken = take_sanoid_snapshots(tmp_path, f"{pools.local}/{dataset}")
        assert any(name.startswith("autosnap_") for name in taken), taken

    # The data is lost, the datasets and their snapshots survive.
    empty_directory(state)
    empty_directory(dumps)
    drop_database(database)

    result = preseed(config)
    assert result.returncode == 0, result.stderr
    assert tree(state) == files
    assert teslamate_rows(database) == rows
    assert zfs_get(f"{pools.local}/state", "gridmate:preseed").startswith("complete")
    assert "local snapshot" in result.stderr
    assert "local" in database_comment(database)


@pytest.mark.parametrize("rebuilt", ["empty dataset", "no dataset"])
def test_syncoid_pulls_the_replica_back_and_replication_continues(
    tmp_path, pools, database, rebuilt
):
    state, dumps = tmp_path / "mnt" / "state", tmp_path / "mnt" / "dumps"
    local_state, local_dumps = f"{pools.local}/state", f"{pools.local}/dumps"
    make_dataset(local_state, state)
    make_dataset(local_dumps, dumps)
    seed_teslamate(database)
    rows = teslamate_rows(database)
    seed_state_directory(state)
    files = tree(state)
    config = write_config(
        tmp_path,
        {
            "dumps": {
                "kind": "dataset",
                "dataset": local_dumps,
                "path": str(dumps),
                "replica": f"{pools.nas}/dumps",
            },
            "gridmate-state": {
                "kind": "dataset",
                "dataset": local_state,
                "path": str(state),
                "replica": f"{pools.nas}/state",
            },
            "teslamate": database_target(database, dumps),
        },
    )
    assert (
        gridmate("backup", "dump", "--target", "teslamate", "--config", str(config)).returncode == 0
    )
    # The NixOS jobs: Sanoid snapshots, syncoid replicates to the NAS.
    for name in ("state", "dumps"):
        take_sanoid_snapshots(tmp_path, f"{pools.local}/{name}")
        sh("syncoid", "--no-privilege-elevation", f"{pools.local}/{name}", f"{pools.nas}/{name}")

    # The host is rebuilt: its datasets are new (or not there yet), the database is gone.
    for name, mountpoint in (("state", state), ("dumps", dumps)):
        zfs_destroy(f"{pools.local}/{name}")
        if rebuilt == "empty dataset":
            make_dataset(f"{pools.local}/{name}", mountpoint)
    drop_database(database)

    result = preseed(config)
    assert result.returncode == 0, result.stderr
    assert tree(state) == files
    assert teslamate_rows(database) == rows
    assert zfs_get(local_state, "gridmate:preseed").startswith("complete")
    assert zfs_get(local_state, "mountpoint") == str(state)
    assert snapshots(local_state) == snapshots(f"{pools.nas}/state")
    leftovers = sh("zfs", "list", "-H", "-o", "name", "-r", pools.local).stdout
    assert "preseed" not in leftovers

    # The lineage is intact: the next replication to the NAS is incremental.
    (state / "energy" / "new.json").write_text("{}")
    sh("syncoid", "--no-privilege-elevation", local_state, f"{pools.nas}/state")
    assert snapshots(local_state)[-1] in snapshots(f"{pools.nas}/state")


# ------------------------------------------------------------------ failure paths


async def test_unreachable_repository_refuses_mails_and_leaves_the_database_alone(
    tmp_path, database, smtp_server
):
    password = tmp_path / "password"
    password.write_text("whatever")
    config = write_config(
        tmp_path,
        {"teslamate": database_target(database, tmp_path / "dumps", methods=["restic"])},
        repository=f"rest:http://127.0.0.1:{closed_port()}/",
        password_file=password,
        smtp=smtp_server,
    )
    result = preseed(config)
    assert result.returncode == 1
    assert "unreachable" in result.stderr
    assert "held back" in result.stderr
    assert not database_exists(database)
    assert 'gridmate_preseed_result{result="refused",target="teslamate"} 1.0' in metrics(
        tmp_path, "teslamate"
    )
    await smtp_server.wait_for(1)
    recipients, message = smtp_server.messages[0]
    assert recipients == ["owner@home.test"]
    assert "CRITICAL" in message["Subject"]
    assert "teslamate could not be restored" in message["Subject"]
    assert "unreachable" in message.get_body(("plain",)).get_content()


async def test_wrong_password_with_start_empty_policy_starts_empty_once(
    tmp_path, database, smtp_server
):
    repository = new_repository(tmp_path)
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not the password")
    config = write_config(
        tmp_path,
        {"teslamate": database_target(database, tmp_path / "dumps")},
        repository=repository.location,
        password_file=wrong,
        smtp=smtp_server,
        preseed={"on_failure": "start-empty"},
    )
    result = preseed(config)
    assert result.returncode == 0, result.stderr
    assert "wrong password" in result.stderr
    assert "not the password" not in result.stderr
    assert database_exists(database)
    assert database_comment(database).startswith("gridmate-preseed complete")
    assert database_comment(database).endswith("empty")
    await smtp_server.wait_for(1)
    assert "warning" in smtp_server.messages[0][1]["Subject"]

    # Marked complete: a later run (say, after a NAS outage ends) does not restore over it.
    again = preseed(config)
    assert again.returncode == 0
    assert "nothing to do" in again.stderr


def test_pool_not_online_fails_without_touching_anything(tmp_path, pools):
    mountpoint = tmp_path / "mnt" / "state"
    make_dataset(f"{pools.local}/state", mountpoint)
    config = write_config(
        tmp_path,
        {
            "gridmate-state": {
                "kind": "dataset",
                "dataset": f"{pools.local}/state",
                "path": str(mountpoint),
            }
        },
        preseed={"on_failure": "start-empty"},
    )
    sh("zfs", "unmount", f"{pools.local}/state")
    sh("zpool", "export", pools.local)
    result = preseed(config)
    assert result.returncode == 1
    assert f"ZFS pool {pools.local} is not imported" in result.stderr
    assert 'gridmate_preseed_result{result="failed",target="gridmate-state"} 1.0' in metrics(
        tmp_path, "gridmate-state"
    )


def test_missing_replica_and_no_snapshot_refuses_and_cleans_up(tmp_path, pools):
    mountpoint = tmp_path / "mnt" / "state"
    dataset = f"{pools.local}/state"
    make_dataset(dataset, mountpoint)
    config = write_config(
        tmp_path,
        {
            "gridmate-state": {
                "kind": "dataset",
                "dataset": dataset,
                "path": str(mountpoint),
                "replica": f"{pools.nas}/never-replicated",
            }
        },
    )
    result = preseed(config)
    assert result.returncode == 1
    assert f"{pools.nas}/never-replicated" in result.stderr
    assert "has no Sanoid snapshot" in result.stderr
    assert zfs_exists(dataset)
    assert not zfs_exists(f"{dataset}-preseed-incoming")
    assert zfs_get(dataset, "gridmate:preseed") == "-"
    assert list(mountpoint.iterdir()) == []


def test_half_finished_restores_are_redone_from_scratch(tmp_path, database):
    seed_teslamate(database)
    rows = teslamate_rows(database)
    state = tmp_path / "state-dir"
    seed_state_directory(state)
    files = tree(state)
    dumps = tmp_path / "dumps"
    repository = new_repository(tmp_path)
    config = write_config(
        tmp_path,
        {
            "teslamate": database_target(database, dumps),
            "gridmate-energy": {"kind": "directory", "path": str(state), "methods": ["restic"]},
        },
        repository=repository.location,
        password_file=repository.password_file,
    )
    assert (
        gridmate("backup", "dump", "--target", "teslamate", "--config", str(config)).returncode == 0
    )
    repository.backup("gridmate-energy", state)

    # What an interrupted run leaves: a marker saying 'restoring' and part of the data.
    psql(database, "DELETE FROM positions WHERE id > 100; DELETE FROM drives;")
    psql(
        "postgres",
        f'COMMENT ON DATABASE "{database}" IS '
        "'gridmate-preseed restoring 2026-12-06T03:00:00Z local'",
    )
    empty_directory(state)
    (state / ".gridmate-preseed").write_text("restoring 2026-12-06T03:00:00Z restic\n")
    (state / ".gridmate-preseed-incoming").mkdir()
    (state / ".gridmate-preseed-incoming" / "junk").write_text("half")
    (state / "tesla").mkdir()
    (state / "tesla" / "tokens.json").write_text('{"refresh_token": "trunc')

    result = preseed(config)
    assert result.returncode == 0, result.stderr
    assert "did not finish" in result.stderr
    assert teslamate_rows(database) == rows
    assert tree(state) == files
    assert database_comment(database).startswith("gridmate-preseed complete")


def replicated_state(tmp_path: Path, pools: Pools) -> tuple[str, Path, dict[str, Any]]:
    """gridmate's state on a dataset, snapshotted by Sanoid and replicated to the NAS."""
    mountpoint = tmp_path / "mnt" / "state"
    dataset = f"{pools.local}/state"
    make_dataset(dataset, mountpoint)
    seed_state_directory(mountpoint)
    files = tree(mountpoint)
    take_sanoid_snapshots(tmp_path, dataset)
    sh("syncoid", "--no-privilege-elevation", dataset, f"{pools.nas}/state")
    return dataset, mountpoint, files


def test_interrupted_replica_swap_is_redone(tmp_path, pools):
    dataset, mountpoint, files = replicated_state(tmp_path, pools)
    config = write_config(
        tmp_path,
        {
            "gridmate-state": {
                "kind": "dataset",
                "dataset": dataset,
                "path": str(mountpoint),
                "replica": f"{pools.nas}/state",
                "methods": ["syncoid"],
            }
        },
    )
    # Rebuilt host, then a preseed killed half-way: an incoming dataset and a marked,
    # half-filled target.
    zfs_destroy(dataset)
    make_dataset(dataset, mountpoint)
    sh("zfs", "set", "gridmate:preseed=restoring 2026-12-06T03:00:00Z syncoid", dataset)
    (mountpoint / "partial").write_text("x")
    sh("zfs", "create", f"{dataset}-preseed-incoming")

    result = preseed(config)
    assert result.returncode == 0, result.stderr
    assert "did not finish" in result.stderr
    assert tree(mountpoint) == files
    assert not zfs_exists(f"{dataset}-preseed-incoming")
    assert zfs_get(dataset, "gridmate:preseed").startswith("complete")


def test_targets_that_hold_data_are_left_untouched(tmp_path, pools, database):
    # A backup exists for every target...
    seed_teslamate(database)
    dumps = tmp_path / "dumps"
    state = tmp_path / "state-dir"
    seed_state_directory(state)
    repository = new_repository(tmp_path)
    mountpoint = tmp_path / "mnt" / "svc"
    dataset = f"{pools.local}/svc"
    make_dataset(dataset, mountpoint)
    (mountpoint / "old.txt").write_text("old")
    take_sanoid_snapshots(tmp_path, dataset)
    config = write_config(
        tmp_path,
        {
            "teslamate": database_target(database, dumps),
            "gridmate-energy": {"kind": "directory", "path": str(state), "methods": ["restic"]},
            "svc": {"kind": "dataset", "dataset": dataset, "methods": ["local"]},
        },
        repository=repository.location,
        password_file=repository.password_file,
    )
    assert (
        gridmate("backup", "dump", "--target", "teslamate", "--config", str(config)).returncode == 0
    )
    repository.backup("gridmate-energy", state)
    # ...but each holds data of its own, not restored by gridmate (no marker).
    psql(database, "DELETE FROM positions WHERE car_id = 1; UPDATE cars SET name = 'Renamed'")
    current_rows = teslamate_rows(database)
    (state / "energy" / "budget.json").write_text('{"writes_today": 0}')
    current_files = tree(state)
    (mountpoint / "old.txt").write_text("new")

    result = preseed(config)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("left untouched") == 3
    assert teslamate_rows(database) == current_rows
    assert database_comment(database) == ""
    assert tree(state) == current_files
    assert (mountpoint / "old.txt").read_text() == "new"
    assert zfs_get(dataset, "gridmate:preseed") == "-"


def test_dry_run_tells_what_would_happen_and_changes_nothing(tmp_path, pools, database):
    seed_teslamate(database)
    dumps = tmp_path / "dumps"
    mountpoint = tmp_path / "mnt" / "svc"
    dataset = f"{pools.local}/svc"
    make_dataset(dataset, mountpoint)
    (mountpoint / "file").write_text("x")
    taken = take_sanoid_snapshots(tmp_path, dataset)
    config = write_config(
        tmp_path,
        {
            "teslamate": database_target(database, dumps),
            "svc": {"kind": "dataset", "dataset": dataset, "replica": f"{pools.nas}/svc"},
        },
    )
    assert (
        gridmate("backup", "dump", "--target", "teslamate", "--config", str(config)).returncode == 0
    )
    drop_database(database)
    empty_directory(mountpoint)

    result = preseed(config, "--dry-run")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"target teslamate: database {database} at {PG_HOST}:{PG_PORT}" in out
    assert "now: does not exist" in out
    assert f"1. local: would load {dumps}/{database}.dump" in out
    assert "2. restic: would fail: restic is not configured" in out
    assert f"1. syncoid: would fail: the replica {pools.nas}/svc does not exist" in out
    assert f"2. local: would roll {dataset} back to {dataset}@{taken[-1]}" in out
    assert "if every method fails: refuse (exit 1)" in out
    assert not database_exists(database)
    assert list(mountpoint.iterdir()) == []
    assert zfs_get(dataset, "gridmate:preseed") == "-"


def test_restic_restores_a_dataset_the_rebuilt_host_does_not_have_yet(tmp_path, pools):
    mountpoint = tmp_path / "mnt" / "state"
    dataset = f"{pools.local}/state"
    make_dataset(dataset, mountpoint)
    seed_state_directory(mountpoint)
    files = tree(mountpoint)
    repository = new_repository(tmp_path)
    repository.backup("gridmate", mountpoint)
    config = write_config(
        tmp_path,
        {
            "gridmate-state": {
                "kind": "dataset",
                "dataset": dataset,
                "path": str(mountpoint),
                "restic_tag": "gridmate",
                "methods": ["restic"],
            }
        },
        repository=repository.location,
        password_file=repository.password_file,
    )
    zfs_destroy(dataset)

    result = preseed(config)
    assert result.returncode == 0, result.stderr
    assert tree(mountpoint) == files
    assert zfs_get(dataset, "mountpoint") == str(mountpoint)
    assert zfs_get(dataset, "gridmate:preseed").startswith("complete")
    assert not (mountpoint / ".gridmate-preseed-incoming").exists()


def test_restored_objects_belong_to_teslamates_role(tmp_path, database):
    role = f"gm_teslamate_{uuid.uuid4().hex[:8]}"
    psql("postgres", f'CREATE ROLE "{role}" LOGIN')
    try:
        seed_teslamate(database)
        rows = teslamate_rows(database)
        dumps = tmp_path / "dumps"
        config = write_config(
            tmp_path, {"teslamate": database_target(database, dumps, methods=["local"])}
        )
        text = config.read_text().replace(
            "[targets.teslamate.database]\n", f'[targets.teslamate.database]\nowner = "{role}"\n'
        )
        config.write_text(text)
        dump_teslamate(config)
        drop_database(database)

        result = preseed(config)
        assert result.returncode == 0, result.stderr
        assert teslamate_rows(database) == rows
        owners = psql(
            database,
            "SELECT DISTINCT tableowner FROM pg_tables "
            "WHERE schemaname IN ('public', 'private') ORDER BY 1",
        )
        assert owners == role
        assert (
            psql(
                "postgres",
                f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{database}'",
            )
            == role
        )
    finally:
        drop_database(database)
        psql("postgres", f'DROP ROLE IF EXISTS "{role}"')


async def test_a_preseed_killed_mid_restore_is_detected_and_redone(tmp_path, database):
    seed_teslamate(database)
    rows = teslamate_rows(database)
    dumps = tmp_path / "dumps"
    config = write_config(
        tmp_path, {"teslamate": database_target(database, dumps, methods=["local"])}
    )
    dump_teslamate(config)
    # The database is there with TeslaMate's tables but no rows: preseed will restore.
    psql(
        database,
        "TRUNCATE cars, car_settings, geofences, positions, drives, "
        "charging_processes, private.tokens CASCADE",
    )

    dsn = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{database}"
    holder = await asyncpg.connect(dsn)
    watcher = await asyncpg.connect(dsn)
    process = None
    try:
        # A reader holding a lock makes preseed's DROP SCHEMA wait: a known point mid-restore.
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("LOCK TABLE cars IN ACCESS SHARE MODE")
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gridmate.cli",
            "preseed",
            "--config",
            str(config),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = asyncio.get_running_loop().time() + 60
        while not await watcher.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'gridmate-backup' "
            "AND wait_event_type = 'Lock'"
        ):
            assert process.returncode is None, "preseed ended before reaching the lock"
            assert asyncio.get_running_loop().time() < deadline, "preseed never waited"
            await asyncio.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)  # power cut
        await asyncio.wait_for(process.wait(), 30)
        await transaction.rollback()
    finally:
        if process is not None and process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await asyncio.wait_for(process.wait(), 30)
        await holder.close()
        await watcher.close()

    assert database_comment(database).startswith("gridmate-preseed restoring")
    assert psql(database, "SELECT count(*) FROM cars") == "0"

    result = preseed(config)
    assert result.returncode == 0, result.stderr
    assert "did not finish" in result.stderr
    assert teslamate_rows(database) == rows
    assert database_comment(database).startswith("gridmate-preseed complete")


# ------------------------------------------------------------------ the NAS over ssh
#
# The replica lives on "the NAS": a pool of the same zfs-fuse daemon, reached only
# through Debian's dropbear on 127.0.0.1 with a key, a port and a known hosts file of
# the test's own, passed on by gridmate's zfs.ssh_* settings. dropbear's log tells
# that the data really went through ssh.


@pytest.fixture(scope="module")
def nas_ssh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NasSsh]:
    try:
        with dropbear_server(tmp_path_factory.mktemp("nas") / "ssh") as server:
            yield server
    except SshUnavailable as error:
        pytest.skip(str(error))


def nas_settings(nas: NasSsh, **changes: Any) -> dict[str, Any]:
    """zfs.ssh_* for the test's NAS: its key, its port, its known host key only."""
    known_hosts = changes.pop("known_hosts", nas.known_hosts)
    return {
        "ssh_key": str(nas.key),
        "ssh_port": nas.port,
        "ssh_options": [f"UserKnownHostsFile={known_hosts}", "StrictHostKeyChecking=yes"],
        **changes,
    }


def ssh_logins(nas: NasSsh) -> int:
    return nas.log.read_text().count("Pubkey auth succeeded for 'root'")


def key_lines(key: Path) -> list[str]:
    """The secret part of a private key file: every line between its armour lines."""
    return [line for line in key.read_text().splitlines() if line and "PRIVATE KEY" not in line]


def test_syncoid_pulls_the_replica_over_ssh_and_replication_continues(tmp_path, pools, nas_ssh):
    dataset, mountpoint, files = replicated_state(tmp_path, pools)
    replica = nas_ssh.replica(f"{pools.nas}/state")
    config = write_config(
        tmp_path,
        {
            "gridmate-state": {
                "kind": "dataset",
                "dataset": dataset,
                "path": str(mountpoint),
                "replica": replica,
                "methods": ["syncoid"],
            }
        },
        zfs=nas_settings(nas_ssh),
    )
    zfs_destroy(dataset)  # a new disk: the dataset is not there yet
    logins = ssh_logins(nas_ssh)

    result = preseed(config)
    assert result.returncode == 0, result.stderr
    assert f"restored with syncoid from the replica {replica}" in result.stderr
    assert tree(mountpoint) == files
    assert zfs_get(dataset, "gridmate:preseed").startswith("complete")
    assert zfs_get(dataset, "mountpoint") == str(mountpoint)
    assert snapshots(dataset) == snapshots(f"{pools.nas}/state")
    assert not zfs_exists(f"{dataset}-preseed-incoming")
    assert ssh_logins(nas_ssh) >= logins + 2  # the read-only look, then syncoid

    # The next replication to the NAS, over ssh as well, is incremental.
    (mountpoint / "energy" / "after.json").write_text("{}")
    sh("zfs", "snapshot", f"{dataset}@autosnap_after-restore")
    sh(
        "syncoid",
        "--no-privilege-elevation",
        "--no-sync-snap",
        f"--sshkey={nas_ssh.key}",
        f"--sshport={nas_ssh.port}",
        f"--sshoption=UserKnownHostsFile={nas_ssh.known_hosts}",
        "--sshoption=BatchMode=yes",
        dataset,
        replica,
    )
    assert snapshots(f"{pools.nas}/state")[-1] == "autosnap_after-restore"


def test_dry_run_looks_at_the_remote_replica_over_ssh(tmp_path, pools, nas_ssh):
    dataset, _, _ = replicated_state(tmp_path, pools)
    taken = snapshots(f"{pools.nas}/state")
    replica = nas_ssh.replica(f"{pools.nas}/state")
    missing = nas_ssh.replica(f"{pools.nas}/never-replicated")
    config = write_config(
        tmp_path,
        {
            "state": {"kind": "dataset", "dataset": dataset, "replica": replica},
            "other": {"kind": "dataset", "dataset": f"{pools.local}/other", "replica": missing},
        },
        zfs=nas_settings(nas_ssh),
    )
    zfs_destroy(dataset)

    result = preseed(config, "--dry-run")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert (
        f"1. syncoid: would replicate {replica} ({len(taken)} snapshots, newest {taken[-1]}) "
        f"into {dataset} with syncoid"
    ) in out
    assert f"1. syncoid: would fail: the replica {missing} does not exist" in out
    assert not zfs_exists(dataset)
    assert not zfs_exists(f"{pools.local}/other")


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        ("wrong key", "the NAS refused the login with this key (root@127.0.0.1: Permission denied"),
        ("closed port", "the NAS is unreachable (ssh: connect to host 127.0.0.1 port"),
        ("host key mismatch", "the NAS's host key does not match the known one"),
        ("unknown host key", "the NAS's host key is not known"),
        ("unreadable key", "(zfs.ssh_key) cannot be read: No such file or directory"),
    ],
)
def test_an_unreachable_nas_is_named_in_one_line_and_the_next_method_restores(
    tmp_path, pools, nas_ssh, failure, reason
):
    dataset, mountpoint, files = replicated_state(tmp_path, pools)
    replica = nas_ssh.replica(f"{pools.nas}/state")
    secrets = key_lines(nas_ssh.key)
    zfs: dict[str, Any]
    if failure == "wrong key":
        wrong = new_ssh_key(tmp_path, "not-the-nas-key")
        secrets += key_lines(wrong)
        zfs = nas_settings(nas_ssh, ssh_key=str(wrong))
    elif failure == "closed port":
        zfs = nas_settings(nas_ssh, ssh_port=closed_port())
    elif failure == "host key mismatch":
        _, impostor = new_host_key(tmp_path, "impostor_host_key")
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(nas_ssh.known_hosts_line(impostor))
        zfs = nas_settings(nas_ssh, known_hosts=known_hosts)
    elif failure == "unknown host key":
        zfs = nas_settings(nas_ssh, known_hosts=tmp_path / "empty_known_hosts")
    else:
        zfs = nas_settings(nas_ssh, ssh_key=str(tmp_path / "no-such-key"))
    target = {"kind": "dataset", "dataset": dataset, "path": str(mountpoint), "replica": replica}
    # The data is lost; the dataset and its Sanoid snapshots survive.
    empty_directory(mountpoint)
    before = snapshots(dataset)

    # syncoid alone: refused, the dataset exactly as it was.
    only_syncoid = write_config(
        tmp_path, {"gridmate-state": {**target, "methods": ["syncoid"]}}, zfs=zfs, log_level="debug"
    )
    refused = preseed(only_syncoid)
    assert refused.returncode == 1
    line = next(line for line in refused.stderr.splitlines() if "syncoid could not restore" in line)
    assert f"cannot reach the replica {replica}" in line
    assert reason in line
    assert "@@@" not in refused.stderr
    assert "held back" in refused.stderr
    assert list(mountpoint.iterdir()) == []
    assert snapshots(dataset) == before
    assert zfs_get(dataset, "gridmate:preseed") == "-"
    assert not zfs_exists(f"{dataset}-preseed-incoming")

    # Then the next method: the newest Sanoid snapshot on this host.
    with_local = write_config(
        tmp_path,
        {"gridmate-state": {**target, "methods": ["syncoid", "local"]}},
        zfs=zfs,
        log_level="debug",
    )
    restored = preseed(with_local)
    assert restored.returncode == 0, restored.stderr
    assert reason in restored.stderr
    assert "restored with local from local snapshot" in restored.stderr
    assert tree(mountpoint) == files
    assert zfs_get(dataset, "gridmate:preseed").startswith("complete")

    # The key never shows, in the log (debug level included) or in the metrics.
    shown = refused.stderr + restored.stdout + restored.stderr + metrics(tmp_path, "gridmate-state")
    assert not [secret for secret in secrets if secret in shown]
