# Mirrors (nixpkgs, nixos-25.11 era) nixos/modules/services/backup/restic.nix:
# the options of services.restic.backups.<name> gridmate sets or reads, with
# upstream's types and defaults, its two assertions, and the units it makes
# of each job (restic-backups-<name>.service and .timer): the backup,
# unlock/forget --prune and check commands in ExecStart=, the prepare hook
# in preStart (ExecStartPre=) and the cleanup hook in postStop
# (ExecStopPost=, which systemd also runs after a failed backup).
# tests/test_nix.py compares the options and the rendered units with the real
# file when a nixpkgs tree holds it.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) types mkOption;
  systemd = import ./systemd.nix { inherit lib pkgs config; };
  nullOrStr = mkOption {
    type = types.nullOr types.str;
    default = null;
  };
  strings = mkOption {
    type = types.listOf types.str;
    default = [ ];
  };
in
{
  options.services.restic.backups = mkOption {
    default = { };
    type = types.attrsOf (
      types.submodule (
        { name, config, ... }:
        {
          options = {
            passwordFile = nullOrStr;
            environmentFile = nullOrStr;
            repository = nullOrStr;
            repositoryFile = mkOption {
              type = types.nullOr types.path;
              default = null;
            };
            paths = mkOption {
              type = types.nullOr (types.listOf types.str);
              default = [ ];
            };
            command = strings;
            exclude = strings;
            timerConfig = mkOption {
              type = types.nullOr (types.attrsOf systemd.unitOption);
              default = {
                OnCalendar = "daily";
                Persistent = true;
              };
            };
            user = mkOption {
              type = types.str;
              default = "root";
            };
            extraBackupArgs = strings;
            extraOptions = strings;
            initialize = mkOption {
              type = types.bool;
              default = false;
            };
            pruneOpts = strings;
            runCheck = mkOption {
              type = types.bool;
              default = builtins.length config.checkOpts > 0;
            };
            checkOpts = strings;
            dynamicFilesFrom = nullOrStr;
            backupPrepareCommand = nullOrStr;
            backupCleanupCommand = nullOrStr;
            package = mkOption {
              type = types.package;
              default = pkgs.restic;
            };
            createWrapper = mkOption {
              type = types.bool;
              default = true;
            };
            inhibitsSleep = mkOption {
              type = types.bool;
              default = false;
            };
          };
        }
      )
    );
  };

  config = {
    assertions = lib.flatten (
      lib.mapAttrsToList (name: backup: [
        {
          assertion =
            ((backup.repository == null) != (backup.repositoryFile == null))
            || (backup.environmentFile != null);
          message = "services.restic.backups.${name}: exactly one of repository, repositoryFile or environmentFile should be set";
        }
        {
          assertion =
            !(
              ((backup.paths != null && backup.paths != [ ]) || backup.dynamicFilesFrom != null)
              && backup.command != [ ]
            );
          message = "services.restic.backups.${name}: cannot do both a command backup and a file backup at the same time.";
        }
        {
          assertion = (backup.passwordFile != null) || (backup.environmentFile != null);
          message = "services.restic.backups.${name}: passwordFile or environmentFile must be set";
        }
      ]) config.services.restic.backups
    );

    systemd.services = lib.mapAttrs' (
      name: backup:
      let
        resticCmd = "${lib.getExe backup.package}${
          lib.concatMapStrings (arg: " -o ${arg}") backup.extraOptions
        }";
        filesFrom = "/run/restic-backups-${name}/includes";
        fileBackup =
          backup.dynamicFilesFrom != null || (backup.paths != null && backup.paths != [ ]);
        commandBackup = backup.command != [ ];
        doBackup = fileBackup || commandBackup;
        prepares = backup.initialize || doBackup || backup.backupPrepareCommand != null;
      in
      lib.nameValuePair "restic-backups-${name}" (
        {
          environment = {
            RESTIC_CACHE_DIR = "/var/cache/restic-backups-${name}";
            RESTIC_PASSWORD_FILE = backup.passwordFile;
            RESTIC_REPOSITORY = backup.repository;
            RESTIC_REPOSITORY_FILE = backup.repositoryFile;
          };
          path = [ config.programs.ssh.package ];
          restartIfChanged = false;
          wants = [ "network-online.target" ];
          after = [ "network-online.target" ];
          serviceConfig = {
            Type = "oneshot";
            ExecStart =
              lib.optionals doBackup [
                "${resticCmd} backup ${
                  lib.concatStringsSep " " (
                    backup.extraBackupArgs
                    ++ lib.optionals fileBackup [ "--files-from=${filesFrom}" ]
                    ++ lib.optionals commandBackup ([ "--stdin-from-command=true --" ] ++ backup.command)
                  )
                }"
              ]
              ++ lib.optionals (backup.pruneOpts != [ ]) [
                "${resticCmd} unlock"
                "${resticCmd} forget --prune ${lib.concatStringsSep " " backup.pruneOpts}"
              ]
              ++ lib.optionals backup.runCheck [
                "${resticCmd} check ${lib.concatStringsSep " " backup.checkOpts}"
              ];
            User = backup.user;
            RuntimeDirectory = "restic-backups-${name}";
            CacheDirectory = "restic-backups-${name}";
            CacheDirectoryMode = "0700";
            PrivateTmp = true;
          }
          // lib.optionalAttrs (backup.environmentFile != null) {
            EnvironmentFile = backup.environmentFile;
          };
        }
        // lib.optionalAttrs prepares {
          preStart = ''
            ${lib.optionalString (backup.backupPrepareCommand != null) ''
              ${pkgs.writeScript "backupPrepareCommand" backup.backupPrepareCommand}
            ''}
            ${lib.optionalString backup.initialize ''
              ${resticCmd} cat config > /dev/null || ${resticCmd} init
            ''}
            ${lib.optionalString (backup.paths != null && backup.paths != [ ]) ''
              cat ${pkgs.writeText "staticPaths" (lib.concatLines backup.paths)} >> ${filesFrom}
            ''}
            ${lib.optionalString (backup.dynamicFilesFrom != null) ''
              ${pkgs.writeScript "dynamicFilesFromScript" backup.dynamicFilesFrom} >> ${filesFrom}
            ''}
          '';
        }
        // lib.optionalAttrs (doBackup || backup.backupCleanupCommand != null) {
          postStop = ''
            ${lib.optionalString (backup.backupCleanupCommand != null) ''
              ${pkgs.writeScript "backupCleanupCommand" backup.backupCleanupCommand}
            ''}
            ${lib.optionalString fileBackup ''
              rm -f ${filesFrom}
            ''}
          '';
        }
      )
    ) config.services.restic.backups;

    systemd.timers = lib.mapAttrs' (
      name: backup:
      lib.nameValuePair "restic-backups-${name}" {
        wantedBy = [ "timers.target" ];
        inherit (backup) timerConfig;
        unitConfig.X-OnlyManualStart = true;
      }
    ) (lib.filterAttrs (_: backup: backup.timerConfig != null) config.services.restic.backups);
  };
}
