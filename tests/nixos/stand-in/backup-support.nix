# Mirrors (nixpkgs, nixos-25.11 era) the other options the backup module
# (modules/backup.nix) and the restic, sanoid and syncoid modules read or set:
#   nixos/modules/system/boot/systemd/tmpfiles.nix     systemd.tmpfiles.rules
#   nixos/modules/services/monitoring/prometheus/exporters.nix and
#   exporters/node.nix                                 services.prometheus.exporters.node
#                                                      .{enable, enabledCollectors, extraFlags}
#   nixos/modules/programs/ssh.nix                     programs.ssh.package (restic's PATH)
#   nixos/modules/config/users-groups.nix              users.users, users.groups (syncoid's
#                                                      user), as free-form sets here
# The upstream tier loads this file too, for what it does not load from
# upstream.
{ lib, pkgs, ... }:
let
  inherit (lib) types mkOption;
  strings = mkOption {
    type = types.listOf types.str;
    default = [ ];
  };
  lines = mkOption {
    type = types.lines;
    default = "";
  };
in
{
  options = {
    systemd.tmpfiles.rules = strings;
    services.prometheus.exporters.node = {
      enable = mkOption {
        type = types.bool;
        default = false;
      };
      enabledCollectors = strings;
      extraFlags = strings;
    };
    programs.ssh.package = mkOption {
      type = types.package;
      default = pkgs.openssh;
    };
    users.users = mkOption {
      type = types.attrsOf (types.attrsOf types.anything);
      default = { };
    };
    users.groups = mkOption {
      type = types.attrsOf (types.attrsOf types.anything);
      default = { };
    };
  };
}
