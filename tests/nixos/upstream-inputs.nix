# Options that the real NixOS modules loaded by the upstream tier (firewall,
# keepalived) read or set, declared where nixpkgs declares them but not
# loaded from there: those modules pull in far more of NixOS than an
# evaluation test needs. Types follow the declaring files:
#   boot.kernelPackages, boot.kernelModules, boot.extraModprobeConfig
#                                  nixos/modules/system/boot/kernel.nix,
#                                  nixos/modules/system/boot/modprobe.nix
#   networking.enableIPv6          nixos/modules/tasks/network-interfaces.nix
#   networking.nftables.*          nixos/modules/services/networking/nftables.nix
#                                  (ruleset: set by syncoid.nix in its
#                                  DynamicUser form)
#   system.nssModules.path         nixos/modules/config/nsswitch.nix (read by
#                                  syncoid.nix in its DynamicUser form)
#   services.firewalld.enable      nixos/modules/services/networking/firewalld/
#   environment.systemPackages     nixos/modules/config/system-path.nix
#   meta                           nixos/modules/misc/meta.nix
{ lib, ... }:
let
  inherit (lib) types mkOption;
in
{
  options = {
    boot.kernelPackages = mkOption {
      type = types.raw;
      # a 6.12 kernel with the netfilter features the firewall asks about
      default.kernel = {
        version = "6.12.0";
        config.isEnabled = _: true;
        features = { };
      };
    };
    boot.kernelModules = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    boot.extraModprobeConfig = mkOption {
      type = types.lines;
      default = "";
    };
    networking.enableIPv6 = mkOption {
      type = types.bool;
      default = true;
    };
    networking.nftables = {
      enable = mkOption {
        type = types.bool;
        default = false;
      };
      rulesetFile = mkOption {
        type = types.nullOr types.path;
        default = null;
      };
      ruleset = mkOption {
        type = types.lines;
        default = "";
      };
      tables = mkOption {
        default = { };
        type = types.attrsOf (
          types.submodule (
            { name, ... }:
            {
              options = {
                enable = mkOption {
                  type = types.bool;
                  default = true;
                };
                name = mkOption {
                  type = types.str;
                  default = name;
                };
                family = mkOption {
                  type = types.enum [
                    "ip"
                    "ip6"
                    "inet"
                    "arp"
                    "bridge"
                    "netdev"
                  ];
                };
                content = mkOption {
                  type = types.lines;
                  default = "";
                };
              };
            }
          )
        );
      };
    };
    system.nssModules.path = mkOption {
      type = types.str;
      default = "";
    };
    services.firewalld.enable = mkOption {
      type = types.bool;
      default = false;
    };
    environment.systemPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
    };
    meta = mkOption {
      type = types.attrsOf types.anything;
      default = { };
    };
  };
}
