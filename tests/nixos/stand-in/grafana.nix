# Mirrors (nixpkgs, nixos-25.11 era) what gridmate sets of
#   nixos/modules/services/monitoring/grafana.nix
#     enable, provision.enable, provision.datasources.settings
#     (apiVersion, datasources: freeform with typed name, type, uid, url),
#     provision.dashboards.settings (apiVersion, providers: freeform with
#     typed name, type, options.path)
# The upstream tier loads the real file instead when the nixpkgs tree has it.
{ lib, ... }:
let
  inherit (lib) types mkOption;
  freeform = types.attrsOf types.anything;

  datasource = types.submodule {
    freeformType = freeform;
    options = {
      name = mkOption { type = types.str; };
      uid = mkOption {
        type = types.nullOr types.str;
        default = null;
      };
      type = mkOption { type = types.str; };
      url = mkOption {
        type = types.str;
        default = "";
      };
    };
  };

  provider = types.submodule {
    freeformType = freeform;
    options = {
      name = mkOption {
        type = types.str;
        default = "default";
      };
      type = mkOption {
        type = types.str;
        default = "file";
      };
      options.path = mkOption { type = types.path; };
    };
  };
in
{
  options.services.grafana = {
    enable = mkOption {
      type = types.bool;
      default = false;
    };
    provision = {
      enable = mkOption {
        type = types.bool;
        default = false;
      };
      datasources.settings = mkOption {
        type = types.nullOr (
          types.submodule {
            options = {
              apiVersion = mkOption {
                type = types.int;
                default = 1;
              };
              datasources = mkOption {
                type = types.listOf datasource;
                default = [ ];
              };
            };
          }
        );
        default = null;
      };
      dashboards.settings = mkOption {
        type = types.nullOr (
          types.submodule {
            options = {
              apiVersion = mkOption {
                type = types.int;
                default = 1;
              };
              providers = mkOption {
                type = types.listOf provider;
                default = [ ];
              };
            };
          }
        );
        default = null;
      };
    };
  };
}
