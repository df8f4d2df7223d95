# Mirrors (nixpkgs, nixos-25.11 era):
#   nixos/modules/misc/assertions.nix      assertions, warnings
#   nixos/modules/system/boot/systemd.nix  systemd.package, globalEnvironment,
#                                          enableStrictShellChecks, services,
#                                          timers, targets (their types:
#                                          ./systemd.nix)
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) types mkOption;
  systemd = import ./systemd.nix { inherit lib pkgs config; };
in
{
  options = {
    assertions = mkOption {
      type = types.listOf types.unspecified;
      internal = true;
      default = [ ];
    };
    warnings = mkOption {
      type = types.listOf types.str;
      internal = true;
      default = [ ];
    };
    systemd = {
      package = mkOption {
        type = types.package;
        default = pkgs.systemd;
      };
      globalEnvironment = mkOption {
        type = types.attrsOf (
          types.nullOr (
            types.oneOf [
              types.str
              types.path
              types.package
            ]
          )
        );
        default = { };
      };
      enableStrictShellChecks = mkOption {
        type = types.bool;
        default = false;
      };
      services = mkOption {
        type = systemd.types.services;
        default = { };
      };
      timers = mkOption {
        type = systemd.types.timers;
        default = { };
      };
      targets = mkOption {
        type = systemd.types.targets;
        default = { };
      };
    };
  };
}
