# Shared pieces for every gridmate NixOS module.
#
#   gridmateLib = import ./lib.nix { inherit lib; };
#
# Every component (vehicles, energy, report, ...) runs as its own systemd unit
# `gridmate-<component>.service` built by `mkService`, which combines:
#   - the common unit shape (Type=notify + watchdog, DynamicUser, state and
#     runtime directories, restart policy),
#   - the sandbox from `hardening`,
#   - secrets passed with LoadCredential= (`loadCredentials`); gridmate reads
#     them from $CREDENTIALS_DIRECTORY/<name>, so secret files can stay
#     root-only (for example sops-nix secrets with the default 0400 root mode),
#   - settings rendered to TOML (`settingsFormat`), which end up in the world-
#     readable Nix store and so must never contain secrets.
{ lib }:
let
  # Quote one ExecStart= argument for systemd (not for a shell): systemd
  # accepts C-style double-quoted strings, and `%` / `$` are specifier and
  # variable expansion characters that must be doubled to stay literal.
  escapeExecArg =
    arg:
    let
      s =
        if builtins.isPath arg then
          "${arg}"
        else if builtins.isString arg then
          arg
        else if builtins.isInt arg || builtins.isFloat arg then
          toString arg
        else
          throw "gridmate: ExecStart arguments must be strings, paths or numbers, got ${builtins.typeOf arg}";
    in
    if builtins.match "[A-Za-z0-9_./:=@+,-]+" s != null then
      s
    else
      lib.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON s);

  # Credential names become file names under $CREDENTIALS_DIRECTORY.
  validCredentialName = name: builtins.match "[A-Za-z0-9_.-]+" name != null;

  gridmateLib = {
    inherit escapeExecArg;

    /**
      The settings format of every gridmate component: TOML, read by
      `gridmate <component> run --config FILE`.

      Type: settingsFormat :: pkgs -> { type; generate; }

      Use `(settingsFormat pkgs).type` as the type of a `settings` option.
    */
    settingsFormat = pkgs: pkgs.formats.toml { };

    /**
      Write a component's settings to the Nix store as TOML.

      Type: mkSettingsFile :: pkgs -> string -> attrset -> path

      The file is world-readable: secrets go through `credentials`
      (LoadCredential=), never through settings.
    */
    mkSettingsFile =
      pkgs: component: settings:
      (gridmateLib.settingsFormat pkgs).generate "gridmate-${component}.toml" settings;

    /**
      Build the LoadCredential= list from an attrset mapping a credential name
      (the file name gridmate looks up in $CREDENTIALS_DIRECTORY) to an
      absolute path, or to null when that secret is not configured.

      Type: loadCredentials :: attrsOf (nullOr (path | string)) -> [ string ]

      Null entries are dropped; the list is sorted by credential name, so the
      unit does not change when attributes are reordered. Paths are converted
      with toString, so a path literal is NOT copied into the Nix store.

      Example:
        loadCredentials { mqtt_password = "/run/secrets/mqtt"; smtp_password = null; }
        => [ "mqtt_password:/run/secrets/mqtt" ]
    */
    loadCredentials =
      credentials:
      let
        present = lib.filterAttrs (_: value: value != null) credentials;
        check =
          name: value:
          let
            file = toString value;
          in
          if !validCredentialName name then
            throw "gridmate: credential name '${name}' may only contain letters, digits, '_', '.' and '-'"
          else if !lib.hasPrefix "/" file then
            throw "gridmate: credential '${name}' must be an absolute path, got '${file}'"
          else
            "${name}:${file}";
      in
      map (name: check name present.${name}) (lib.sort lib.lessThan (builtins.attrNames present));

    /**
      The sandbox every gridmate unit runs in (the hardening list of nixpkgs'
      mosquitto and evcc modules), as systemd serviceConfig attributes.

      Type: hardening :: {
        addressFamilies ? [ "AF_UNIX" "AF_INET" "AF_INET6" ],
        memoryDenyWriteExecute ? true,
        procSubset ? "all",
        privateUsers ? true,
        systemCallFilter ? [ "@system-service" "~@privileged" "~@resources" ],
        deviceAllow ? [ ],
        readWritePaths ? [ ],
        readOnlyPaths ? [ ],
      } -> attrset

      - addressFamilies: RestrictAddressFamilies=. Add "AF_NETLINK" only for a
        component that reads interfaces/routes itself; glibc's resolver does
        not need it (it falls back when netlink is refused).
      - memoryDenyWriteExecute: true works for CPython and every library in
        nix/package.nix (checked with the kernel's equivalent, PR_SET_MDWE:
        cryptography, pydantic-core, asyncpg, matplotlib/Agg, protobuf/upb
        and ctypes callbacks all work). Old-style cffi `ffi.callback()`
        (used e.g. by pyOpenSSL's verify callbacks) fails with "Cannot
        allocate write+execute memory": pass false for a component that
        depends on such a library.
      - procSubset: "all" by default, because gridmate's metrics use
        prometheus_client's ProcessCollector, which reads the boot time from
        /proc/stat; with ProcSubset=pid that file is hidden and every
        process_* metric silently disappears. ProtectProc=invisible still
        hides other processes. Pass "pid" for a component without metrics.
      - deviceAllow: DeviceAllow= entries (e.g. [ "char-ttyUSB rw" ]); this
        also turns PrivateDevices off, since PrivateDevices hides /dev nodes.
    */
    hardening =
      {
        addressFamilies ? [
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
        ],
        memoryDenyWriteExecute ? true,
        procSubset ? "all",
        privateUsers ? true,
        systemCallFilter ? [
          "@system-service"
          "~@privileged"
          "~@resources"
        ],
        deviceAllow ? [ ],
        readWritePaths ? [ ],
        readOnlyPaths ? [ ],
      }:
      {
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = deviceAllow == [ ];
        DevicePolicy = "closed";
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        ProtectProc = "invisible";
        ProcSubset = procSubset;
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = memoryDenyWriteExecute;
        NoNewPrivileges = true;
        CapabilityBoundingSet = "";
        AmbientCapabilities = "";
        SystemCallArchitectures = "native";
        SystemCallFilter = systemCallFilter;
        RestrictAddressFamilies = addressFamilies;
        UMask = "0077";
        PrivateUsers = privateUsers;
        RemoveIPC = true;
      }
      // lib.optionalAttrs (deviceAllow != [ ]) { DeviceAllow = deviceAllow; }
      // lib.optionalAttrs (readWritePaths != [ ]) { ReadWritePaths = readWritePaths; }
      // lib.optionalAttrs (readOnlyPaths != [ ]) { ReadOnlyPaths = readOnlyPaths; };

    /**
      The `package` option of a component module; it defaults to
      `services.gridmate.package` (declared in modules/common.nix), so one
      setting switches every component and a single component can still be
      pinned to another build.

      Type: mkPackageOption :: config -> string -> option
    */
    mkPackageOption =
      config: component:
      lib.mkOption {
        type = lib.types.package;
        default = config.services.gridmate.package;
        defaultText = lib.literalExpression "config.services.gridmate.package";
        description = ''
          The gridmate package whose `gridmate ${component} run` this service
          executes. Leave it unset to follow {option}`services.gridmate.package`;
          set it only to run this component from a different build.
        '';
      };

    /**
      A complete `systemd.services."gridmate-<component>"` value.

      Type: mkService :: {
        component,          # "vehicles", "energy", ...: the CLI sub-command
        package,            # the gridmate package (cfg.package)
        settingsFile,       # from mkSettingsFile
        description,
        credentials ? { },  # credential name -> nullable path, see loadCredentials
        hardening ? { },    # arguments for `hardening`
        watchdogSec ? 30,   # seconds; gridmate pings at half this interval
        extraArgs ? [ ],    # appended to `gridmate <component> run --config FILE`
        after ? [ ], wants ? [ ], requires ? [ ],
        environment ? { },
        serviceConfig ? { }, # merged last, overrides anything above
      } -> attrset

      The unit is Type=notify (gridmate sends READY=1 once connected and
      WATCHDOG=1 from its event loop), restarts on failure with a 5 s delay,
      and gives up after 5 failed starts within 5 minutes
      (`systemctl reset-failed gridmate-<component>` re-arms it). It runs as
      a transient DynamicUser with state in /var/lib/gridmate-<component>
      ($STATE_DIRECTORY) and runtime files in /run/gridmate-<component>
      ($RUNTIME_DIRECTORY).
    */
    mkService =
      {
        component,
        package,
        settingsFile,
        description,
        credentials ? { },
        hardening ? { },
        watchdogSec ? 30,
        extraArgs ? [ ],
        after ? [ ],
        wants ? [ ],
        requires ? [ ],
        environment ? { },
        serviceConfig ? { },
      }:
      let
        unitName = "gridmate-${component}";
        argv = [
          "${package}/bin/gridmate"
          component
          "run"
          "--config"
          settingsFile
        ]
        ++ extraArgs;
      in
      {
        inherit description;
        wantedBy = [ "multi-user.target" ];
        after = [ "network-online.target" ] ++ after;
        wants = [ "network-online.target" ] ++ wants;
        inherit requires;
        startLimitBurst = 5;
        startLimitIntervalSec = 300;
        environment = {
          # matplotlib wants a writable config/cache directory; $HOME does
          # not exist for a DynamicUser.
          MPLCONFIGDIR = "/var/cache/${unitName}/matplotlib";
        }
        // environment;
        serviceConfig = {
          Type = "notify";
          NotifyAccess = "main";
          WatchdogSec = toString watchdogSec;
          TimeoutStartSec = 120;
          TimeoutStopSec = 30;
          Restart = "on-failure";
          RestartSec = 5;
          # gridmate exits 2 on a configuration error: restarting cannot fix it.
          RestartPreventExitStatus = 2;
          DynamicUser = true;
          User = unitName;
          Group = unitName;
          StateDirectory = unitName;
          StateDirectoryMode = "0700";
          RuntimeDirectory = unitName;
          RuntimeDirectoryMode = "0700";
          CacheDirectory = unitName;
          CacheDirectoryMode = "0700";
          WorkingDirectory = "/var/lib/${unitName}";
          ExecStart = lib.concatMapStringsSep " " escapeExecArg argv;
          LoadCredential = gridmateLib.loadCredentials credentials;
        }
        // gridmateLib.hardening hardening
        // serviceConfig;
      };
  };
in
gridmateLib
