# All gridmate NixOS modules. Import this file (or the flake's
# `nixosModules.default`) and enable the components you want, e.g.
#
#   services.gridmate.vehicles.enable = true;
{
  imports = [
    ./common.nix
    ./vehicles.nix
    ./energy.nix
    ./report.nix
    ./backup.nix
    ./teslamate.nix
    ./monitoring.nix
  ];
}
