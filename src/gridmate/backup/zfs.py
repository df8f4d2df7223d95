"""ZFS through its command-line tools: what preseed needs and nothing more.

Only long-standing features are used (``zfs list -H``, user properties,
rename, rollback, ``zfs get -p creation``), so the same code runs against
OpenZFS on NixOS and against Debian's zfs-fuse in the tests.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from gridmate.backup.settings import ZfsSettings, split_replica
from gridmate.backup.ssh import check_ssh_key, ssh_argv, syncoid_ssh_arguments
from gridmate.backup.tools import ToolError, run
from gridmate.runtime.backoff import Backoff

MARKER_PROPERTY = "gridmate:preseed"
"""User property holding the preseed marker. User properties live on the
dataset itself: destroy the dataset and the marker goes with it."""


BUSY_PATIENCE_SECONDS = 30.0
REMOTE_LIST_TIMEOUT_SECONDS = 120.0
"""ssh's own connect timeout, the login and one 'zfs list' on the NAS."""


@dataclass(frozen=True)
class Snapshot:
    name: str
    """Full name, dataset@snapshot."""
    created: int
    """Creation time, seconds since the epoch."""


class Zfs:
    def __init__(self, settings: ZfsSettings) -> None:
        self.settings = settings

    def _zfs(self, *args: str, what: str | None = None) -> str:
        return run([self.settings.zfs_binary, *args], what=what, timeout=600).stdout

    def _zfs_when_idle(self, *args: str, what: str) -> None:
        """A change refused while the dataset is briefly busy (an unmount still settling,
        a send finishing) is tried again for a little while."""
        backoff = Backoff(initial=0.2, cap=2.0)
        deadline = time.monotonic() + BUSY_PATIENCE_SECONDS
        while True:
            try:
                self._zfs(*args, what=what)
                return
            except ToolError as error:
                if "busy" not in str(error) or time.monotonic() > deadline:
                    raise
            time.sleep(backoff.next_delay())

    def pool_health(self, dataset: str) -> str | None:
        """ONLINE, DEGRADED, FAULTED, ... or None when the pool is not imported."""
        pool = dataset.split("/", 1)[0]
        try:
            out = run(
                [self.settings.zpool_binary, "list", "-H", "-o", "health", pool], timeout=60
            ).stdout
        except ToolError as error:
            if "not installed" in str(error):
                raise
            return None
        return out.strip() or None

    def check_pool(self, dataset: str) -> None:
        """Raise ToolError unless the dataset's pool is usable."""
        pool = dataset.split("/", 1)[0]
        health = self.pool_health(dataset)
        if health is None:
            raise ToolError(f"ZFS pool {pool} is not imported (is the disk attached?)")
        if health not in ("ONLINE", "DEGRADED"):
            raise ToolError(f"ZFS pool {pool} is not online (state {health})")

    def exists(self, dataset: str) -> bool:
        try:
            self._zfs("list", "-H", "-o", "name", dataset)
        except ToolError as error:
            if "does not exist" in str(error):
                return False
            raise
        return True

    def get(self, dataset: str, prop: str) -> str | None:
        """A property's value, None when a user property is unset."""
        value = self._zfs("get", "-H", "-o", "value", prop, dataset).strip()
        return None if value == "-" and ":" in prop else value

    def set(self, dataset: str, prop: str, value: str) -> None:
        self._zfs("set", f"{prop}={value}", dataset, what=f"set {prop} on {dataset}")

    def clear(self, dataset: str, prop: str) -> None:
        self._zfs("inherit", prop, dataset, what=f"clear {prop} on {dataset}")

    def mountpoint(self, dataset: str) -> Path | None:
        value = self.get(dataset, "mountpoint")
        return Path(value) if value and value.startswith("/") else None

    def is_mounted(self, dataset: str) -> bool:
        return self.get(dataset, "mounted") == "yes"

    def mount(self, dataset: str) -> None:
        if not self.is_mounted(dataset):
            self._zfs("mount", dataset, what=f"mount {dataset}")

    def snapshots(self, dataset: str) -> list[Snapshot]:
        """The dataset's own snapshots, oldest first."""
        out = self._zfs(
            "list", "-H", "-t", "snapshot", "-o", "name", "-s", "creation", "-d", "1", dataset
        )
        names = [line.strip() for line in out.splitlines() if line.strip()]
        result = []
        for name in names:
            created = self._zfs("get", "-H", "-p", "-o", "value", "creation", name).strip()
            result.append(Snapshot(name, int(created) if created.isdigit() else 0))
        return sorted(result, key=lambda s: (s.created, names.index(s.name)))

    def create(self, dataset: str, mountpoint: Path | None) -> None:
        args = ["create", "-p"]
        if mountpoint is not None:
            args += ["-o", f"mountpoint={mountpoint}"]
        self._zfs(*args, dataset, what=f"create {dataset}")

    def unmount(self, dataset: str) -> None:
        if self.is_mounted(dataset):
            self._zfs_when_idle("unmount", dataset, what=f"unmount {dataset}")

    def rename(self, old: str, new: str) -> None:
        # Renaming a mounted dataset is refused by some ZFS implementations ("dataset is
        # busy"); preseed runs before the service, so nothing needs it mounted meanwhile.
        self.unmount(old)
        self._zfs_when_idle("rename", old, new, what=f"rename {old} to {new}")

    def destroy(self, dataset: str) -> None:
        self.unmount(dataset)
        self._zfs_when_idle("destroy", "-r", "-f", dataset, what=f"destroy {dataset}")

    def rollback(self, snapshot: str) -> None:
        self._zfs("rollback", "-r", snapshot, what=f"roll back to {snapshot}")

    def remote_snapshots(self, destination: str, dataset: str) -> list[str]:
        """Names of ``dataset``'s own snapshots on ``destination`` (``[user@]host``),
        oldest first, read over ssh with syncoid's port, key and options."""
        check_ssh_key(self.settings)
        command = ["zfs", "list", "-H", "-t", "snapshot", "-o", "name", "-s", "creation"]
        out = run(
            ssh_argv(self.settings, destination, [*command, "-d", "1", dataset]),
            timeout=REMOTE_LIST_TIMEOUT_SECONDS,
            what=f"listing the snapshots of {destination}:{dataset} over ssh",
        ).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def syncoid(self, source: str, target: str) -> None:
        """Pull ``source`` (the NAS replica) into the new dataset ``target``."""
        argv = [
            self.settings.syncoid_binary,
            "--no-sync-snap",
            "--no-privilege-elevation",
            "--no-resume",
        ]
        if split_replica(source)[0] is not None:
            check_ssh_key(self.settings)
            argv += syncoid_ssh_arguments(self.settings)
        if self.settings.send_options:
            argv.append(f"--sendoptions={self.settings.send_options}")
        if self.settings.recv_options:
            argv.append(f"--recvoptions={self.settings.recv_options}")
        argv += [source, target]
        # syncoid finds zfs on PATH; make the configured one win.
        env = None
        if os.sep in self.settings.zfs_binary:
            directory = os.path.dirname(self.settings.zfs_binary)
            env = {"PATH": f"{directory}{os.pathsep}{os.environ.get('PATH', '')}"}
        run(argv, env=env, timeout=self.settings.timeout_seconds, what=f"syncoid from {source}")
