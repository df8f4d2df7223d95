# Mirrors (nixpkgs, nixos-25.11 era) nixos/modules/services/backup/syncoid.nix:
# services.syncoid's options with upstream's types (the 25.11 form with a
# static `user`/`group` and a path-or-string `sshKey`), and the unit it makes
# of each command: syncoid-<escaped name>.service running
# `syncoid ... --no-privilege-elevation SOURCE TARGET` as that user inside a
# RootDirectory= sandbox where only the Nix store, /etc, /run and /bin/sh are
# visible (read-only), with `cfg.service` and the command's `service` merged
# in last. tests/test_nix.py compares the options with the real file when a
# nixpkgs tree holds it.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) types mkOption;
  cfg = config.services.syncoid;

  escapeUnitName =
    name:
    lib.concatMapStrings (s: if lib.isList s then "-" else s) (
      builtins.split "[^a-zA-Z0-9_.\\-]+" name
    );
  sshKeyType = types.nullOr (types.coercedTo types.path toString types.str);
  strings = mkOption {
    type = types.listOf types.str;
    default = [ ];
  };
  permissions =
    default:
    mkOption {
      type = types.listOf types.str;
      inherit default;
    };
in
{
  options.services.syncoid = {
    enable = mkOption {
      type = types.bool;
      default = false;
    };
    package = mkOption {
      type = types.package;
      default = pkgs.sanoid;
    };
    interval = mkOption {
      type = types.either types.str (types.listOf types.str);
      default = "hourly";
    };
    user = mkOption {
      type = types.str;
      default = "syncoid";
    };
    group = mkOption {
      type = types.str;
      default = "syncoid";
    };
    sshKey = mkOption {
      type = sshKeyType;
      default = null;
    };
    localSourceAllow = permissions [
      "bookmark"
      "hold"
      "send"
      "snapshot"
      "destroy"
      "mount"
    ];
    localTargetAllow = permissions [
      "change-key"
      "compression"
      "create"
      "mount"
      "mountpoint"
      "receive"
      "rollback"
    ];
    commonArgs = strings;
    service = mkOption {
      type = types.attrs;
      default = { };
    };
    commands = mkOption {
      default = { };
      type = types.attrsOf (
        types.submodule (
          { name, ... }:
          {
            options = {
              source = mkOption { type = types.str; };
              target = mkOption { type = types.str; };
              recursive = mkOption {
                type = types.bool;
                default = false;
              };
              sshKey = mkOption { type = sshKeyType; };
              localSourceAllow = mkOption { type = types.listOf types.str; };
              localTargetAllow = mkOption { type = types.listOf types.str; };
              sendOptions = mkOption {
                type = types.separatedString " ";
                default = "";
              };
              recvOptions = mkOption {
                type = types.separatedString " ";
                default = "";
              };
              useCommonArgs = mkOption {
                type = types.bool;
                default = true;
              };
              service = mkOption {
                type = types.attrs;
                default = { };
              };
              extraArgs = strings;
            };
            config = {
              source = lib.mkDefault name;
              sshKey = lib.mkDefault cfg.sshKey;
              localSourceAllow = lib.mkDefault cfg.localSourceAllow;
              localTargetAllow = lib.mkDefault cfg.localTargetAllow;
            };
          }
        )
      );
    };
  };

  config = lib.mkIf cfg.enable {
    systemd.services = lib.mapAttrs' (
      name: c:
      lib.nameValuePair "syncoid-${escapeUnitName name}" (
        lib.mkMerge [
          {
            description = "Syncoid ZFS synchronization from ${c.source} to ${c.target}";
            after = [ "zfs.target" ];
            startAt = cfg.interval;
            serviceConfig = {
              ExecStart = lib.escapeShellArgs (
                [ "${cfg.package}/bin/syncoid" ]
                ++ lib.optionals c.useCommonArgs cfg.commonArgs
                ++ lib.optional c.recursive "-r"
                ++ lib.optionals (c.sshKey != null) [
                  "--sshkey"
                  c.sshKey
                ]
                ++ c.extraArgs
                ++ [
                  "--sendoptions"
                  c.sendOptions
                  "--recvoptions"
                  c.recvOptions
                  "--no-privilege-elevation"
                  c.source
                  c.target
                ]
              );
              User = cfg.user;
              Group = cfg.group;
              StateDirectory = [ "syncoid" ];
              StateDirectoryMode = "700";
              PrivateTmp = true;
              ProtectSystem = "strict";
              RootDirectory = "/run/syncoid/${escapeUnitName name}";
              RootDirectoryStartOnly = true;
              BindPaths = [ "/dev/zfs" ];
              BindReadOnlyPaths = [
                builtins.storeDir
                "/etc"
                "/run"
                "/bin/sh"
              ];
              RuntimeDirectory = [ "syncoid/${escapeUnitName name}" ];
              RuntimeDirectoryMode = "700";
            };
          }
          cfg.service
          c.service
        ]
      )
    ) cfg.commands;
  };
}
