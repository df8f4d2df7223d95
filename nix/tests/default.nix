# NixOS VM tests. flake.nix exposes every attribute of this set as
# `checks.x86_64-linux.<name>` (x86_64 only: aarch64 VM tests are impractical
# in CI and hang under emulation). Run one with
#
#   nix build .#checks.x86_64-linux.<name> -L
#
# which needs a builder with the `kvm` and `nixos-test` system features.
#
# Empty for now: each component adds its test when it lands, as
#
#   vehicles = pkgs.testers.runNixOSTest {
#     imports = [ ./vehicles.nix ];
#     defaults.imports = [ self.nixosModules.default ];
#   };
#
# The modules default `services.gridmate.package` to the flake's package, so
# tests need neither the overlay nor writable `nixpkgs.*` options.
{ pkgs, self }:
{ }
