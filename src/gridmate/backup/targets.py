"""What preseed can restore: a ZFS dataset, a plain directory, a PostgreSQL database.

Each kind knows how to look at itself (:meth:`Target.inspect`), how to keep
the completion marker that lives with its data, and how each restore method
applies to it. The decisions are made in :mod:`gridmate.backup.preseed`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from gridmate.backup.postgres import Postgres, newest_dump
from gridmate.backup.restic import Restic, ResticSnapshot
from gridmate.backup.settings import BackupSettings, Method, TargetSettings, split_replica
from gridmate.backup.ssh import classify_ssh_failure
from gridmate.backup.tools import ToolError, last_lines
from gridmate.backup.zfs import MARKER_PROPERTY, Zfs
from gridmate.runtime.files import write_atomically

MARKER_FILE = ".gridmate-preseed"
"""The marker inside a plain directory: it goes when the directory's data goes."""
STAGING_NAME = ".gridmate-preseed-incoming"
"""Where restic restores inside the target, so moving into place is a rename."""
BOOKKEEPING = {MARKER_FILE, STAGING_NAME, "lost+found"}

RESTORING = "restoring"
COMPLETE = "complete"


def replica_failure(replica: str, error: ToolError) -> ToolError:
    """A failure to read or pull ``replica``, told in terms of the replica."""
    text = error.output or str(error)
    remote = split_replica(replica)[0] is not None
    reason = classify_ssh_failure(text) if remote else None
    if reason is not None:
        return ToolError(f"cannot reach the replica {replica} over ssh: {reason}", error.output)
    if "does not exist" in text or "no datasets" in text.lower():
        if str(error).startswith(f"the replica {replica} "):
            return error
        return ToolError(
            f"the replica {replica} does not exist or cannot be read ({last_lines(text, 1)})",
            error.output,
        )
    if replica not in str(error):
        return ToolError(f"cannot reach the replica {replica}: {error}", error.output)
    return error


def marker_text(state: str, detail: str = "") -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{state} {stamp}" + (f" {detail}" if detail else "")


def marker_state(text: str | None) -> str | None:
    """'restoring', 'complete', or None (no marker); anything else counts as restoring."""
    if not text:
        return None
    word = text.split(" ", 1)[0]
    return word if word in (RESTORING, COMPLETE) else RESTORING


@dataclass(frozen=True)
class Inspection:
    exists: bool
    holds_data: bool
    marker: str | None
    """The marker's full text, or None."""
    leftovers: tuple[str, ...] = ()
    """Traces of an interrupted restore (incoming datasets, staging directories)."""

    @property
    def state(self) -> str | None:
        return marker_state(self.marker)

    def describe(self) -> str:
        parts = ["exists" if self.exists else "does not exist"]
        if self.exists:
            parts.append("holds data" if self.holds_data else "holds no data")
        parts.append(f"marker '{self.marker}'" if self.marker else "no preseed marker")
        if self.leftovers:
            parts.append("leftovers of an earlier restore: " + ", ".join(self.leftovers))
        return ", ".join(parts)


def _has_entries(path: Path) -> bool:
    try:
        return any(entry.name not in BOOKKEEPING for entry in os.scandir(path))
    except FileNotFoundError:
        return False


def _wipe(path: Path, keep: frozenset[str] = frozenset()) -> None:
    """Remove everything inside ``path`` except the names in ``keep``."""
    if not path.is_dir():
        return
    for entry in os.scandir(path):
        if entry.name in keep:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


def make_private_directory(path: Path) -> None:
    """Create ``path`` and its missing parents as 0700: state directories hold tokens, and
    systemd insists on /var/lib/private being 0700 for DynamicUser= services."""
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)


def _move_into(source: Path, destination: Path) -> None:
    """Move the entries of ``source`` into ``destination`` (same filesystem: renames)."""
    destination.mkdir(parents=True, exist_ok=True)
    shutil.copystat(source, destination)
    with contextlib.suppress(PermissionError):
        stat = source.stat()
        os.chown(destination, stat.st_uid, stat.st_gid)
    for entry in os.scandir(source):
        os.replace(entry.path, destination / entry.name)


class Target:
    """Base: a named thing preseed restores."""

    def __init__(self, name: str, settings: BackupSettings) -> None:
        self.name = name
        self.settings = settings
        self.config: TargetSettings = settings.targets[name]
        self.restic = Restic(
            settings.restic, default_cache=settings.state_directory / "restic-cache"
        )

    @property
    def tag(self) -> str:
        return self.settings.restic_tag_for(self.name)

    def describe(self) -> str:
        raise NotImplementedError

    def inspect(self) -> Inspection:
        raise NotImplementedError

    def not_applicable(self, method: Method) -> str | None:
        """Why ``method`` cannot apply to this kind of target, or None."""
        return None

    def probe(self, method: Method) -> str:
        """What ``method`` would restore (read-only); ToolError when it cannot."""
        raise NotImplementedError

    def discard_partial(self) -> None:
        """Throw away what an interrupted or failed restore left behind."""
        raise NotImplementedError

    def restore(self, method: Method) -> str:
        """Restore with ``method``; returns where the data came from."""
        raise NotImplementedError

    def mark(self, text: str) -> None:
        raise NotImplementedError

    def clear_marker(self) -> None:
        """Forget an unfinished restore once its leftovers are discarded."""
        raise NotImplementedError

    def begin(self, method: Method) -> None:
        """Record that a restore with ``method`` is under way, before touching data."""
        self.mark(marker_text(RESTORING, method))

    def start_empty(self) -> None:
        """Make the target exist, empty, for a first start."""
        raise NotImplementedError

    # restic, shared by files and datasets

    def _restic_snapshot(self, path: Path) -> ResticSnapshot:
        self.restic.check_access()
        snapshot = self.restic.newest(self.tag, path)
        if snapshot is None:
            raise ToolError(
                f"the restic repository at {self.restic.where} has no snapshot tagged "
                f"'{self.tag}' that holds {path}"
            )
        return snapshot

    @staticmethod
    def _snapshot_words(snapshot: ResticSnapshot) -> str:
        return f"restic snapshot {snapshot.id[:8]} of {snapshot.time:%Y-%m-%d %H:%M} UTC"


class FilesTarget(Target):
    """A directory's files; the base of datasets too (their files are what restic holds)."""

    @property
    def path(self) -> Path:
        assert self.config.path is not None
        return self.config.path

    @property
    def restic_path(self) -> Path:
        return self.config.restic_path or self.path

    def describe(self) -> str:
        return f"directory {self.path}"

    def not_applicable(self, method: Method) -> str | None:
        if method in ("syncoid", "local"):
            return f"'{method}' needs a ZFS dataset; {self.path} is a plain directory"
        return None

    def _read_marker_file(self) -> str | None:
        try:
            return (self.path / MARKER_FILE).read_text(encoding="utf-8").strip() or RESTORING
        except FileNotFoundError:
            return None

    def inspect(self) -> Inspection:
        leftovers = (str(self.path / STAGING_NAME),) if (self.path / STAGING_NAME).exists() else ()
        return Inspection(
            exists=self.path.is_dir(),
            holds_data=_has_entries(self.path),
            marker=self._read_marker_file(),
            leftovers=leftovers,
        )

    def mark(self, text: str) -> None:
        make_private_directory(self.path)
        write_atomically(self.path / MARKER_FILE, text + "\n", mode=0o644)

    def clear_marker(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.path / MARKER_FILE).unlink()

    def probe(self, method: Method) -> str:
        snapshot = self._restic_snapshot(self.restic_path)
        return f"would restore {self.path} from {self._snapshot_words(snapshot)}"

    def discard_partial(self) -> None:
        _wipe(self.path, keep=frozenset({MARKER_FILE}))

    def restore(self, method: Method) -> str:
        snapshot = self._restic_snapshot(self.restic_path)
        make_private_directory(self.path)
        staging = self.path / STAGING_NAME
        if staging.exists():
            shutil.rmtree(staging)
        landed = self.restic.restore(snapshot, self.restic_path, staging)
        if not landed.is_dir():
            raise ToolError(
                f"{self._snapshot_words(snapshot)} restored nothing at {self.restic_path}"
            )
        _move_into(landed, self.path)
        shutil.rmtree(staging)
        return self._snapshot_words(snapshot)

    def start_empty(self) -> None:
        make_private_directory(self.path)


class DatasetTarget(FilesTarget):
    """A ZFS dataset: syncoid from the NAS replica, local Sanoid rollback, or restic."""

    def __init__(self, name: str, settings: BackupSettings) -> None:
        super().__init__(name, settings)
        self.zfs = Zfs(settings.zfs)
        assert self.config.dataset is not None
        self.dataset: str = self.config.dataset
        self.incoming = f"{self.dataset}-preseed-incoming"
        self.previous = f"{self.dataset}-preseed-previous"

    @property
    def path(self) -> Path:
        if self.config.path is not None:
            return self.config.path
        mountpoint = self.zfs.mountpoint(self.dataset) if self.zfs.exists(self.dataset) else None
        if mountpoint is None:
            raise ToolError(
                f"dataset {self.dataset} has no mountpoint; set 'path' for target {self.name}"
            )
        return mountpoint

    def describe(self) -> str:
        return f"ZFS dataset {self.dataset}"

    def not_applicable(self, method: Method) -> str | None:
        if method == "syncoid" and not self.config.replica:
            return "no replica is configured for syncoid"
        return None

    def inspect(self) -> Inspection:
        self.zfs.check_pool(self.dataset)
        leftovers = tuple(d for d in (self.incoming, self.previous) if self.zfs.exists(d))
        if not self.zfs.exists(self.dataset):
            return Inspection(exists=False, holds_data=False, marker=None, leftovers=leftovers)
        marker = self.zfs.get(self.dataset, MARKER_PROPERTY)
        path = self.path
        self.zfs.mount(self.dataset)
        if (path / STAGING_NAME).exists():
            leftovers += (str(path / STAGING_NAME),)
        return Inspection(
            exists=True, holds_data=_has_entries(path), marker=marker, leftovers=leftovers
        )

    def mark(self, text: str) -> None:
        self.zfs.set(self.dataset, MARKER_PROPERTY, text)

    def clear_marker(self) -> None:
        if self.zfs.exists(self.dataset):
            self.zfs.clear(self.dataset, MARKER_PROPERTY)

    def begin(self, method: Method) -> None:
        if method == "restic":
            self._ensure_exists()
        # Without a dataset there is nothing to mark yet: syncoid marks what it receives.
        if self.zfs.exists(self.dataset):
            self.mark(marker_text(RESTORING, method))

    def _newest_local(self) -> str:
        if not self.zfs.exists(self.dataset):
            raise ToolError(f"dataset {self.dataset} does not exist, so it has no snapshots")
        prefix = f"{self.dataset}@{self.settings.zfs.snapshot_prefix}"
        sanoid = [s for s in self.zfs.snapshots(self.dataset) if s.name.startswith(prefix)]
        if not sanoid:
            raise ToolError(f"dataset {self.dataset} has no Sanoid snapshot ({prefix}*)")
        return sanoid[-1].name

    def probe(self, method: Method) -> str:
        if method == "local":
            return f"would roll {self.dataset} back to {self._newest_local()}"
        if method == "syncoid":
            replica = self.config.replica or ""
            names = self._replica_snapshots(replica)
            newest = names[-1].split("@", 1)[1]
            return (
                f"would replicate {replica} ({len(names)} snapshots, newest {newest}) into "
                f"{self.dataset} with syncoid"
            )
        return super().probe(method)

    def _replica_snapshots(self, replica: str) -> list[str]:
        """The replica's snapshots, oldest first, looked at without changing anything
        (over ssh for a replica on the NAS); ToolError when it cannot serve a restore."""
        destination, dataset = split_replica(replica)
        try:
            if destination is not None:
                names = self.zfs.remote_snapshots(destination, dataset)
            elif self.zfs.exists(dataset):
                names = [snapshot.name for snapshot in self.zfs.snapshots(dataset)]
            else:
                raise ToolError(f"the replica {replica} does not exist")
        except ToolError as error:
            raise replica_failure(replica, error) from None
        if not names:
            raise ToolError(f"the replica {replica} has no snapshot to restore from")
        return names

    def discard_partial(self) -> None:
        if self.zfs.exists(self.incoming):
            self.zfs.destroy(self.incoming)
        if self.zfs.exists(self.previous):
            # An interrupted swap: put the original (empty) dataset back.
            if self.zfs.exists(self.dataset):
                self.zfs.destroy(self.dataset)
            self.zfs.rename(self.previous, self.dataset)
        if (
            self.zfs.exists(self.dataset)
            and marker_state(self.zfs.get(self.dataset, MARKER_PROPERTY)) == RESTORING
        ):
            self.zfs.mount(self.dataset)
            _wipe(self.path)

    def _ensure_exists(self) -> None:
        if not self.zfs.exists(self.dataset):
            self.zfs.create(self.dataset, self.config.path)
        self.zfs.mount(self.dataset)

    def restore(self, method: Method) -> str:
        if method == "local":
            snapshot = self._newest_local()
            self.zfs.rollback(snapshot)
            return f"local snapshot {snapshot}"
        if method == "syncoid":
            return self._restore_from_replica()
        self._ensure_exists()
        return super().restore(method)

    def _restore_from_replica(self) -> str:
        replica = self.config.replica
        assert replica is not None
        if self.zfs.exists(self.incoming):
            self.zfs.destroy(self.incoming)
        try:
            self.zfs.syncoid(replica, self.incoming)
            if not self.zfs.exists(self.incoming):
                raise ToolError(f"syncoid from {replica} ended without creating a dataset")
            if not self.zfs.snapshots(self.incoming):
                raise ToolError(f"syncoid from {replica} received no snapshot")
        except ToolError as error:
            with contextlib.suppress(ToolError):
                if self.zfs.exists(self.incoming):
                    self.zfs.destroy(self.incoming)
            raise replica_failure(replica, error) from None
        # The received dataset carries the marker through the swap below, so a crash
        # between the renames is recognised as an unfinished restore.
        self.zfs.set(self.incoming, MARKER_PROPERTY, marker_text(RESTORING, "syncoid"))
        mountpoint: Path | None = self.config.path
        if self.zfs.exists(self.dataset):
            mountpoint = mountpoint or self.zfs.mountpoint(self.dataset)
            self.zfs.rename(self.dataset, self.previous)
        self.zfs.rename(self.incoming, self.dataset)
        if mountpoint is not None:
            self.zfs.set(self.dataset, "mountpoint", str(mountpoint))
        self.zfs.mount(self.dataset)
        if self.zfs.exists(self.previous):
            self.zfs.destroy(self.previous)
        newest = self.zfs.snapshots(self.dataset)[-1].name.split("@", 1)[1]
        return f"the replica {replica} (snapshot {newest})"

    def start_empty(self) -> None:
        self._ensure_exists()


class DatabaseTarget(Target):
    """TeslaMate's PostgreSQL database, restored from a pg_dump file."""

    def __init__(self, name: str, settings: BackupSettings) -> None:
        super().__init__(name, settings)
        assert self.config.database is not None and self.config.dump_directory is not None
        self.db = Postgres(self.config.database)
        self.dump_directory: Path = self.config.dump_directory

    @property
    def restic_path(self) -> Path:
        return self.config.restic_path or self.dump_directory

    def describe(self) -> str:
        return self.db.where

    def not_applicable(self, method: Method) -> str | None:
        if method == "syncoid":
            return (
                "a database is restored from a dump; replicate the dump directory or the "
                "PostgreSQL data directory as a dataset target instead"
            )
        return None

    def inspect(self) -> Inspection:
        if not self.db.exists():
            return Inspection(exists=False, holds_data=False, marker=None)
        return Inspection(exists=True, holds_data=self.db.holds_data(), marker=self.db.marker())

    def mark(self, text: str) -> None:
        if not self.db.exists():
            self.db.create()
        self.db.set_marker(text)

    def clear_marker(self) -> None:
        if self.db.exists():
            self.db.clear_marker()

    def _local_dump(self) -> Path:
        dump = newest_dump(self.dump_directory)
        if dump is None:
            raise ToolError(f"no dump file (*.dump) in {self.dump_directory}")
        return dump

    def probe(self, method: Method) -> str:
        if method == "local":
            dump = self._local_dump()
            stamp = datetime.fromtimestamp(dump.stat().st_mtime, UTC)
            return f"would load {dump} (written {stamp:%Y-%m-%d %H:%M} UTC)"
        snapshot = self._restic_snapshot(self.restic_path)
        return f"would load the newest dump in {self._snapshot_words(snapshot)}"

    def discard_partial(self) -> None:
        # Loading starts by dropping the schemas, which discards any partial load.
        shutil.rmtree(self.settings.staging_directory / self.name, ignore_errors=True)

    def restore(self, method: Method) -> str:
        if method == "local":
            dump = self._local_dump()
            self._load(dump)
            return f"the dump {dump}"
        snapshot = self._restic_snapshot(self.restic_path)
        staging = self.settings.staging_directory / self.name
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True, mode=0o700)
        try:
            landed = self.restic.restore(snapshot, self.restic_path, staging)
            restored = newest_dump(landed)
            if restored is None:
                raise ToolError(
                    f"{self._snapshot_words(snapshot)} holds no dump file under {self.restic_path}"
                )
            self._load(restored)
            return f"the dump {restored.name} in {self._snapshot_words(snapshot)}"
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _load(self, dump: Path) -> None:
        self.db.reset_schemas()
        self.db.load(dump)

    def start_empty(self) -> None:
        if not self.db.exists():
            self.db.create()


def target_for(name: str, settings: BackupSettings) -> Target:
    kind = settings.targets[name].kind
    if kind == "dataset":
        return DatasetTarget(name, settings)
    if kind == "directory":
        return FilesTarget(name, settings)
    return DatabaseTarget(name, settings)
