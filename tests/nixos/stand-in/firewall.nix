# Mirrors (nixpkgs, nixos-25.11 era) what gridmate sets of the firewall:
#   nixos/modules/services/networking/firewall.nix      networking.firewall.enable,
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
  };

  config.assertions = [
    {
      # firewall-nftables.nix
      assertion = !config.networking.nftables.enable || config.networking.firewall.extraCommands == "";
      message = "extraCommands is incompatible with the nftables based firewall: ${config.networking.firewall.extraCommands}";
    }
  ];
}
