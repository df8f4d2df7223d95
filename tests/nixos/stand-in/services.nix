# Mirrors (nixpkgs, nixos-25.11 era):
#   nixos/modules/services/monitoring/prometheus/default.nix
#                                                  scrapeConfigs (job_name,
#                                                  static_configs)
#   services.<name>.enable of the local services gridmate orders itself after.
# The upstream tier loads this file too, for what it does not load from
# upstream yet.
{ lib, ... }:
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
}
