# Makes the flake's own package the default of `services.gridmate.package`,
# so gridmate's NixOS modules work without adding the overlay (which would
# be impossible in runNixOSTest, whose `nixpkgs.*` options are read-only).
#
# flake.nix imports this as `import ./nix/package-default.nix self` and puts
# the result next to each module in `nixosModules`. The fixed `key` makes the
# module system load it once even when several of gridmate's nixosModules are
# imported together. On a system the flake does not build for, the option
# keeps its own default (pkgs.callPackage ./nix/package.nix { }).
self:
{ lib, pkgs, ... }:
let
  system = pkgs.stdenv.hostPlatform.system;
in
{
  key = "gridmate#nix/package-default.nix";
  _file = "gridmate/nix/package-default.nix";
  config = lib.mkIf (self.packages ? ${system}) {
    services.gridmate.package = lib.mkDefault self.packages.${system}.default;
  };
}
