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
  # Anything string-like is an argument: strings, paths (copied into the
  # store, as for any interpolated path), and attribute sets with an
  # `outPath` or `__toString`, such as derivations (what
  # `pkgs.formats.toml { }).generate` and `pkgs.writeShellScript` return).
  escapeExecArg =
    arg:
    let
      s =
        if builtins.isPath arg then
          "${arg}"
        else if lib.isStringLike arg then
          toString arg
        else if builtins.isInt arg || builtins.isFloat arg then
          toString arg
        else
          throw "gridmate: ExecStart arguments must be strings, paths, derivations or numbers, got ${builtins.typeOf arg}";
    in
    if builtins.match "[A-Za-z0-9_./:=@+,-]+" s != null then
      s
    else
      lib.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON s);

  # The settings keys one secret file feeds: `key`, and `alsoKeys` where
  # several settings read the same credential (one broker password, say).
  secretKeys = secret: [ secret.key ] ++ (secret.alsoKeys or [ ]);

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

    # Secrets more than one component reads, described once: an element of a
    # module's `secrets` list (see mkSecretOptions).
    sharedSecrets = {
      teslamateEncryptionKey = {
        option = "teslamateEncryptionKeyFile";
        credential = "teslamate_encryption_key";
        key = [
          "tesla"
          "teslamate"
          "encryption_key"
        ];
        what = "TeslaMate's ENCRYPTION_KEY, which decrypts the Tesla tokens TeslaMate stores (with `settings.tesla.token_source = \"teslamate\"`)";
      };
      teslamateDbPassword = {
        option = "teslamateDbPasswordFile";
        credential = "teslamate_db_password";
        key = [
          "tesla"
          "teslamate"
          "db_password"
        ];
        what = "the password of TeslaMate's PostgreSQL database (`settings.tesla.teslamate.dsn` names the database and user)";
      };
      teslaRefreshToken = {
        option = "teslaRefreshTokenFile";
        credential = "tesla_refresh_token";
        key = [
          "tesla"
          "oauth"
          "refresh_token"
        ];
        what = "the initial Tesla OAuth refresh token (with `settings.tesla.token_source = \"oauth\"`; rotated tokens are then kept in the state directory)";
      };
      smtpPassword = {
        option = "smtpPasswordFile";
        credential = "smtp_password";
        key = [
          "notify"
          "password"
        ];
        what = "the SMTP password for gridmate's e-mail (user `settings.notify.username`)";
      };
      notifyMqttPassword = {
        option = "notifyMqttPasswordFile";
        credential = "notify_mqtt_password";
        key = [
          "notify"
          "mqtt"
          "password"
        ];
        what = "the password of the MQTT broker that mirrors the notification ledger (`settings.notify.mqtt`)";
      };
      appriseUrls = {
        option = "appriseUrlsFile";
        credential = "apprise_urls";
        key = [
          "notify"
          "apprise_urls"
        ];
        what = "Apprise URLs, one per line, where gridmate's notifications go beside e-mail (`settings.notify.apprise_levels` chooses the levels; the URLs hold tokens)";
      };
      # For the components that appear in Home Assistant only by their
      # notifications (report, backup); energy's mqttPasswordFile covers its own.
      haDeviceMqttPassword = {
        option = "mqttPasswordFile";
        credential = "mqtt_password";
        key = [
          "ha_device"
          "mqtt"
          "password"
        ];
        what = "the password of Home Assistant's MQTT broker (`settings.ha_device.mqtt`), where the component's Notifications event entity is published";
      };
    };

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
        PrivateMounts = true;
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
          The gridmate package whose `gridmate ${component}` command this
          component's unit runs. Leave it unset to follow {option}`services.gridmate.package`;
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
        command ? "run",    # the component's action: `gridmate <component> <command>`
        oneshot ? false,    # a run-to-completion job (a timer's service) instead of a daemon
        user ? "gridmate-<component>",  # the DynamicUser= name (units naming the
                                        # same user share one transient UID)
        runtimeDirectory ? "gridmate-<component>",  # RuntimeDirectory=, or null for none
        cacheDirectory ? "gridmate-<component>",    # CacheDirectory=, or null for none
        stateDirectories ? [ "gridmate-<component>" ],  # the first is $STATE_DIRECTORY
        credentials ? { },  # credential name -> nullable path, see loadCredentials
        hardening ? { },    # arguments for `hardening`
        watchdogSec ? 30,   # seconds; gridmate pings at half this interval
        extraArgs ? [ ],    # appended to `gridmate <component> <command> --config FILE`
        after ? [ ], wants ? [ ], requires ? [ ],
        wantedBy ? [ "multi-user.target" ] (daemons) or [ ] (oneshot),
        environment ? { },
        serviceConfig ? { }, # merged last, overrides anything above
      } -> attrset

      A daemon is Type=notify (gridmate sends READY=1 once connected and
      WATCHDOG=1 from its event loop), restarts on failure with a 5 s delay,
      and gives up after 5 failed starts within 5 minutes
      (`systemctl reset-failed gridmate-<component>` re-arms it). A oneshot
      runs to completion and is neither watched nor restarted (its timer
      runs it again). Both run as a transient DynamicUser with state in
      /var/lib/<first state directory> ($STATE_DIRECTORY) and runtime files
      in /run/<runtimeDirectory> ($RUNTIME_DIRECTORY).

      systemd removes a unit's RuntimeDirectory= when that unit stops, so
      two units must never name the same one: a helper unit that shares a
      component's user and state (such as the failover announcer) passes
      its own names, or null.
    */
    mkService =
      {
        component,
        package,
        settingsFile,
        description,
        command ? "run",
        oneshot ? false,
        user ? "gridmate-${component}",
        runtimeDirectory ? "gridmate-${component}",
        cacheDirectory ? "gridmate-${component}",
        stateDirectories ? [ "gridmate-${component}" ],
        credentials ? { },
        hardening ? { },
        watchdogSec ? 30,
        extraArgs ? [ ],
        after ? [ ],
        wants ? [ ],
        requires ? [ ],
        wantedBy ? if oneshot then [ ] else [ "multi-user.target" ],
        environment ? { },
        serviceConfig ? { },
      }:
      let
        argv = [
          "${package}/bin/gridmate"
          component
          command
          "--config"
          settingsFile
        ]
        ++ extraArgs;
        daemon = {
          Type = "notify";
          NotifyAccess = "main";
          WatchdogSec = toString watchdogSec;
          TimeoutStartSec = 120;
          TimeoutStopSec = 30;
          Restart = "on-failure";
          RestartSec = 5;
          # gridmate exits 2 on a configuration error: restarting cannot fix it.
          RestartPreventExitStatus = 2;
        };
        job = {
          Type = "oneshot";
          # Generous: a report may wait for a slow mail server.
          TimeoutStartSec = "15min";
        };
      in
      {
        inherit description wantedBy requires;
        after = [ "network-online.target" ] ++ after;
        wants = [ "network-online.target" ] ++ wants;
        startLimitBurst = 5;
        startLimitIntervalSec = 300;
        environment =
          lib.optionalAttrs (cacheDirectory != null) {
            # matplotlib wants a writable config/cache directory; $HOME does
            # not exist for a DynamicUser.
            MPLCONFIGDIR = "/var/cache/${cacheDirectory}/matplotlib";
          }
          // environment;
        serviceConfig =
          (if oneshot then job else daemon)
          // {
            DynamicUser = true;
            User = user;
            Group = user;
            StateDirectory = lib.concatStringsSep " " stateDirectories;
            StateDirectoryMode = "0700";
            WorkingDirectory = "/var/lib/${builtins.head stateDirectories}";
            ExecStart = lib.concatMapStringsSep " " escapeExecArg argv;
            LoadCredential = gridmateLib.loadCredentials credentials;
          }
          // lib.optionalAttrs (runtimeDirectory != null) {
            RuntimeDirectory = runtimeDirectory;
            RuntimeDirectoryMode = "0700";
          }
          // lib.optionalAttrs (cacheDirectory != null) {
            CacheDirectory = cacheDirectory;
            CacheDirectoryMode = "0700";
          }
          // gridmateLib.hardening hardening
          // serviceConfig;
      };

    /**
      Drop null values from nested settings, recursively: the TOML format
      has no null, and an unset typed option means "gridmate's default".

      Type: dropNulls :: attrset -> attrset
    */
    dropNulls =
      let
        clean =
          value:
          if builtins.isAttrs value && !(lib.isDerivation value) then
            lib.mapAttrs (_: clean) (lib.filterAttrs (_: v: v != null) value)
          else if builtins.isList value then
            map clean value
          else
            value;
      in
      clean;

    /**
      The `*File` options of a component's secrets.

      Type: mkSecretOptions :: string -> [ secret ] -> attrset of options

      where secret = {
        option,      # the option name, e.g. "mqttPasswordFile"
        credential,  # the systemd credential name gridmate looks for
        key,         # the settings path of the secret, e.g. [ "mqtt" "password" ]
        alsoKeys ? [ ],  # further settings paths that read the same credential
        what,        # what the file holds, for the description
      }
    */
    mkSecretOptions =
      component: secrets:
      lib.listToAttrs (
        map (
          secret:
          lib.nameValuePair secret.option (
            lib.mkOption {
              type = lib.types.nullOr lib.types.path;
              default = null;
              example = "/run/secrets/gridmate/${secret.credential}";
              description = ''
                File holding ${secret.what}.

                systemd reads it when gridmate-${component}.service starts and hands the
                service a private copy as the credential `${secret.credential}`
                (`LoadCredential=`), so the file can stay owned by root with mode 0400,
                for example a sops-nix secret with its default owner and mode. Give an
                absolute path outside the Nix store, such as
                `config.sops.secrets.<name>.path`. gridmate never copies the file: a
                path literal is used by name. But a file that is already in the store
                (a path inside a flake's source, or `"''${./secret}"`) is readable by
                every user of the machine; the module warns about it.

                ${lib.concatMapStringsSep "\n" (key: ''
                  This is the file form of the setting `${lib.concatStringsSep "." key}`; do
                  not also set `settings.${lib.concatStringsSep "." key}_file`.
                '') (secretKeys secret)}
              '';
            }
          )
        ) secrets
      );

    /**
      Assertions and warnings about a component's secrets:
        - a secret written inline in `settings` (it would end up in the
          world-readable Nix store, and gridmate refuses it anyway);
        - a secret given both as `*File` option and as `<key>_file` setting.
      Warnings:
        - a `<key>_file` setting alone (the DynamicUser must be able to read
          that file, so it cannot be root-only);
        - a `*File` inside the Nix store (a path in a flake's source, or an
          interpolated path literal), where every user can read it. A path
          literal outside the store is passed by name (see loadCredentials)
          and is fine.

      Type: secretChecks :: string -> attrset (cfg) -> [ secret ]
              -> { assertions; warnings; }
    */
    secretChecks =
      component: cfg: secrets:
      let
        prefix = "services.gridmate.${component}";
        dotted = lib.concatStringsSep ".";
        fileKey = key: lib.init key ++ [ "${lib.last key}_file" ];
        at = path: lib.attrByPath path null cfg.settings;
        # toString does not copy a path literal: only a file that already is
        # in the store (a flake's own source, an interpolated path) is there.
        inStore = value: value != null && lib.hasPrefix "${builtins.storeDir}/" (toString value);
        one = secret: {
          assertions = [
            {
              assertion = at secret.key == null;
              message = ''
                ${prefix}.settings.${dotted secret.key} holds a secret inline. Settings are
                written to the world-readable Nix store, and gridmate refuses inline secrets.
                Remove it and set ${prefix}.${secret.option} to the path of a file holding
                ${secret.what} (for example config.sops.secrets.<name>.path).
              '';
            }
            {
              assertion = !(cfg.${secret.option} != null && at (fileKey secret.key) != null);
              message = ''
                ${prefix}.${secret.option} and ${prefix}.settings.${dotted (fileKey secret.key)}
                both name the file with ${secret.what}. Keep only ${prefix}.${secret.option}
                (passed with LoadCredential=, so the file can stay root-only).
              '';
            }
          ];
          warnings =
            lib.optional (cfg.${secret.option} == null && at (fileKey secret.key) != null) ''
              ${prefix}.settings.${dotted (fileKey secret.key)} is read by the service's
              transient DynamicUser, so that file must be readable by every user. Prefer
              ${prefix}.${secret.option}, which passes it with LoadCredential= and lets the
              file stay root-only.
            ''
            ++ lib.optional (inStore cfg.${secret.option}) ''
              ${prefix}.${secret.option} (${toString cfg.${secret.option}}) is in the Nix
              store, which every user of this machine can read, so the secret is not secret.
              Keep it outside the store, for example with sops-nix
              (config.sops.secrets.<name>.path), and rotate it.
            '';
        };
        # one check per settings key a file feeds
        all = lib.concatMap (secret: map (key: one (secret // { inherit key; })) (secretKeys secret)) secrets;
      in
      {
        assertions = lib.concatMap (c: c.assertions) all;
        warnings = lib.concatMap (c: c.warnings) all;
      };

    /**
      The credentials argument of mkService for a component's secrets.

      Type: secretCredentials :: attrset (cfg) -> [ secret ] -> attrset
    */
    secretCredentials =
      cfg: secrets:
      lib.listToAttrs (map (s: lib.nameValuePair s.credential cfg.${s.option}) secrets);

    /**
      Units of local services a component talks to, for After=/Wants=, given
      which of them it may use. Only services enabled on this host count, so
      a component pointed at a broker elsewhere is not tied to anything.

      Type: localServiceUnits :: config -> [ string ] -> [ string ]

      Known names: postgresql, mosquitto, apache-kafka, home-assistant, postfix.
    */
    localServiceUnits =
      config: names:
      let
        units = {
          # postgresql.target (nixos-25.11 and later) is reached once
          # postgresql-setup.service has created the users and databases.
          postgresql = [
            "postgresql.service"
            "postgresql.target"
          ];
          mosquitto = [ "mosquitto.service" ];
          apache-kafka = [ "apache-kafka.service" ];
          home-assistant = [ "home-assistant.service" ];
          postfix = [ "postfix.service" ];
        };
        enabled = name: (config.services.${name} or { }).enable or false;
      in
      lib.concatMap (name: lib.optionals (enabled name) units.${name}) names;

    /**
      Whether a local service is enabled on this host.

      Type: hasLocal :: config -> string -> bool
    */
    hasLocal = config: name: (config.services.${name} or { }).enable or false;

    /**
      Prometheus scrape configuration for a gridmate daemon's /metrics, from
      its rendered settings (metrics.enable, listen_address, port).

      Type: scrapeConfig :: string -> attrset (settings) -> [ attrset ]
    */
    scrapeConfig =
      component: settings:
      let
        metrics = settings.metrics or { };
        address = metrics.listen_address or "127.0.0.1";
        # A wildcard listen address is scraped over loopback.
        host =
          if address == "0.0.0.0" then
            "127.0.0.1"
          else if address == "::" then
            "[::1]"
          else if lib.hasInfix ":" address then
            "[${address}]"
          else
            address;
      in
      lib.optional ((metrics.enable or true) && (metrics.port or 9108) != 0) {
        job_name = "gridmate-${component}";
        static_configs = [
          {
            targets = [ "${host}:${toString (metrics.port or 9108)}" ];
            labels.component = component;
          }
        ];
      };
  };
in
gridmateLib
