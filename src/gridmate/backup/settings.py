"""Settings of the backup component (``GRIDMATE_BACKUP_...``).

One file describes the restic repository, the ZFS tools, and the *targets*:
what ``gridmate backup preseed`` may restore before a service first starts
(TeslaMate's database, gridmate's state directories, a ZFS dataset).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from gridmate.homeassistant.settings import NotificationDeviceSettings
from gridmate.notify import NotifySettings
from gridmate.runtime.settings import ComponentSettings, Credential, Secret, Section

Method = Literal["syncoid", "local", "restic"]
"""Where a restore comes from: the NAS replica (syncoid), the newest local Sanoid
snapshot (local; for a database, the newest dump file on this host), or restic."""

OnFailure = Literal["refuse", "start-empty"]

DEFAULT_METHODS: tuple[Method, ...] = ("syncoid", "local")
DATABASE_DEFAULT_METHODS: tuple[Method, ...] = ("local", "restic")

_TARGET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_DATASET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*(/[A-Za-z0-9][A-Za-z0-9_.:-]*)+$")
_SHELL_WORD = re.compile(r"^[A-Za-z0-9_./%+,:@=~-]+$")
_SSH_OPTION_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
_SSH_DESTINATION = re.compile(r"^(?:[A-Za-z0-9._-]+@)?[A-Za-z0-9][A-Za-z0-9.-]*$")


def split_replica(replica: str) -> tuple[str | None, str]:
    """``([user@]host, dataset)`` of a replica on another machine, ``(None, dataset)``
    of one on this host. As for syncoid, a ':' before the first '/' means a host."""
    if ":" in replica.split("/", 1)[0]:
        destination, dataset = replica.split(":", 1)
        return destination, dataset
    return None, replica


class ResticSettings(Section):
    """The restic repository the backup jobs write to and preseed restores from."""

    repository: str | None = Field(
        None,
        description="Repository location, e.g. 'sftp:backup@nas:/srv/restic/gridmate' or "
        "'/mnt/usb/restic'. Use repository_file when the URL carries a password.",
    )
    repository_file: Path | None = Field(
        None, description="File holding the repository location (restic's --repository-file)."
    )
    password: Annotated[Secret | None, Credential("restic_password")] = Field(
        None, description="Repository password (password_file or credential 'restic_password')."
    )
    environment: Annotated[Secret | None, Credential("restic_environment")] = Field(
        None,
        description="KEY=VALUE lines for restic's environment, such as cloud storage keys "
        "(environment_file or credential 'restic_environment').",
    )
    binary: str = Field("restic", description="The restic program (name on PATH or a path).")
    cache_directory: Path | None = Field(
        None, description="restic's cache; default: <state_directory>/restic-cache."
    )
    timeout_seconds: float = Field(
        3600.0, gt=0, description="Longest a single restic command may run."
    )

    @model_validator(mode="after")
    def _one_location(self) -> ResticSettings:
        if self.repository is not None and self.repository_file is not None:
            raise ValueError("set restic.repository or restic.repository_file, not both")
        return self

    @property
    def configured(self) -> bool:
        return (self.repository or self.repository_file) is not None and self.password is not None


class ZfsSettings(Section):
    zfs_binary: str = Field("zfs", description="The zfs program.")
    zpool_binary: str = Field("zpool", description="The zpool program.")
    syncoid_binary: str = Field("syncoid", description="The syncoid program (Sanoid package).")
    snapshot_prefix: str = Field(
        "autosnap_", description="Name prefix of Sanoid's snapshots (the 'local' method)."
    )
    ssh_key: Path | None = Field(
        None,
        description="Private key for logging in to the NAS (syncoid --sshkey, ssh -i for "
        "preseed's look at the replica; the key stays in its file).",
    )
    ssh_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Port of the NAS's ssh server (syncoid --sshport); default: ssh's own "
        "(22, or what ssh_config says).",
    )
    ssh_options: tuple[str, ...] = Field(
        (),
        description="ssh options for reaching the NAS, each 'Name=value' (syncoid "
        "--sshoption, ssh -o), e.g. ['UserKnownHostsFile=/etc/gridmate/nas_known_hosts', "
        "'StrictHostKeyChecking=yes']. BatchMode=yes always comes first (preseed never waits "
        "for a password or a host key question), ConnectTimeout=30 last (an option of yours "
        "wins).",
    )
    send_options: str = Field(
        "",
        description="syncoid --sendoptions when pulling from the replica; 'w' for raw sends "
        "of encrypted datasets.",
    )
    recv_options: str = Field(
        "u",
        description="syncoid --recvoptions; 'u' (do not mount while receiving) because mount "
        "cannot be delegated on Linux.",
    )
    timeout_seconds: float = Field(
        6 * 3600.0, gt=0, description="Longest a replication from the NAS may run."
    )

    @field_validator("send_options", "recv_options")
    @classmethod
    def _check_options(cls, value: str) -> str:
        if any(c in value for c in "\"'\\;&|$`"):
            raise ValueError("only zfs send/receive option letters and words are accepted")
        return value

    # syncoid pastes the key's path and the ssh options into shell command lines
    # unquoted, so anything a shell would split or interpret is refused here.

    @field_validator("ssh_key")
    @classmethod
    def _check_ssh_key(cls, value: Path | None) -> Path | None:
        if value is not None and not _SHELL_WORD.match(str(value)):
            raise ValueError(
                "the key's path may not hold spaces, quotes or shell characters "
                "(syncoid passes it to a shell unquoted)"
            )
        return value

    @field_validator("ssh_options")
    @classmethod
    def _check_ssh_options(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for option in value:
            name, sep, setting = option.partition("=")
            if not sep or not _SSH_OPTION_NAME.match(name) or not _SHELL_WORD.match(setting):
                raise ValueError(
                    f"ssh option {option!r}: write Name=value, without spaces, quotes or "
                    "shell characters (syncoid passes it to a shell unquoted)"
                )
        return value


class DatabaseSettings(Section):
    """How preseed and the dump command reach PostgreSQL (libpq conventions)."""

    host: str = Field("/run/postgresql", description="Host name, address or socket directory.")
    port: int = Field(5432, ge=1, le=65535)
    user: str = Field(
        "postgres",
        description="Role used for the restore; it must be able to drop and create schemas "
        "and extensions (a superuser, or the database owner with cube and earthdistance "
        "already available).",
    )
    password: Annotated[Secret | None, Credential("database_password")] = Field(
        None, description="Password (password_file or credential 'database_password')."
    )
    name: str = Field("teslamate", description="The database to restore.")
    owner: str | None = Field(
        None,
        description="Role that owns the database and the restored objects (TeslaMate's "
        "user); default: the connecting role.",
    )
    maintenance_database: str = Field(
        "postgres", description="Database to connect to when the target database is missing."
    )


class TargetSettings(Section):
    """One thing preseed restores before its service starts."""

    kind: Literal["dataset", "directory", "database"] = Field(
        description="dataset: a ZFS dataset (all methods); directory: a plain directory "
        "(restic only); database: a PostgreSQL database restored from a pg_dump file."
    )
    dataset: str | None = Field(
        None, description="ZFS dataset (kind 'dataset'), e.g. 'rpool/services/teslamate'."
    )
    path: Path | None = Field(
        None,
        description="Directory (kind 'directory'); for a dataset its mountpoint, read from "
        "ZFS when unset.",
    )
    replica: str | None = Field(
        None,
        description="Where syncoid pulls from, e.g. 'syncoid@nas:tank/replicas/teslamate' "
        "(kind 'dataset'); the ssh port, key and options are in [zfs].",
    )
    restic_tag: str | None = Field(
        None, description="Tag of the restic snapshots holding this target; default: its name."
    )
    restic_path: Path | None = Field(
        None,
        description="Path of this target inside the restic snapshots; default: path (for a "
        "database: dump_directory).",
    )
    dump_directory: Path | None = Field(
        None,
        description="Where the backup's pg_dump files live (kind 'database'); 'local' "
        "restores the newest *.dump file found here.",
    )
    database: DatabaseSettings | None = Field(None, description="Connection (kind 'database').")
    methods: tuple[Method, ...] | None = Field(
        None,
        description="Methods tried in order; default: preseed.methods, for a database "
        "['local', 'restic'].",
    )
    on_failure: OnFailure | None = Field(None, description="Default: preseed.on_failure.")

    @field_validator("dataset")
    @classmethod
    def _check_dataset(cls, value: str | None) -> str | None:
        if value is not None and not _DATASET.match(value):
            raise ValueError("not a ZFS dataset name of the form pool/name")
        return value

    @field_validator("replica")
    @classmethod
    def _check_replica(cls, value: str | None) -> str | None:
        if value is None:
            return None
        destination, dataset = split_replica(value)
        if destination is not None and not _SSH_DESTINATION.match(destination):
            raise ValueError(
                f"{destination!r} is not a NAS as ssh takes it: [user@]host, with letters, "
                "digits, '.', '-' and '_'"
            )
        if destination is not None and re.match(r"^\d+:", dataset):
            raise ValueError("the replica names no port; set the NAS's ssh port in zfs.ssh_port")
        if not _DATASET.match(dataset):
            raise ValueError(
                "not a replica of the form 'pool/name' (on this host) or "
                "'[user@]host:pool/name' (on the NAS)"
            )
        return value

    @field_validator("methods")
    @classmethod
    def _check_methods(cls, value: tuple[Method, ...] | None) -> tuple[Method, ...] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("a method is listed twice")
        return value

    @model_validator(mode="after")
    def _check_kind(self) -> TargetSettings:
        if self.kind == "dataset" and self.dataset is None:
            raise ValueError("a target of kind 'dataset' needs 'dataset'")
        if self.kind == "directory" and self.path is None:
            raise ValueError("a target of kind 'directory' needs 'path'")
        if self.kind == "database":
            if self.database is None:
                raise ValueError("a target of kind 'database' needs a [database] table")
            if self.dump_directory is None:
                raise ValueError("a target of kind 'database' needs 'dump_directory'")
        if self.path is not None and not self.path.is_absolute():
            raise ValueError("path must be absolute")
        return self


class PreseedSettings(Section):
    methods: tuple[Method, ...] = Field(
        DEFAULT_METHODS,
        description="Order in which restore methods are tried for files and datasets. "
        "'restic' is left out by default: restoring files breaks the ZFS replication lineage "
        "and would hide an unreachable NAS (see docs/backup.md).",
    )
    on_failure: OnFailure = Field(
        "refuse",
        description="When every method failed: 'refuse' (exit 1, the service does not start) "
        "or 'start-empty' (mark the target complete and let the service start empty).",
    )
    staging_directory: Path | None = Field(
        None,
        description="Scratch space for restoring dumps from restic; default: "
        "<state_directory>/staging.",
    )


class BackupSettings(ComponentSettings):
    model_config = SettingsConfigDict(env_prefix="GRIDMATE_BACKUP_")

    restic: ResticSettings = ResticSettings()
    zfs: ZfsSettings = ZfsSettings()
    preseed: PreseedSettings = PreseedSettings()
    targets: dict[str, TargetSettings] = Field(
        default_factory=dict, description="What preseed restores, by name ([targets.NAME])."
    )
    textfile_directory: Path | None = Field(
        None,
        description="Directory of node_exporter's textfile collector, where preseed and the "
        "backup hooks write their metrics (*.prom); default: <state_directory>/metrics.",
    )
    notify: NotifySettings = NotifySettings()
    ha_device: NotificationDeviceSettings = Field(
        NotificationDeviceSettings(),
        description='Backup and restore as a Home Assistant device ("gridmate backup") '
        "whose Notifications event entity fires with every notice (a failed restore or "
        "backup). 'record' announces the device after each backup run, so the entity "
        "exists before the first failure.",
    )

    @field_validator("targets")
    @classmethod
    def _check_names(cls, value: dict[str, TargetSettings]) -> dict[str, TargetSettings]:
        for name in value:
            if not _TARGET_NAME.match(name):
                raise ValueError(
                    f"target name {name!r}: use lower-case letters, digits, '-' and '_'"
                )
        return value

    @property
    def metrics_textfile_directory(self) -> Path:
        return self.textfile_directory or self.state_directory / "metrics"

    @property
    def staging_directory(self) -> Path:
        return self.preseed.staging_directory or self.state_directory / "staging"

    def methods_for(self, target: TargetSettings) -> tuple[Method, ...]:
        if target.methods is not None:
            return target.methods
        if target.kind == "database":
            return DATABASE_DEFAULT_METHODS
        return self.preseed.methods

    def on_failure_for(self, target: TargetSettings) -> OnFailure:
        return target.on_failure or self.preseed.on_failure

    def restic_tag_for(self, name: str) -> str:
        return self.targets[name].restic_tag or name
