# Mirrors (nixpkgs, nixos-25.11 era) what gridmate sets of
#   nixos/modules/services/monitoring/grafana.nix
#     enable, provision.enable, provision.datasources.settings
#     (apiVersion, datasources: freeform with typed name, type, uid, url),
#     provision.dashboards.settings (apiVersion, providers: freeform with
#     typed name, type, options.path), and provision.<kind>.path
#   (grafanaTypes.datasourceConfig and dashboardConfig in that file)
# The upstream tier loads the real file instead when the nixpkgs tree has it.
{ lib, pkgs, ... }:
let
  inherit (lib) types mkOption;
  freeform = (pkgs.formats.yaml { }).type;

  datasource = types.submodule {
    freeformType = freeform;
    options = {
      name = mkOption { type = types.str; };
      type = mkOption { type = types.str; };
      access = mkOption {
        type = types.enum [
          "proxy"
          "direct"
        ];
        default = "proxy";
      };
      uid = mkOption {
        type = types.nullOr types.str;
        default = null;
      };
      url = mkOption {
        type = types.str;
        default = "";
      };
      editable = mkOption {
        type = types.bool;
        default = false;
      };
      jsonData = mkOption {
        type = types.nullOr types.attrs;
        default = null;
      };
      secureJsonData = mkOption {
        type = types.nullOr types.attrs;
        default = null;
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

  # provision.<kind>: a submodule of `settings` (null, or the file's content)
  # and `path` (null, or a file of one's own).
  provisioned =
    settings:
    mkOption {
      default = { };
      type = types.submodule {
        options.settings = mkOption {
          type = types.nullOr (types.submodule { options = settings; });
          default = null;
        };
        options.path = mkOption {
          type = types.nullOr types.path;
          default = null;
        };
      };
    };

  apiVersion = mkOption {
    type = types.int;
    default = 1;
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
      datasources = provisioned {
        inherit apiVersion;
        datasources = mkOption {
          type = types.listOf datasource;
          default = [ ];
        };
      };
      dashboards = provisioned {
        inherit apiVersion;
        providers = mkOption {
          type = types.listOf provider;
          default = [ ];
        };
      };
    };
  };
}
