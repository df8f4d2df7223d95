# Options that the real service modules the upstream tier may load
# (oci-containers, mosquitto, postgresql, grafana, prometheus, caddy) read or
# set, declared where nixpkgs declares them but not loaded from there. Types
# follow the declaring files:
#   users.users, users.groups        nixos/modules/config/users-groups.nix
#                                    (only what these modules touch: a free-
#                                    form set per user and group)
#   ids.uids, ids.gids               nixos/modules/misc/ids.nix (the ids of
#                                    these services' users)
#   networking.proxy.envVars         nixos/modules/config/networking.nix
#   virtualisation.podman.{enable,package}, virtualisation.docker.{enable,package}
#                                    nixos/modules/virtualisation/podman/,
#                                    nixos/modules/virtualisation/docker.nix
#   environment.pathsToLink          nixos/modules/config/system-path.nix
#   environment.etc                  nixos/modules/system/etc/etc.nix (free-form)
#   system.checks                    nixos/modules/system/activation/top-level.nix
#   boot.kernel.sysctl              nixos/modules/config/sysctl.nix (free-form)
#   systemd.packages                 nixos/modules/system/boot/systemd.nix
#   security.acme.certs              nixos/modules/security/acme/default.nix
#                                    (free-form; caddy asks for none here)
{ lib, pkgs, ... }:
let
  inherit (lib) types mkOption;
  freeformSet = types.attrsOf (types.submodule { freeformType = types.attrsOf types.anything; });
  ids = {
    postgres = 71;
    grafana = 196;
    caddy = 239;
    mosquitto = 246;
    prometheus = 255;
  };
in
{
  options = {
    users.users = mkOption {
      type = freeformSet;
      default = { };
    };
    users.groups = mkOption {
      type = freeformSet;
      default = { };
    };
    ids.uids = mkOption {
      type = types.attrsOf types.int;
      default = ids;
    };
    ids.gids = mkOption {
      type = types.attrsOf types.int;
      default = ids;
    };
    networking.proxy.envVars = mkOption {
      type = types.attrsOf types.str;
      default = { };
    };
    virtualisation.podman = {
      enable = mkOption {
        type = types.bool;
        default = false;
      };
      package = mkOption {
        type = types.package;
        default = pkgs.podman;
      };
    };
    virtualisation.docker = {
      enable = mkOption {
        type = types.bool;
        default = false;
      };
      package = mkOption {
        type = types.package;
        default = pkgs.docker or pkgs.podman;
      };
    };
    environment.etc = mkOption {
      type = freeformSet;
      default = { };
    };
    environment.pathsToLink = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    boot.kernel.sysctl = mkOption {
      type = types.attrsOf types.anything;
      default = { };
    };
    systemd.packages = mkOption {
      type = types.listOf types.package;
      default = [ ];
    };
    security.acme.certs = mkOption {
      type = freeformSet;
      default = { };
    };
    system.checks = mkOption {
      type = types.listOf types.package;
      default = [ ];
    };
  };
}
