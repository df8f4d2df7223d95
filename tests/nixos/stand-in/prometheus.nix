# Mirrors (nixpkgs, nixos-25.11 era) what gridmate sets of
#   nixos/modules/services/monitoring/prometheus/default.nix
#     enable, port, scrapeConfigs (job_name, static_configs), ruleFiles
# The upstream tier loads the real file instead when the nixpkgs tree has it.
{ lib, ... }:
let
  inherit (lib) types mkOption;

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
        type = types.nullOr (types.listOf staticConfig);
        default = null;
      };
    };
  };
in
{
  options.services.prometheus = {
    enable = mkOption {
      type = types.bool;
      default = false;
    };
    port = mkOption {
      type = types.port;
      default = 9090;
    };
    scrapeConfigs = mkOption {
      type = types.listOf scrapeConfig;
      default = [ ];
    };
    ruleFiles = mkOption {
      type = types.listOf types.path;
      default = [ ];
    };
    rules = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
  };
}
