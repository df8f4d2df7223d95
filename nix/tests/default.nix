# NixOS VM tests. flake.nix exposes every attribute of this set as
# `checks.x86_64-linux.<name>` (x86_64 only: aarch64 VM tests are impractical
# in CI and hang under emulation), so `nix flake check` runs them. Run one with
#
#   nix build .#checks.x86_64-linux.vm-vehicles -L
#
# which needs a builder with the `kvm` and `nixos-test` system features.
#
# The modules default `services.gridmate.package` to the flake's package, so
# the tests need neither the overlay nor writable `nixpkgs.*` options.
{ pkgs, self }:
let
  vmTest =
    file:
    pkgs.testers.runNixOSTest {
      imports = [ file ];
      defaults.imports = [ self.nixosModules.default ];
    };
in
{
  # Kafka (KRaft), Mosquitto, PostgreSQL and the vehicles hub: a produced
  # telemetry record becomes Home Assistant discovery and state on MQTT.
  vm-vehicles = vmTest ./vehicles.nix;

  # gridmate's simulators as a unit, the energy manager through a peak in
  # real time, then the daily report reading the energy journal.
  vm-energy = vmTest ./energy.nix;

  # Two nodes on ZFS (host, NAS): restic, Sanoid and syncoid back up a
  # TeslaMate-shaped database and a service's state; the data is destroyed,
  # the host reboots, and each service starts after its preseed restored it.
  # Written without a KVM machine: it has never run.
  vm-backup = vmTest ./backup.nix;
  # services.gridmate.teslamate with gridmate's TeslaMate simulator as the image:
  # secrets, database, ACL'd broker, the hub showing the car. Never run yet.
  vm-teslamate = vmTest ./teslamate.nix;
}
