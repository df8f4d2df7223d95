# Mirrors (nixpkgs, nixos-25.11 era) what gridmate sets of the firewall:
#   nixos/modules/services/networking/firewall.nix      networking.firewall.enable,
#                                                       backend,
#                                                       extraCommands,
#                                                       extraStopCommands,
#                                                       extraInputRules,
#                                                       networking.nftables.enable
#   nixos/modules/services/networking/firewall-nftables.nix
#                                                       the assertion that refuses
#                                                       extraCommands with nftables
{ config, lib, ... }:
let
  inherit (lib) types mkOption;
in
{
  options = {
    networking.firewall = {
      enable = mkOption {
        type = types.bool;
        default = true;
      };
      backend = mkOption {
        type = types.enum [
          "iptables"
          "nftables"
          "firewalld"
        ];
        default =
          if config.services.firewalld.enable then
            "firewalld"
          else if config.networking.nftables.enable then
            "nftables"
          else
            "iptables";
      };
      extraCommands = mkOption {
        type = types.lines;
        default = "";
      };
      extraStopCommands = mkOption {
        type = types.lines;
        default = "";
      };
      extraInputRules = mkOption {
        type = types.lines;
        default = "";
      };
    };
    networking.nftables.enable = mkOption {
      type = types.bool;
      default = false;
    };
    services.firewalld.enable = mkOption {
      type = types.bool;
      default = false;
    };
  };

  config.assertions = [
    {
      # firewall-nftables.nix
      assertion =
        !(config.networking.firewall.enable && config.networking.firewall.backend == "nftables")
        || config.networking.firewall.extraCommands == "";
      message = "extraCommands is incompatible with the nftables based firewall: ${config.networking.firewall.extraCommands}";
    }
  ];
}
