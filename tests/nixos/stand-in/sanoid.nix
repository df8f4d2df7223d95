# Mirrors (nixpkgs, nixos-25.11 era) nixos/modules/services/backup/sanoid.nix:
# services.sanoid's options with upstream's types (templates and datasets as
# submodules with a freeform dataset-settings type, the typed snapshot
# counts, use_template checked against the configured templates), and the
# sanoid.service it makes (a DynamicUser `sanoid` granted snapshot, mount and
# destroy on each dataset for the run). tests/test_nix.py compares the
# options with the real file when a nixpkgs tree holds it.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) types mkOption;
  cfg = config.services.sanoid;

  datasetSettingsType =
    types.attrsOf (
      types.nullOr (
        types.oneOf [
          types.str
          types.int
          types.bool
          (types.listOf types.str)
        ]
      )
    )
    // {
      description = "dataset/template options";
    };

  count = mkOption {
    type = types.nullOr types.ints.unsigned;
    default = null;
  };
  flag = mkOption {
    type = types.nullOr types.bool;
    default = null;
  };
  commonOptions = {
    hourly = count;
    daily = count;
    monthly = count;
    yearly = count;
    autoprune = flag;
    autosnap = flag;
  };

  datasetOptions = rec {
    use_template = mkOption {
      type = types.listOf (
        types.str
        // {
          check = (types.enum (lib.attrNames cfg.templates)).check;
          description = "configured template name";
        }
      );
      default = [ ];
    };
    useTemplate = use_template;
    recursive = mkOption {
      type = types.oneOf [
        types.bool
        (types.enum [ "zfs" ])
      ];
      default = false;
    };
    process_children_only = mkOption {
      type = types.bool;
      default = false;
    };
    processChildrenOnly = process_children_only;
  };

  allow =
    action: dataset:
    lib.escapeShellArgs [
      "-+/run/booted-system/sw/bin/zfs"
      action
      "sanoid"
      "snapshot,mount,destroy"
      dataset
    ];
in
{
  options.services.sanoid = {
    enable = mkOption {
      type = types.bool;
      default = false;
    };
    package = mkOption {
      type = types.package;
      default = pkgs.sanoid;
    };
    interval = mkOption {
      type = types.str;
      default = "hourly";
    };
    datasets = mkOption {
      type = types.attrsOf (
        types.submodule (
          { options, ... }:
          {
            freeformType = datasetSettingsType;
            options = commonOptions // datasetOptions;
            config.use_template = lib.modules.mkAliasAndWrapDefsWithPriority lib.id (
              options.useTemplate or { }
            );
            config.process_children_only = lib.modules.mkAliasAndWrapDefsWithPriority lib.id (
              options.processChildrenOnly or { }
            );
          }
        )
      );
      default = { };
    };
    templates = mkOption {
      type = types.attrsOf (
        types.submodule {
          freeformType = datasetSettingsType;
          options = commonOptions;
        }
      );
      default = { };
    };
    settings = mkOption { type = types.attrsOf datasetSettingsType; };
    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
  };

  config = lib.mkIf cfg.enable {
    services.sanoid.settings = lib.mkMerge [
      (lib.mapAttrs' (d: v: lib.nameValuePair ("template_" + d) v) cfg.templates)
      (lib.mapAttrs (_: v: v) cfg.datasets)
    ];
    systemd.services.sanoid = {
      description = "Sanoid snapshot service";
      serviceConfig = {
        ExecStartPre = map (allow "allow") (lib.attrNames cfg.datasets);
        ExecStopPost = map (allow "unallow") (lib.attrNames cfg.datasets);
        ExecStart = lib.escapeShellArgs (
          [
            "${cfg.package}/bin/sanoid"
            "--cron"
            "--configdir"
            (pkgs.writeTextDir "sanoid.conf" (
              lib.generators.toINI {
                mkKeyValue =
                  k: v:
                  if v == null || k == "processChildrenOnly" || k == "useTemplate" then
                    ""
                  else
                    lib.generators.mkKeyValueDefault {
                      mkValueString =
                        v: if lib.isList v then lib.concatStringsSep "," v else lib.generators.mkValueStringDefault { } v;
                    } "=" k v;
              } cfg.settings
            ))
          ]
          ++ cfg.extraArgs
        );
        User = "sanoid";
        Group = "sanoid";
        DynamicUser = true;
        RuntimeDirectory = "sanoid";
        CacheDirectory = "sanoid";
      };
      environment.TZ = "UTC";
      after = [ "zfs.target" ];
      startAt = cfg.interval;
    };
  };
}
