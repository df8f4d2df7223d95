"""The backup component's decisions, settings and hooks, without ZFS or a database.

The end-to-end restores with real restic, PostgreSQL and ZFS are in
tests/test_backup_preseed.py.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import re
import subprocess
from pathlib import Path

import aiomqtt
import pytest
from backup_rig import gridmate, toml

from gridmate.backup.freshness import MissingResult, run_succeeded
from gridmate.backup.postgres import restore_list
from gridmate.backup.preseed import Decision, decide
from gridmate.backup.restic import classify_failure, parse_environment
from gridmate.backup.settings import BackupSettings, ZfsSettings
from gridmate.backup.ssh import classify_ssh_failure, ssh_argv, syncoid_ssh_arguments
from gridmate.backup.targets import Inspection
from gridmate.backup.tools import last_lines
from gridmate.homeassistant.view import HomeAssistantView
from gridmate.runtime.settings import ConfigError, load_settings

# ------------------------------------------------------------------ decisions


@pytest.mark.parametrize(
    ("inspection", "decision"),
    [
        (Inspection(exists=False, holds_data=False, marker=None), Decision.restore),
        (Inspection(exists=True, holds_data=False, marker=None), Decision.restore),
        (Inspection(exists=True, holds_data=True, marker=None), Decision.leave_untouched),
        (
            Inspection(exists=True, holds_data=True, marker="complete 2026-12-01T00:00:00Z restic"),
            Decision.already_complete,
        ),
        (
            Inspection(exists=True, holds_data=False, marker="complete 2026-12-01T00:00:00Z empty"),
            Decision.already_complete,
        ),
        # An interrupted restore is redone even though the target now holds (partial) data.
        (
            Inspection(exists=True, holds_data=True, marker="restoring 2026-12-01T00:00:00Z local"),
            Decision.redo,
        ),
        (
            Inspection(exists=False, holds_data=False, marker=None, leftovers=("pool/x-incoming",)),
            Decision.redo,
        ),
        # A marker preseed does not understand is not trusted as complete.
        (Inspection(exists=True, holds_data=True, marker="garbled"), Decision.redo),
    ],
)
def test_decide(inspection: Inspection, decision: Decision) -> None:
    assert decide(inspection) is decision


def test_restore_list_leaves_out_what_the_recipe_created() -> None:
    toc = (
        ";\n; Archive created at 2026-12-06 04:40:21 UTC\n"
        "8; 2615 16571 SCHEMA - private postgres\n"
        "2; 3079 16466 EXTENSION - cube \n"
        "3428; 0 0 COMMENT - EXTENSION cube \n"
        "3; 3079 16555 EXTENSION - earthdistance \n"
        "3429; 0 0 COMMENT - EXTENSION earthdistance \n"
        "4; 3079 16600 EXTENSION - pg_trgm \n"
        "6; 2615 2200 SCHEMA - public pg_database_owner\n"
        "217; 1259 16572 TABLE public cars postgres\n"
        "3420; 0 16572 TABLE DATA public cars postgres\n"
    )
    kept = restore_list(toc)
    assert "EXTENSION - cube" not in kept
    assert "COMMENT - EXTENSION earthdistance" not in kept
    assert "SCHEMA - public" not in kept
    for line in ("SCHEMA - private", "EXTENSION - pg_trgm", "TABLE public cars", "TABLE DATA"):
        assert line in kept


def test_restic_environment_file() -> None:
    text = "# B2\nB2_ACCOUNT_ID=abc\nexport B2_ACCOUNT_KEY=\"k=ey\"\n\nAWS_REGION='eu'\n"
    assert parse_environment(text) == {
        "B2_ACCOUNT_ID": "abc",
        "B2_ACCOUNT_KEY": "k=ey",
        "AWS_REGION": "eu",
    }
    with pytest.raises(ValueError, match="line 2: expected KEY=VALUE"):
        parse_environment("A=1\nnot a pair\n")


@pytest.mark.parametrize(
    ("stderr", "words"),
    [
        ("Fatal: wrong password or no key found\n", "wrong password"),
        (
            "Fatal: unable to open config file: stat /x/config: no such file or directory\n"
            "Is there a repository at the following location?\n/x\n",
            "unreachable or missing",
        ),
        (
            "Fatal: unable to open config file: client.Head: dial tcp 127.0.0.1:1: connect: "
            "connection refused\nIs there a repository at the following location?\n",
            "unreachable or missing",
        ),
        ("Fatal: unable to create lock in backend: repository is already locked\n", "locked"),
    ],
)
def test_restic_failures_in_plain_words(stderr: str, words: str) -> None:
    assert words in classify_failure(stderr, "/srv/restic")


def test_error_output_is_summed_up_by_its_error_line() -> None:
    pg_restore = (
        "pg_restore: while PROCESSING TOC:\n"
        "pg_restore: from TOC entry 3277; 1259 16582 INDEX geofences_earth postgres\n"
        'pg_restore: error: could not execute query: ERROR:  type "earth" does not exist\n'
        "LINE 1: ...ians($1))*sin(radians($2))),earth()*sin(radians($1)))::earth\n"
        "Command was: CREATE INDEX geofences_earth ON public.geofences USING gist (...);\n"
    )
    summary = last_lines(pg_restore)
    assert summary.startswith('pg_restore: error: could not execute query: ERROR:  type "earth"')
    assert summary.endswith(
        "Command was: CREATE INDEX geofences_earth ON public.geofences USING gist (...);"
    )
    assert last_lines("one\ntwo\nthree\n") == "two / three"
    assert last_lines("") == "no error message"


def test_service_result() -> None:
    assert run_succeeded({"SERVICE_RESULT": "success"}) is True
    for failure in ("exit-code", "timeout", "signal", "core-dump", "watchdog"):
        assert run_succeeded({"SERVICE_RESULT": failure}) is False
    with pytest.raises(MissingResult):
        run_succeeded({})


# ------------------------------------------------------------------ settings


def _load(tmp_path: Path, data: dict) -> BackupSettings:
    path = tmp_path / "backup.toml"
    path.write_text(toml(data))
    return load_settings(BackupSettings, path)


@pytest.mark.parametrize(
    ("targets", "problem"),
    [
        ({"tm": {"kind": "database", "database": {}}}, "needs 'dump_directory'"),
        ({"tm": {"kind": "database", "dump_directory": "/d"}}, "needs a [database] table"),
        ({"d": {"kind": "dataset"}}, "needs 'dataset'"),
        ({"d": {"kind": "dataset", "dataset": "nopool"}}, "pool/name"),
        ({"d": {"kind": "directory"}}, "needs 'path'"),
        ({"d": {"kind": "directory", "path": "rel"}}, "path must be absolute"),
        ({"d": {"kind": "directory", "path": "/x", "methods": ["restic", "restic"]}}, "twice"),
        ({"d": {"kind": "directory", "path": "/x", "methods": ["rsync"]}}, "methods"),
        ({"BadName": {"kind": "directory", "path": "/x"}}, "lower-case"),
        ({"d": {"kind": "dataset", "dataset": "p/d", "replica": "nas;reboot:t/r"}}, "[user@]host"),
        ({"d": {"kind": "dataset", "dataset": "p/d", "replica": "nas:2222:t/r"}}, "zfs.ssh_port"),
        ({"d": {"kind": "dataset", "dataset": "p/d", "replica": "nas:tank"}}, "pool/name"),
    ],
)
def test_bad_targets_are_refused_with_the_key(tmp_path: Path, targets: dict, problem: str) -> None:
    with pytest.raises(ConfigError) as error:
        _load(tmp_path, {"targets": targets})
    assert any(problem in line for line in error.value.problems), error.value.problems


@pytest.mark.parametrize(
    ("zfs", "problem"),
    [
        ({"ssh_port": 0}, "zfs.ssh_port"),
        ({"ssh_options": ["StrictHostKeyChecking yes"]}, "write Name=value"),
        ({"ssh_options": ["ProxyCommand=nc$IFS%h"]}, "shell characters"),
        ({"ssh_options": ["=yes"]}, "write Name=value"),
        ({"ssh_key": "/run/keys/nas key"}, "zfs.ssh_key"),
    ],
)
def test_bad_ssh_settings_are_refused_with_the_key(tmp_path: Path, zfs: dict, problem: str) -> None:
    with pytest.raises(ConfigError) as error:
        _load(tmp_path, {"zfs": zfs})
    assert any(problem in line for line in error.value.problems), error.value.problems


def test_the_nas_port_key_and_options_reach_ssh_in_the_order_ssh_weighs_them() -> None:
    settings = ZfsSettings(
        ssh_key=Path("/run/credentials/k"),
        ssh_port=2222,
        ssh_options=("BatchMode=no", "ConnectTimeout=5", "UserKnownHostsFile=/etc/nas_hosts"),
    )
    # ssh keeps the first value of each option: batch mode first, so it cannot be
    # turned off; the user's connect timeout before the default one, so it wins.
    assert syncoid_ssh_arguments(settings) == [
        "--sshkey=/run/credentials/k",
        "--sshport=2222",
        "--sshoption=BatchMode=yes",
        "--sshoption=BatchMode=no",
        "--sshoption=ConnectTimeout=5",
        "--sshoption=UserKnownHostsFile=/etc/nas_hosts",
        "--sshoption=IdentitiesOnly=yes",
        "--sshoption=ConnectTimeout=30",
    ]
    argv = ssh_argv(settings, "syncoid@nas.lan", ["zfs", "list", "-d", "1", "tank/my data"])
    assert argv[-2:] == ["syncoid@nas.lan", "zfs list -d 1 'tank/my data'"]
    assert (
        argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-i") + 1] == "/run/credentials/k"
    )
    assert syncoid_ssh_arguments(ZfsSettings()) == [
        "--sshoption=BatchMode=yes",
        "--sshoption=ConnectTimeout=30",
    ]


@pytest.mark.parametrize(
    ("stderr", "words"),
    [
        ("syncoid@nas.lan: Permission denied (publickey).\n", "refused the login"),
        ("ssh: connect to host nas.lan port 2222: Connection timed out\n", "unreachable"),
        ("ssh: Could not resolve hostname nas.lan: Name or service not known\n", "unreachable"),
        (
            "@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n"
            "Host key verification failed.\n",
            "does not match",
        ),
        ("No ED25519 host key is known for nas.lan\nHost key verification failed.\n", "not known"),
        (
            'Load key "/k": bad permissions\nsyncoid@nas.lan: Permission denied (publickey).\n',
            "cannot use the key",
        ),
        ("cannot send 'tank/x': permission denied\n", None),
        ("cannot open 'tank/x': dataset does not exist\n", None),
    ],
)
def test_ssh_failures_in_plain_words(stderr: str, words: str | None) -> None:
    reason = classify_ssh_failure(stderr)
    if words is None:
        assert reason is None
    else:
        assert reason is not None and words in reason
        assert "\n" not in reason


def test_restic_password_never_inline_and_one_repository_location(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        _load(tmp_path, {"restic": {"repository": "/r", "password": "hunter22"}})
    assert "not accepted inline" in " ".join(error.value.problems)
    with pytest.raises(ConfigError) as error:
        _load(tmp_path, {"restic": {"repository": "/r", "repository_file": "/f"}})
    assert "not both" in " ".join(error.value.problems)


def test_restic_password_from_the_credentials_directory(tmp_path, monkeypatch) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "restic_password").write_text("s3cret-pass\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    settings = _load(tmp_path, {"restic": {"repository": "/r"}})
    assert settings.restic.password is not None
    assert settings.restic.password.reveal() == "s3cret-pass"
    assert settings.restic.configured


def test_method_defaults(tmp_path: Path) -> None:
    settings = _load(
        tmp_path,
        {
            "targets": {
                "tm": {"kind": "database", "dump_directory": "/d", "database": {}},
                "ds": {"kind": "dataset", "dataset": "pool/ds"},
                "dir": {"kind": "directory", "path": "/x", "on_failure": "start-empty"},
            }
        },
    )
    assert settings.methods_for(settings.targets["tm"]) == ("local", "restic")
    assert settings.methods_for(settings.targets["ds"]) == ("syncoid", "local")
    assert settings.on_failure_for(settings.targets["ds"]) == "refuse"
    assert settings.on_failure_for(settings.targets["dir"]) == "start-empty"
    assert settings.restic_tag_for("ds") == "ds"


# ------------------------------------------------------------------ the command line


def _config(tmp_path: Path, **extra) -> Path:
    data = {
        "state_directory": str(tmp_path / "state"),
        "textfile_directory": str(tmp_path / "textfile"),
        **extra,
    }
    path = tmp_path / "backup.toml"
    path.write_text(toml(data))
    return path


def test_preseed_is_offered_at_the_top_level() -> None:
    result = gridmate("--help")
    assert re.search(r"^\s+preseed\s", result.stdout, re.MULTILINE), result.stdout
    sub = gridmate("preseed", "--help")
    assert sub.returncode == 0
    assert "--dry-run" in sub.stdout and "--target" in sub.stdout


def test_unknown_target_is_a_usage_error(tmp_path: Path) -> None:
    config = _config(tmp_path, targets={"state": {"kind": "directory", "path": "/nowhere"}})
    result = gridmate("preseed", "--target", "teslamte", "--config", str(config))
    assert result.returncode == 2
    assert "unknown target teslamte (configured: state)" in result.stderr


def test_a_second_preseed_of_the_same_target_waits_its_turn(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    config = _config(tmp_path, targets={"state": {"kind": "directory", "path": str(directory)}})
    (tmp_path / "state").mkdir()
    with (tmp_path / "state" / "preseed-state.lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = gridmate("preseed", "--config", str(config))
    assert result.returncode == 1
    assert "another preseed of state is running" in result.stderr
    assert not directory.exists()


def record(
    config: Path, job: str, service_result: str, kind: str = "backup"
) -> subprocess.CompletedProcess[str]:
    """Run ``gridmate backup record`` as a unit's ExecStopPost= hook would, with its result."""
    return gridmate(
        "backup",
        "record",
        "--kind",
        kind,
        "--job",
        job,
        "--config",
        str(config),
        env={"SERVICE_RESULT": service_result},
    )


def test_record_keeps_the_last_success_through_failures(tmp_path: Path) -> None:
    config = _config(tmp_path)
    ok = record(config, "teslamate", "success")
    assert ok.returncode == 0, ok.stderr
    prom = (tmp_path / "textfile" / "gridmate_backup_freshness.prom").read_text()
    success = re.search(
        r'^gridmate_backup_last_success_timestamp_seconds\{job="teslamate"\} (\S+)$', prom, re.M
    )
    assert success, prom
    assert 'gridmate_backup_last_run_success{job="teslamate"} 1.0' in prom

    failed = record(config, "teslamate", "exit-code")
    assert failed.returncode == 0, failed.stderr
    assert "failed (exit-code)" in failed.stderr
    prom = (tmp_path / "textfile" / "gridmate_backup_freshness.prom").read_text()
    assert (
        f'gridmate_backup_last_success_timestamp_seconds{{job="teslamate"}} {success.group(1)}'
        in prom
    )
    assert 'gridmate_backup_last_run_success{job="teslamate"} 0.0' in prom

    replication = record(config, "rpool-pg", "success", kind="replication")
    assert replication.returncode == 0, replication.stderr
    prom = (tmp_path / "textfile" / "gridmate_backup_freshness.prom").read_text()
    assert 'gridmate_replication_last_success_timestamp_seconds{job="rpool-pg"}' in prom
    assert 'gridmate_backup_last_run_success{job="teslamate"} 0.0' in prom


def test_record_outside_a_stop_hook_says_how_to_use_it(tmp_path: Path) -> None:
    result = gridmate("backup", "record", "--job", "x", "--config", str(_config(tmp_path)))
    assert result.returncode == 2
    assert "$SERVICE_RESULT is not set" in result.stderr
    assert not (tmp_path / "textfile" / "gridmate_backup_freshness.prom").exists()


@pytest.mark.services
async def test_a_failed_backup_is_mailed(tmp_path: Path, smtp_server) -> None:
    config = _config(
        tmp_path,
        notify={
            "smtp_host": smtp_server.host,
            "smtp_port": smtp_server.port,
            "security": "none",
            "recipients": {"warning": ["owner@home.test"]},
        },
    )
    result = record(config, "teslamate", "timeout")
    assert result.returncode == 0, result.stderr
    await smtp_server.wait_for(1)
    message = smtp_server.messages[0][1]
    assert "The backup teslamate failed" in message["Subject"]
    body = message.get_body(("plain",)).get_content()
    assert "'timeout'" in body
    assert "No successful backup of this job has been recorded yet" in body


@pytest.mark.services
async def test_backup_notices_reach_home_assistant_as_events(tmp_path: Path, mqtt_broker) -> None:
    base = mqtt_broker.topic_prefix()
    config = _config(
        tmp_path,
        ha_device={
            "enable": True,
            "mqtt": {"host": mqtt_broker.host, "port": mqtt_broker.port},
            "discovery_prefix": f"{base}/ha",
            "base_topic": base,
        },
    )
    view = HomeAssistantView(
        mqtt_broker.host, mqtt_broker.port, discovery_prefix=f"{base}/ha", base=base
    )
    events = f"{base}/backup/notifications"
    async with view.running(), aiomqtt.Client(mqtt_broker.host, mqtt_broker.port) as ha:
        await ha.subscribe(events, qos=1)
        # A successful run announces the device, so the entity exists before a failure.
        ok = gridmate(
            "backup", "record", "--job", "teslamate", "--result", "success", "--config", str(config)
        )
        assert ok.returncode == 0, ok.stderr
        entities = await view.wait_for(lambda e: ("gridmate backup", "Notifications") in e)
        failed = gridmate(
            "backup", "record", "--job", "teslamate", "--result", "failure", "--config", str(config)
        )
        assert failed.returncode == 0, failed.stderr
        async with asyncio.timeout(20):
            message = await anext(aiter(ha.messages))
    assert str(message.topic) == events and not message.retain
    payload = json.loads(message.payload)
    assert payload["event_type"] == "warning" and payload["kind"] == "backup_failed"
    assert payload["title"] == "The backup teslamate failed"
    assert payload["key"] == "backup:teslamate"
    entity = entities[("gridmate backup", "Notifications")]
    assert entity.platform == "event" and entity.available
    document = json.loads(view.retained[f"{base}/ha/device/gridmate_backup/config"])
    assert document["dev"]["mdl"] == "Backup and restore" and "avty" not in document
    assert view.config_messages == 1  # announced once, not again by the failed run
