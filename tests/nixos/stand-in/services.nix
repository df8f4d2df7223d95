# Mirrors (nixpkgs, nixos-25.11 era):
#   nixos/modules/services/networking/firewall.nix,
#   firewall-iptables.nix, firewall-nftables.nix   networking.firewall.enable,
#                                                  extraCommands,
#                                                  extraStopCommands,
#                                                  extraInputRules,
#                                                  networking.nftables.enable,
#                                                  and the nftables assertion
#                                                  that refuses extraCommands
#   nixos/modules/services/monitoring/prometheus/default.nix
#                                                  scrapeConfigs (job_name,
#                                                  static_configs)
#   services.<name>.enable of the local services gridmate orders itself after.
# The upstream tier loads this file too, for what it does not load from
# upstream yet.
{ config, lib, ... }:
let
  inherit (lib) types mkOption;

  enableOption = mkOption {
    type = types.bool;
    default = false;
  };

  staticConfig = types.submodule {
    options = {
      targets = mkOption { type = types.listOf types.str; };
      labels = mkOption {
        type = types.attrsOf types.str;
        default = { };
      };
    };
  };

  scrapeConfig = types.submodule {
    options = {
      job_name = mkOption { type = types.str; };
      static_configs = mkOption {
        type = types.listOf staticConfig;
        default = [ ];
      };
    };
  };
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
    networking.nftables.enable = enableOption;

    services =
      lib.genAttrs [
        "apache-kafka"
        "mosquitto"
        "postgresql"
        "home-assistant"
        "postfix"
      ] (_: { enable = enableOption; })
      // {
        prometheus = {
          enable = enableOption;
          scrapeConfigs = mkOption {
            type = types.listOf scrapeConfig;
            default = [ ];
          };
        };
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
