# The example hosts of docs/nixos.md, each a NixOS module. flake.nix turns
# each into a check that evaluates it as a full nixosSystem
# (`checks.<system>.example-<name>`), and tests/test_nix.py evaluates them
# against stand-ins and real NixOS files.
{
  # every component on one host, secrets from sops-nix paths
  homelab = ./homelab.nix;
  # Fleet Telemetry and TeslaMate to Home Assistant, nothing else
  vehicles-only = ./vehicles-only.nix;
  # one host of an active/passive energy pair (the other: priority 100, peer .21)
  failover-pantry = ./failover-pantry.nix;
  # the daily report on a host without the energy component
  report-only = ./report-only.nix;
  # TeslaMate on ZFS with restic backups, Sanoid/syncoid and restore before first start
  backup-zfs = ./backup-zfs.nix;
  # TeslaMate in Podman with gridmate's vehicles hub wired to it, and monitoring
  teslamate = ./teslamate.nix;
}
