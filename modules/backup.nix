# services.gridmate.backup: backups of TeslaMate's database and gridmate's
# state with restic, ZFS snapshots with Sanoid and replication to a NAS with
# syncoid, freshness metrics and alert rules, and a restore before first
# start (`gridmate preseed`) for each protected service. docs/backup.md
# describes the commands the units run; this module wires them:
#
#   restic-backups-gridmate-teslamate   pg_dump (prepare hook) -> restic, tags
#                                       teslamate + telemetry
#   restic-backups-gridmate-state       /var/lib/private/gridmate-*, tag gridmate
#   restic-backups-gridmate-maintenance forget --prune and check, weekly
#   sanoid.service, syncoid-<dataset>   snapshots and replication of the
#                                       dataset targets
#   gridmate-preseed-<target>           Before= and RequiredBy= the services
#                                       the target protects
{
  config,
  options,
  lib,
  pkgs,
  ...
}:
let
  gridmateLib = import ./lib.nix { inherit lib; };
  inherit (lib) types mkOption;

  # Where and as whom the backup commands reach PostgreSQL (a target's
  # database, TeslaMate's dump): host or socket directory, port, role.
  postgresConnection = userDescription: {
    host = mkOption {
      type = types.str;
      default = "/run/postgresql";
      description = "PostgreSQL's host, address or socket directory.";
    };
    port = mkOption {
      type = types.port;
      default = 5432;
      description = "PostgreSQL's port.";
    };
    user = mkOption {
      type = types.str;
      default = "postgres";
      description = userDescription;
    };
  };
  cfg = config.services.gridmate.backup;
  component = "backup";
  prefix = "services.gridmate.backup";
  format = gridmateLib.settingsFormat pkgs;
  stateDirectory = "/var/lib/gridmate-backup";

  # Every secret of the backup settings model: the `*File` option, the systemd
  # credential gridmate looks for, and the settings key it fills.
  # tests/test_nix.py checks this list against the Python settings model.
  secrets = [
    {
      option = "resticPasswordFile";
      credential = "restic_password";
      key = [
        "restic"
        "password"
      ];
      what = "the password of the restic repository";
    }
    {
      option = "resticEnvironmentFile";
      credential = "restic_environment";
      key = [
        "restic"
        "environment"
      ];
      what = "KEY=VALUE lines for restic's environment, such as cloud storage keys";
    }
    gridmateLib.sharedSecrets.smtpPassword
    gridmateLib.sharedSecrets.notifyMqttPassword
    gridmateLib.sharedSecrets.appriseUrls
    gridmateLib.sharedSecrets.haDeviceMqttPassword
  ];

  # The gridmate components enabled on this host (each module is optional).
  components = builtins.filter (c: config.services.gridmate.${c}.enable or false) [
    "vehicles"
    "energy"
    "report"
  ];

  gridmate = "${cfg.package}/bin/gridmate";
  # A gridmate command line for systemd's Exec*= lines, and for a shell (restic's hooks).
  command = args: lib.concatMapStringsSep " " gridmateLib.escapeExecArg ([ gridmate ] ++ args);
  shellCommand = args: lib.escapeShellArgs ([ gridmate ] ++ args);

  # The units of TeslaMate on this host: the container of
  # virtualisation.oci-containers (`podman-teslamate.service`, or the
  # container's serviceName), or TeslaMate's own native module.
  containers = config.virtualisation.oci-containers.containers or { };
  containerBackend = config.virtualisation.oci-containers.backend or "podman";
  teslamateUnits =
    lib.optional (containers ? teslamate) "${
      containers.teslamate.serviceName or "${containerBackend}-teslamate"
    }.service"
    ++ lib.optional (config.services.teslamate.enable or false) "teslamate.service";

  resticOn = cfg.restic.enable;
  nodeExporterOn = config.services.prometheus.exporters.node.enable or false;
  # Secret paths as strings: a path literal must not be copied into the store.
  resticPasswordFile = toString cfg.resticPasswordFile;
  resticRepositoryFile =
    if cfg.restic.repositoryFile == null then null else toString cfg.restic.repositoryFile;
  resticEnvironmentFile =
    if cfg.resticEnvironmentFile == null then null else toString cfg.resticEnvironmentFile;
  # syncoid.nix comes in two forms: nixos-25.11's, with a static `user` and
  # the key read by that user from `sshKey`'s path, and a newer one with
  # DynamicUser= that passes `sshKey` with LoadCredential= itself.
  syncoidStaticUser = options.services.syncoid ? user;
  replicationOn = cfg.replication.enable;

  # The NAS's port and ssh options as syncoid takes them; preseed gets the same
  # in its settings (zfs.ssh_port, zfs.ssh_options). A timer's run has nobody to
  # answer a password or host key question: BatchMode fails it at once instead, as
  # preseed does (first, so it holds: ssh takes the first value of an option).
  syncoidSshArgs = [
    "--sshoption=BatchMode=yes"
  ]
  ++ lib.optional (cfg.replication.sshPort != null) "--sshport=${toString cfg.replication.sshPort}"
  ++ map (option: "--sshoption=${option}") cfg.replication.sshOptions;
  # syncoid pastes them into shell command lines unquoted (gridmate checks the same).
  badSshOptions = builtins.filter (
    option: builtins.match "[A-Za-z][A-Za-z0-9]*=[A-Za-z0-9_./%+,:@=~-]+" option == null
  ) cfg.replication.sshOptions;

  # The NAS copy of a local dataset: <host>:<targetParent>/<last component>.
  replicaOf =
    dataset:
    if !replicationOn || cfg.replication.host == null || cfg.replication.targetParent == null then
      null
    else
      "${cfg.replication.host}:${cfg.replication.targetParent}/${baseNameOf dataset}";

  targets = cfg.preseed.targets;
  datasetTargets = lib.filterAttrs (_: t: t.kind == "dataset" && t.dataset != null) targets;
  snapshotDatasets = lib.unique (
    lib.mapAttrsToList (_: t: t.dataset) datasetTargets ++ cfg.sanoid.extraDatasets
  );
  replicatedDatasets = lib.unique (
    lib.mapAttrsToList (_: t: t.dataset) datasetTargets ++ cfg.replication.extraDatasets
  );

  # The methods of a target that can work here: a method that does not apply
  # to the target's kind, or whose source is not configured, cannot.
  methodsOf = t: if t.methods != null then t.methods else defaultMethods t;
  defaultMethods = t: if t.kind == "database" then [ "local" "restic" ] else cfg.preseed.methods;
  usable =
    t: method:
    {
      syncoid = t.kind == "dataset" && t.replica != null;
      local = t.kind == "dataset" || t.kind == "database";
      restic = resticOn;
    }
    .${method};
  unusableReason =
    t: method:
    {
      syncoid =
        if t.kind != "dataset" then
          "syncoid restores datasets only"
        else
          "it has no replica (set its `replica`, or ${prefix}.replication.host and targetParent)";
      local = "local restores datasets and databases only";
      restic = "${prefix}.restic.enable is off, so there is no repository to restore from";
    }
    .${method};

  renderTarget =
    _name: t:
    {
      inherit (t) kind;
      dataset = t.dataset;
      path = t.path;
      replica = t.replica;
      restic_tag = t.resticTag;
      dump_directory = t.dumpDirectory;
      methods = t.methods;
      on_failure = t.onFailure;
    }
    // lib.optionalAttrs (t.kind == "database") {
      database = {
        inherit (t.database)
          host
          port
          user
          name
          owner
          ;
      };
    };

  derivedSettings = {
    state_directory = stateDirectory;
    textfile_directory = cfg.textfileDirectory;
    restic = lib.optionalAttrs resticOn {
      repository = cfg.restic.repository;
      repository_file = resticRepositoryFile;
    };
    zfs = {
      ssh_key =
        if cfg.replication.sshKeyFile == null then null else toString cfg.replication.sshKeyFile;
      ssh_port = cfg.replication.sshPort;
      ssh_options = if cfg.replication.sshOptions == [ ] then null else cfg.replication.sshOptions;
      recv_options = cfg.replication.recvOptions;
      send_options = lib.optionalString cfg.replication.raw "w";
    };
    preseed = {
      methods = cfg.preseed.methods;
      on_failure = cfg.preseed.onFailure;
    };
    targets = lib.mapAttrs renderTarget targets;
  };

  settings = gridmateLib.dropNulls (lib.recursiveUpdate derivedSettings cfg.settings);
  haDeviceOn = (settings.ha_device or { }).enable or false;
  settingsFile = gridmateLib.mkSettingsFile pkgs component settings;
  configArgs = [
    "--config"
    settingsFile
  ];
  checks = gridmateLib.secretChecks component cfg secrets;
  credentials = gridmateLib.secretCredentials cfg secrets;
  # What the notices of the backup hooks need: the mail server's and the
  # brokers' passwords, and the Apprise URLs.
  notifyCredentials = {
    inherit (credentials)
      smtp_password
      notify_mqtt_password
      mqtt_password
      apprise_urls
      ;
  };

  # The programs preseed calls: zfs, syncoid, ssh; psql, pg_dump, pg_restore; restic.
  zfsPackage = config.boot.zfs.package or pkgs.zfs;
  postgresqlPackage =
    if config.services.postgresql.enable or false then
      config.services.postgresql.package
    else
      pkgs.postgresql;
  # Only what a target's kind needs: a host without ZFS gets no zfs tools.
  toolPath =
    t:
    lib.optionals (t.kind == "dataset") [
      zfsPackage
      config.services.syncoid.package
      pkgs.openssh
    ]
    ++ lib.optional (t.kind == "database") postgresqlPackage
    ++ lib.optional resticOn cfg.restic.package;

  teslamate = cfg.teslamate;
  teslamateDatabaseLocal =
    teslamate.enable
    && (config.services.postgresql.enable or false)
    && lib.hasPrefix "/" teslamate.database.host;

  # restic jobs: the common repository settings, per job its paths and tags.
  resticJob =
    {
      paths,
      tags,
      job,
      prepare ? null,
    }:
    {
      inherit paths;
      inherit (cfg.restic) repository initialize package;
      repositoryFile = resticRepositoryFile;
      passwordFile = resticPasswordFile;
      environmentFile = resticEnvironmentFile;
      extraBackupArgs = map (tag: "--tag ${tag}") tags;
      timerConfig = cfg.restic.timerConfig;
      # Forget, prune and check run in the maintenance job, alone.
      pruneOpts = [ ];
      runCheck = false;
      backupPrepareCommand = prepare;
      # systemd runs this (ExecStopPost=) after failed runs too; the command
      # reads $SERVICE_RESULT and records a success time only on success.
      backupCleanupCommand = shellCommand (
        [
          "backup"
          "record"
          "--job"
          job
        ]
        ++ configArgs
      );
    };
  backupJobs =
    lib.optionalAttrs teslamate.enable {
      gridmate-teslamate = resticJob {
        paths = [ teslamate.dumpDirectory ];
        tags = [
          "teslamate"
          "telemetry"
        ];
        job = "teslamate";
        prepare = shellCommand (
          [
            "backup"
            "dump"
            "--target"
            "teslamate"
          ]
          ++ configArgs
        );
      };
    }
    // lib.optionalAttrs (cfg.restic.stateDirectories != [ ]) {
      gridmate-state = resticJob {
        paths = cfg.restic.stateDirectories;
        tags = [ "gridmate" ];
        job = "gridmate";
      };
    };

  targetModule =
    { name, config, ... }:
    {
      options = {
        kind = mkOption {
          type = types.enum [
            "dataset"
            "directory"
            "database"
          ];
          description = ''
            `dataset`: a ZFS dataset (methods syncoid, local, restic); `directory`: a plain
            directory (restic only); `database`: a PostgreSQL database loaded from a pg_dump
            file (local: the newest dump in `dumpDirectory`; restic).
          '';
        };
        dataset = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "rpool/services/postgresql";
          description = "The ZFS dataset (kind `dataset`). Sanoid snapshots it and syncoid replicates it.";
        };
        path = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "/var/lib/private/gridmate-energy";
          description = "The directory (kind `directory`); for a dataset its mountpoint, read from ZFS when unset.";
        };
        replica = mkOption {
          type = types.nullOr types.str;
          default =
            if config.kind == "dataset" && config.dataset != null then replicaOf config.dataset else null;
          defaultText = lib.literalMD "the dataset's copy on the NAS, from {option}`${prefix}.replication` when it is enabled";
          description = "Where the `syncoid` method pulls from (`user@host:pool/dataset`).";
        };
        dumpDirectory = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "Where the database's pg_dump files are (kind `database`).";
        };
        database = postgresConnection "The role that restores (it drops and creates schemas and extensions)." // {
          name = mkOption {
            type = types.str;
            default = name;
            defaultText = lib.literalMD "the target's name";
            description = "The database.";
          };
          owner = mkOption {
            type = types.nullOr types.str;
            default = null;
            description = "The role that owns the database and the restored objects.";
          };
        };
        resticTag = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "Tag of the restic snapshots holding this target; default: its name.";
        };
        methods = mkOption {
          type = types.nullOr (
            types.listOf (
              types.enum [
                "syncoid"
                "local"
                "restic"
              ]
            )
          );
          default = null;
          description = ''
            Methods tried in order; default {option}`${prefix}.preseed.methods`, and for a
            database `[ "local" "restic" ]`.
          '';
        };
        onFailure = mkOption {
          type = types.nullOr (
            types.enum [
              "refuse"
              "start-empty"
            ]
          );
          default = null;
          description = "What to do when every method failed; default {option}`${prefix}.preseed.onFailure`.";
        };
        units = mkOption {
          type = types.listOf types.str;
          default = [ ];
          example = [ "postgresql.service" ];
          description = ''
            The services this target protects. Its unit gridmate-preseed-${name}.service runs
            before each of them (`Before=`) and each requires it (`RequiredBy=`): a service
            does not start until its data is restored, or refused to start when it could not
            be (with {option}`${prefix}.preseed.onFailure` = `"refuse"`).
          '';
        };
      };
    };
in
{
  imports = [ ./common.nix ];

  options.services.gridmate.backup = {
    enable = lib.mkEnableOption ''
      gridmate's backups and restore before first start: restic backups of TeslaMate's
      database and gridmate's state, ZFS snapshots (Sanoid) and replication to a NAS
      (syncoid), freshness metrics and alert rules, and a gridmate-preseed-<target>.service
      before each protected service (docs/backup.md)'';

    package = gridmateLib.mkPackageOption config component;

    settings = mkOption {
      default = { };
      type = types.submodule { freeformType = format.type; };
      example = lib.literalExpression ''
        {
          notify = {
            smtp_host = "smtp.example.com";
            sender = "gridmate@example.com";
            recipients.critical = [ "you@example.com" ];
          };
        }
      '';
      description = ''
        Further settings of the backup component (docs/configuration.md, table `backup`),
        written with what the options of this module produce into one TOML file that every
        unit below passes with `--config`; a value here wins. Never put secrets here: the
        Nix store is world-readable. Use the `*File` options.
      '';
    };

    finalSettings = mkOption {
      type = types.attrsOf types.anything;
      internal = true;
      readOnly = true;
      default = settings;
      description = ''
        The settings every unit passes with `--config`: what the options of this module
        produce, with {option}`${prefix}.settings` on top.
      '';
    };

    textfileDirectory = mkOption {
      type = types.str;
      default = "/var/lib/prometheus-node-exporter-text";
      description = ''
        Directory of node_exporter's textfile collector, where preseed and the backup and
        replication hooks write their metrics (`*.prom`). The module creates it
        world-readable (0755) and, when {option}`services.prometheus.exporters.node.enable`
        is set, turns on the textfile collector with this directory.
      '';
    };

    restic = {
      enable = lib.mkEnableOption ''
        restic backups: TeslaMate's database (with {option}`${prefix}.teslamate.enable`) and
        gridmate's state directories, each on {option}`${prefix}.restic.timerConfig`, and a
        maintenance job (forget --prune, check) on
        {option}`${prefix}.restic.maintenanceTimerConfig`'';

      package = mkOption {
        type = types.package;
        default = pkgs.restic;
        defaultText = lib.literalExpression "pkgs.restic";
        description = "The restic package of the backup jobs and of preseed's restic method.";
      };

      repository = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "sftp:restic@nas.lan:/srv/restic/gridmate";
        description = "The restic repository. Use `repositoryFile` when its URL carries a password.";
      };

      repositoryFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = "/run/secrets/gridmate/restic-repository";
        description = "A file holding the repository location (restic's `--repository-file`).";
      };

      initialize = mkOption {
        type = types.bool;
        default = false;
        description = "Whether the backup jobs create the repository when it does not exist yet.";
      };

      timerConfig = mkOption {
        type = types.attrsOf (
          types.oneOf [
            types.str
            types.bool
            types.int
          ]
        );
        default = {
          OnCalendar = "*-*-* 03:00:00";
          Persistent = true;
          RandomizedDelaySec = "30min";
        };
        description = ''
          When the backup jobs run (systemd.timer). gridmate's alert rules
          ({option}`services.gridmate.monitoring.alertRules`) expect a success at least
          every 26 hours.
        '';
      };

      pruneOpts = mkOption {
        type = types.listOf types.str;
        default = [
          "--keep-daily 7"
          "--keep-weekly 5"
          "--keep-monthly 12"
        ];
        description = "Options of `restic forget --prune` in the maintenance job.";
      };

      checkOpts = mkOption {
        type = types.listOf types.str;
        default = [ "--read-data-subset=5%" ];
        description = "Options of `restic check` in the maintenance job.";
      };

      maintenanceTimerConfig = mkOption {
        type = types.attrsOf (
          types.oneOf [
            types.str
            types.bool
            types.int
          ]
        );
        default = {
          OnCalendar = "Sun *-*-* 05:00:00";
          Persistent = true;
        };
        description = "When forget --prune and check run (restic-backups-gridmate-maintenance).";
      };

      stateDirectories = mkOption {
        type = types.listOf types.str;
        default = map (c: "/var/lib/private/gridmate-${c}") components;
        defaultText = lib.literalMD "`/var/lib/private/gridmate-<component>` of each gridmate component enabled here";
        description = ''
          gridmate's state directories backed up with the tag `gridmate` (rotating Tesla and
          Honeywell refresh tokens, write budgets, the energy journal, the notifier queue).
          The components run with `DynamicUser=`, so their state lives under /var/lib/private.
        '';
      };
    };

    teslamate = {
      enable = lib.mkEnableOption ''
        backups of TeslaMate's PostgreSQL database: a consistent `pg_dump --format=custom`
        written into {option}`${prefix}.teslamate.dumpDirectory` by restic's prepare hook,
        backed up with the tags teslamate and telemetry'';

      dumpDirectory = mkOption {
        type = types.str;
        default = "/var/backup/gridmate-teslamate";
        description = "The stable directory the dump is written into (root only, 0700).";
      };

      database = postgresConnection "The role that dumps and restores." // {
        name = mkOption {
          type = types.str;
          default = "teslamate";
          description = "TeslaMate's database.";
        };
        owner = mkOption {
          type = types.str;
          default = "teslamate";
          description = "TeslaMate's role, which owns the restored objects.";
        };
      };

      peerMap = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Whether to let root connect as {option}`${prefix}.teslamate.database.user` over
          PostgreSQL's socket, when PostgreSQL runs on this host. The dump and the restore
          run as root, and NixOS's default `peer` authentication would refuse root as
          `postgres`. For `postgres`, root joins the ident map `postgres` that NixOS's
          PostgreSQL module authenticates its superuser with (the line
          `postgres root postgres` in {option}`services.postgresql.identMap`); for another
          role, an ident map `gridmate-backup` and a `peer map=` line for that role in
          {option}`services.postgresql.authentication`.
        '';
      };

      units = mkOption {
        type = types.listOf types.str;
        default = teslamateUnits;
        defaultText = lib.literalMD ''
          TeslaMate's container unit (`podman-teslamate.service`) when
          `virtualisation.oci-containers.containers.teslamate` is set, and `teslamate.service`
          when `services.teslamate.enable` is
        '';
        description = "The TeslaMate units that wait for the database's preseed.";
      };
    };

    sanoid = {
      enable = mkOption {
        type = types.bool;
        default = snapshotDatasets != [ ];
        defaultText = lib.literalMD "whether there is a dataset to snapshot";
        description = "Whether Sanoid snapshots the dataset targets (and `extraDatasets`).";
      };
      extraDatasets = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "More datasets to snapshot with gridmate's Sanoid template.";
      };
      template = mkOption {
        type = types.attrsOf (
          types.oneOf [
            types.int
            types.bool
            types.str
          ]
        );
        default = {
          hourly = 48;
          daily = 30;
          monthly = 6;
          autosnap = true;
          autoprune = true;
        };
        description = "The Sanoid template `gridmate` the datasets use.";
      };
    };

    replication = {
      enable = lib.mkEnableOption ''
        replication of the dataset targets (and `extraDatasets`) to a NAS with syncoid, one
        syncoid-<dataset>.service each, recording each run for the freshness metrics'';
      host = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "syncoid@nas.lan";
        description = "The NAS, as syncoid's `user@host`.";
      };
      targetParent = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "tank/replicas/gridmate";
        description = "The dataset on the NAS under which each replica is kept (named as the local dataset's last component).";
      };
      sshKeyFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = "/run/secrets/gridmate/syncoid-ssh-key";
        description = ''
          The private key syncoid logs in to the NAS with. The syncoid units get it as the
          credential `ssh_key` (`LoadCredential=`), which systemd also mounts inside
          syncoid's RootDirectory= sandbox, so the file can stay root-only; preseed (root)
          reads it directly. Put the NAS's host key in {option}`programs.ssh.knownHosts`:
          /etc is the only place the sandbox reads it from.
        '';
      };
      sshPort = mkOption {
        type = types.nullOr types.port;
        default = null;
        example = 2222;
        description = "The NAS's ssh port when it is not 22, for replication and preseed alike.";
      };
      sshOptions = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "ServerAliveInterval=60" ];
        description = ''
          ssh options (`Name=value`, without spaces or shell characters) for reaching the
          NAS, for replication (`--sshoption`) and preseed (`zfs.ssh_options`) alike.
          A file they name must be readable inside syncoid's sandbox, where only the Nix
          store, /etc, /run and /bin/sh are visible: a known hosts file in the store
          works, though {option}`programs.ssh.knownHosts` is simpler.
        '';
      };
      raw = mkOption {
        type = types.bool;
        default = false;
        description = "Raw sends (`zfs send -w`) for encrypted datasets: the NAS keeps them encrypted.";
      };
      recvOptions = mkOption {
        type = types.str;
        default = "u";
        description = "`zfs receive` options; `u` because mounting cannot be delegated on Linux.";
      };
      interval = mkOption {
        type = types.str;
        default = "hourly";
        description = "When syncoid runs (systemd calendar).";
      };
      extraDatasets = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "More datasets to replicate.";
      };
    };

    preseed = {
      enable = lib.mkEnableOption ''
        restore before first start: a gridmate-preseed-<target>.service for each target,
        ordered before the services it protects and required by them'';
      methods = mkOption {
        type = types.listOf (
          types.enum [
            "syncoid"
            "local"
            "restic"
          ]
        );
        default = [
          "syncoid"
          "local"
        ];
        description = ''
          The automatic order of restore methods for datasets and directories. restic is
          left out: restoring files into a dataset breaks its ZFS replication lineage, and
          an automatic fallback would hide an unreachable NAS (docs/backup.md). gridmate's
          own state directories, which only restic holds, list it themselves.
        '';
      };
      onFailure = mkOption {
        type = types.enum [
          "refuse"
          "start-empty"
        ];
        default = "refuse";
        description = ''
          When every method failed: `refuse` (the preseed unit fails, so the services that
          require it do not start and nothing is written over data that should come back)
          or `start-empty` (the target is marked complete and its services start empty).
        '';
      };
      gridmateState = mkOption {
        type = types.bool;
        default = resticOn;
        defaultText = lib.literalExpression "${prefix}.restic.enable";
        description = ''
          Whether each gridmate component's state directory is a preseed target
          (`gridmate-<component>`, kind directory, method restic), protecting its
          gridmate-<component>.service.
        '';
      };
      targets = mkOption {
        type = types.attrsOf (types.submodule targetModule);
        default = { };
        example = lib.literalExpression ''
          {
            postgresql = {
              kind = "dataset";
              dataset = "rpool/services/postgresql";
              units = [ "postgresql.service" ];
            };
          }
        '';
        description = ''
          What preseed restores, by name. The module adds `teslamate` (the database, with
          {option}`${prefix}.teslamate.enable`) and `gridmate-<component>` (with
          {option}`${prefix}.preseed.gridmateState`).
        '';
      };
    };
  }
  // lib.mapAttrs (
    _: option:
    option
    // {
      # The backup component has no daemon: its commands run in the preseed
      # units and in restic's and syncoid's units.
      description =
        lib.replaceStrings
          [ "gridmate-backup.service starts" ]
          [ "a preseed unit, or a restic or syncoid unit running gridmate's hooks, starts" ]
          option.description;
    }
  ) (gridmateLib.mkSecretOptions component secrets);

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      {
        assertions =
          checks.assertions
          ++ lib.optionals resticOn [
            {
              assertion = (cfg.restic.repository == null) != (cfg.restic.repositoryFile == null);
              message = ''
                ${prefix}.restic.enable is set but ${
                  if cfg.restic.repository == null then "no repository is given" else "both repository options are set"
                }. Set exactly one of ${prefix}.restic.repository (for example
                "sftp:restic@nas.lan:/srv/restic/gridmate") or ${prefix}.restic.repositoryFile
                (a file holding it, when the URL carries a password).
              '';
            }
            {
              assertion = cfg.resticPasswordFile != null;
              message = ''
                ${prefix}.restic.enable is set but ${prefix}.resticPasswordFile is not. Set it to
                a file holding the repository password (for example
                config.sops.secrets."gridmate/restic-password".path).
              '';
            }
          ]
          ++ lib.optionals (!resticOn) [
            {
              assertion = !teslamate.enable;
              message = ''
                ${prefix}.teslamate.enable backs TeslaMate's database up with restic, but
                ${prefix}.restic.enable is off. Enable it and set its repository and passwordFile.
              '';
            }
          ]
          ++ [
            {
              assertion = badSshOptions == [ ];
              message = ''
                ${prefix}.replication.sshOptions: ${lib.concatStringsSep ", " badSshOptions}: write
                each as Name=value, without spaces, quotes or shell characters (syncoid passes
                them to a shell unquoted).
              '';
            }
          ]
          ++ lib.optionals replicationOn [
            {
              assertion = cfg.replication.host != null && cfg.replication.targetParent != null;
              message = ''
                ${prefix}.replication.enable is set but syncoid has no target: set
                ${prefix}.replication.host (the NAS as "user@host") and
                ${prefix}.replication.targetParent (the dataset there, e.g. "tank/replicas/gridmate").
              '';
            }
            {
              assertion = cfg.replication.sshKeyFile != null;
              message = ''
                ${prefix}.replication.enable is set but ${prefix}.replication.sshKeyFile is not.
                Set it to the private key syncoid logs in to the NAS with (for example
                config.sops.secrets."gridmate/syncoid-key".path).
              '';
            }
            {
              assertion = replicatedDatasets != [ ];
              message = ''
                ${prefix}.replication.enable is set but there is no dataset to replicate. Add a
                target of kind "dataset" to ${prefix}.preseed.targets, or list datasets in
                ${prefix}.replication.extraDatasets.
              '';
            }
          ]
          ++ lib.optionals cfg.preseed.enable (
            lib.concatLists (
              lib.mapAttrsToList (
                name: t:
                let
                  methods = methodsOf t;
                  ready = builtins.filter (usable t) methods;
                  where = "${prefix}.preseed.targets.${name}";
                in
                [
                  {
                    assertion = ready != [ ];
                    message =
                      if methods == [ ] then
                        "${where} has no restore method: its methods list is empty. List at least one of syncoid, local, restic."
                      else
                        ''
                          ${where} (kind ${t.kind}) has no restore method that can work here: ${
                            lib.concatMapStringsSep "; " (m: "${m}: ${unusableReason t m}") methods
                          }. Set ${where}.methods to methods that apply (a directory only has
                          restic), or configure their source.
                        '';
                  }
                  {
                    assertion =
                      {
                        dataset = t.dataset != null;
                        directory = t.path != null;
                        database = t.dumpDirectory != null;
                      }
                      .${t.kind};
                    message = "${where} is of kind ${t.kind} but its ${
                      {
                        dataset = "dataset";
                        directory = "path";
                        database = "dumpDirectory";
                      }
                      .${t.kind}
                    } is not set.";
                  }
                  {
                    assertion = t.units != [ ];
                    message = ''
                      ${where} protects no service: list the units that must wait for its
                      restore in ${where}.units (for example [ "postgresql.service" ]).
                    '';
                  }
                ]
              ) targets
            )
          );
        warnings =
          checks.warnings
          ++ lib.optional (cfg.mqttPasswordFile != null && !haDeviceOn) ''
            ${prefix}.mqttPasswordFile is set but settings.ha_device.enable is not, so the
            backup commands publish nothing to Home Assistant's broker and the password is
            not used.
          '';

        # Preseed, the dump and the hooks keep their locks, freshness record,
        # notifier queue and staging area here; metrics go to the textfile
        # directory, which node_exporter (another user) must be able to read.
        systemd.tmpfiles.rules = [
          "d ${stateDirectory} 0700 root root -"
          "d ${cfg.textfileDirectory} 0755 root root -"
        ]
        ++ lib.optional teslamate.enable "d ${teslamate.dumpDirectory} 0700 root root -";

        services.prometheus.exporters.node = lib.mkIf nodeExporterOn {
          enabledCollectors = [ "textfile" ];
          extraFlags = [ "--collector.textfile.directory=${cfg.textfileDirectory}" ];
        };
      }

      (lib.mkIf resticOn {
        services.restic.backups = backupJobs // {
          gridmate-maintenance = {
            paths = [ ];
            inherit (cfg.restic)
              repository
              package
              pruneOpts
              checkOpts
              ;
            repositoryFile = resticRepositoryFile;
            passwordFile = resticPasswordFile;
            environmentFile = resticEnvironmentFile;
            runCheck = true;
            timerConfig = cfg.restic.maintenanceTimerConfig;
          };
        };

        systemd.services =
          lib.mapAttrs' (
            name: _:
            lib.nameValuePair "restic-backups-${name}" {
              # The hooks: the server's own pg_dump for the dump, and the
              # notifier's credentials for a failed run's warning.
              path = lib.optional (name == "gridmate-teslamate") postgresqlPackage;
              serviceConfig.LoadCredential = gridmateLib.loadCredentials notifyCredentials;
              # Two jobs started together run one after the other, so a first
              # run does not initialise the repository twice.
              after = lib.optional (
                name == "gridmate-state" && teslamate.enable
              ) "restic-backups-gridmate-teslamate.service";
            }
          ) backupJobs
          // {
            restic-backups-gridmate-maintenance.after = map (name: "restic-backups-${name}.service") (
              lib.attrNames backupJobs
            );
          };
      })

      (lib.mkIf teslamateDatabaseLocal {
        # Root may connect as the dumping role over the socket. postgresql.nix
        # lets its superuser in with `local all postgres peer map=postgres`,
        # and the host adds its own entries to that map (NixOS's manual:
        # `postgres root postgres`), so root joins it rather than a line of
        # its own taking precedence (PostgreSQL takes the first matching line)
        # and hiding the host's entries. Another role gets a line and a map of
        # its own (root, and the role as itself), ahead of the module's
        # `local all all peer`.
        services.postgresql =
          let
            superuser = teslamate.database.user == "postgres";
          in
          lib.mkIf teslamate.peerMap {
            identMap =
              if superuser then
                "postgres root postgres\n"
              else
                ''
                  gridmate-backup root ${teslamate.database.user}
                  gridmate-backup ${teslamate.database.user} ${teslamate.database.user}
                '';
            authentication = lib.optionalString (!superuser) ''
              local all ${teslamate.database.user} peer map=gridmate-backup
            '';
          };
      })

      (lib.mkIf cfg.sanoid.enable {
        services.sanoid = {
          enable = true;
          templates.gridmate = cfg.sanoid.template;
          datasets = lib.genAttrs snapshotDatasets (_: {
            useTemplate = [ "gridmate" ];
          });
        };
      })

      (lib.mkIf replicationOn {
        services.syncoid = {
          enable = true;
          inherit (cfg.replication) interval;
          commands = lib.genAttrs replicatedDatasets (dataset: {
            # (without a host the assertions above say what to set)
            target = if replicaOf dataset == null then "" else replicaOf dataset;
            # Static user: the key as our own credential; %d is the unit's
            # credentials directory, which systemd also mounts inside
            # syncoid's RootDirectory= sandbox. DynamicUser form: the module
            # loads the file named by sshKey as a credential itself.
            sshKey = lib.mkIf (cfg.replication.sshKeyFile != null) (
              if syncoidStaticUser then "%d/ssh_key" else toString cfg.replication.sshKeyFile
            );
            sendOptions = lib.optionalString cfg.replication.raw "w";
            inherit (cfg.replication) recvOptions;
            extraArgs = syncoidSshArgs;
            service.serviceConfig = {
              LoadCredential = gridmateLib.loadCredentials (
                lib.optionalAttrs syncoidStaticUser { ssh_key = cfg.replication.sshKeyFile; }
                // notifyCredentials
              );
              # "+": outside the sandbox and as root, where the state and
              # textfile directories are writable; systemd passes
              # $SERVICE_RESULT, so only a successful run records a success.
              ExecStopPost = [
                "+${
                  command (
                    [
                      "backup"
                      "record"
                      "--kind"
                      "replication"
                      "--job"
                      dataset
                    ]
                    ++ configArgs
                  )
                }"
              ];
            };
          });
        };
      })

      # The dump hook reads the teslamate target's connection, so it is in the
      # settings whether or not preseed is on.
      (lib.mkIf teslamate.enable {
        services.gridmate.backup.preseed.targets.teslamate = {
          kind = "database";
          dumpDirectory = lib.mkDefault teslamate.dumpDirectory;
          resticTag = lib.mkDefault "teslamate";
          database = {
            inherit (teslamate.database)
              host
              port
              user
              name
              owner
              ;
          };
          units = lib.mkDefault teslamate.units;
        };
      })

      (lib.mkIf (cfg.preseed.enable && cfg.preseed.gridmateState) {
        services.gridmate.backup.preseed.targets = lib.listToAttrs (
          map (
            c:
            lib.nameValuePair "gridmate-${c}" {
              kind = "directory";
              path = lib.mkDefault "/var/lib/private/gridmate-${c}";
              resticTag = lib.mkDefault "gridmate";
              # Only restic holds a plain directory.
              methods = lib.mkDefault [ "restic" ];
              units = lib.mkDefault [ "gridmate-${c}.service" ];
            }
          ) components
        );
      })

      (lib.mkIf cfg.preseed.enable {
        systemd.services = lib.mapAttrs' (
          name: t:
          let
            database = t.kind == "database";
            localDatabase = database && (config.services.postgresql.enable or false);
          in
          lib.nameValuePair "gridmate-preseed-${name}" {
            description = "gridmate: restore ${name} before its services first start";
            before = t.units;
            requiredBy = t.units;
            after = [
              "zfs-import.target"
              "zfs-mount.service"
              "local-fs.target"
              "network-online.target"
            ]
            ++ lib.optionals localDatabase [
              "postgresql.service"
              "postgresql.target"
            ];
            wants = [ "network-online.target" ] ++ lib.optional localDatabase "postgresql.target";
            requires = lib.optional localDatabase "postgresql.service";
            path = toolPath t;
            # Runs once per boot; a configuration change must not restart it,
            # which would restart every service that requires it.
            restartIfChanged = false;
            serviceConfig = {
              Type = "oneshot";
              RemainAfterExit = true;
              # A restore from the NAS or restic may take long.
              TimeoutStartSec = 1800;
              # Root: ZFS rename and rollback, restoring files' owners.
              ExecStart = command (
                [
                  "preseed"
                  "--target"
                  name
                ]
                ++ configArgs
              );
              StateDirectory = "gridmate-backup";
              StateDirectoryMode = "0700";
              LoadCredential = gridmateLib.loadCredentials credentials;
              PrivateTmp = true;
              UMask = "0077";
            };
          }
        ) targets;
      })
    ]
  );
}
