# services.gridmate.teslamate: the TeslaMate stack on the host gridmate runs
# on. TeslaMate in Podman (virtualisation.oci-containers), its database on the
# host's PostgreSQL, its MQTT user on the host's Mosquitto (with users and ACLs
# for gridmate and Home Assistant), a read-only Grafana datasource with
# TeslaMate's dashboards, an optional Caddy virtual host, and gridmate's
# vehicles hub pointed at all of it.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  gridmateLib = import ./lib.nix { inherit lib; };
  cfg = config.services.gridmate.teslamate;
  prefix = "services.gridmate.teslamate";
  vehicles = config.services.gridmate.vehicles;

  # TeslaMate 4.3.0, the multi-arch (amd64 + arm64) index digest of the tag on
  # Docker Hub. Read from two independent public records (no registry is
  # reachable from where this module is developed):
  #   - a homelab's upgrade plan quoting Docker Hub's tag API on 2026-09-30:
  #     tags 4.3, 4.3.0 and latest all sha256:516fc9f0...445404955, "multi-arch
  #     index: amd64 + arm64";
  #   - a TeslaMate installation guide's `docker pull teslamate/teslamate:4.3.0`
  #     output (through a Docker Hub mirror), "Digest: sha256:516fc9f0...".
  # Check it yourself before relying on it (docs/teslamate-on-nixos.md):
  #   skopeo inspect --raw docker://teslamate/teslamate:4.3.0 | sha256sum
  defaultImage = "teslamate/teslamate:4.3.0@sha256:516fc9f0a14369f541b1a70ff2f65dd9b57c2e01c1f533b6d43b375445404955";

  containerName = "teslamate";
  serviceName = "podman-${containerName}";
  # oci-containers gives the podman unit RuntimeDirectory=<container name>.
  runtimeDirectory = "/run/${containerName}";
  envFile = "${runtimeDirectory}/teslamate.env";

  pgPort = config.services.postgresql.settings.port or 5432;
  databaseUrl = "postgresql://${cfg.database.user}@127.0.0.1:${toString pgPort}/${cfg.database.name}";

  pinned = builtins.match ".+:[^/@]+@sha256:[0-9a-f]{64}" cfg.image != null;

  # PostgreSQL versions TeslaMate refuses to start on (its release notes:
  # 16.7+ or 17.3+). postgresql.nix gives `package` a value only when the
  # service is enabled (the default follows system.stateVersion).
  pgVersion =
    if config.services.postgresql.enable then config.services.postgresql.package.version else null;
  pgRefused =
    pgVersion != null
    && (
      (lib.versions.major pgVersion == "16" && lib.versionOlder pgVersion "16.7")
      || (lib.versions.major pgVersion == "17" && lib.versionOlder pgVersion "17.3")
      || lib.versionOlder pgVersion "16"
    );

  mqttUsers = {
    teslamate = cfg.mqtt.users.teslamate;
    gridmate = cfg.mqtt.users.gridmate;
    homeassistant = cfg.mqtt.users.homeassistant;
  };
  gridmateBase = vehicles.settings.mqtt.base_topic or "gridmate";
  discoveryPrefix = vehicles.settings.mqtt.discovery_prefix or "homeassistant";

  # Who may do what on the broker. Mosquitto denies what no line allows, so
  # gridmate's own topics (and any command topic below them) are written by
  # gridmate alone and only read by everyone else.
  acls = {
    teslamate = [
      "readwrite teslamate/#"
    ]
    ++ lib.optional cfg.mqtt.homeAssistantDiscovery "readwrite ${discoveryPrefix}/#";
    gridmate = [
      "read teslamate/#"
      "readwrite ${gridmateBase}/#"
      "readwrite ${discoveryPrefix}/#"
    ];
    homeassistant = [
      "read teslamate/#"
      "read ${gridmateBase}/#"
      "readwrite ${discoveryPrefix}/#"
    ];
  };

  setRolePassword = ../nix/teslamate/set-role-password.sql;
  writeEnv = pkgs.writeShellScript "gridmate-teslamate-write-env" ''
    export PATH=${lib.makeBinPath [ pkgs.coreutils ]}
    ${builtins.readFile ../nix/teslamate/write-env.sh}
  '';
  removeEnv = pkgs.writeShellScript "gridmate-teslamate-remove-env" ''
    ${pkgs.coreutils}/bin/rm -f ${envFile} ${envFile}.partial
  '';

  # The statements postgresql-setup runs as the superuser once the roles and
  # the database exist: extensions TeslaMate's migrations need (its role is no
  # superuser), the Grafana role's read-only grants, and the passwords.
  databaseSetup =
    let
      # The port names the server's Unix socket too.
      psql = lib.concatStringsSep " " [
        "${config.services.postgresql.package}/bin/psql"
        "--port=${toString pgPort}"
        "--no-psqlrc"
        "--quiet"
        "-v ON_ERROR_STOP=1"
      ];
      sql = database: statements: ''
        ${psql} -d ${lib.escapeShellArg database} ${
          lib.concatMapStringsSep " " (s: "-c ${lib.escapeShellArg s}") statements
        }
      '';
      setPassword = role: credential: ''
        GRIDMATE_ROLE_PASSWORD="$(<"$CREDENTIALS_DIRECTORY/${credential}")" \
          ${psql} -d postgres -v role=${lib.escapeShellArg role} -f ${setRolePassword}
      '';
      db = cfg.database.name;
      owner = cfg.database.user;
      readOnly = cfg.grafana.databaseUser;
    in
    ''
      if [ "$(${psql} -d postgres -tAc 'SELECT pg_is_in_recovery()')" = "f" ]; then
    ''
    + sql "postgres" [ ''ALTER DATABASE "${db}" OWNER TO "${owner}"'' ]
    + sql db [
      "CREATE EXTENSION IF NOT EXISTS cube"
      "CREATE EXTENSION IF NOT EXISTS earthdistance"
    ]
    + lib.optionalString cfg.grafana.enable (
      sql db [
        ''GRANT CONNECT ON DATABASE "${db}" TO "${readOnly}"''
        ''GRANT USAGE ON SCHEMA public TO "${readOnly}"''
        ''GRANT SELECT ON ALL TABLES IN SCHEMA public TO "${readOnly}"''
        ''ALTER DEFAULT PRIVILEGES FOR ROLE "${owner}" IN SCHEMA public GRANT SELECT ON TABLES TO "${readOnly}"''
      ]
    )
    + setPassword owner "teslamate_db_password"
    + lib.optionalString cfg.grafana.enable (setPassword readOnly "teslamate_grafana_db_password")
    + ''
      fi
    '';

  datasourcePasswordPath = "/run/credentials/grafana.service/teslamate_grafana_db_password";

  forwardAuth = cfg.caddy.forwardAuth;
  caddyConfig =
    lib.optionalString (forwardAuth != null) ''
      forward_auth ${forwardAuth.upstream} {
        uri ${forwardAuth.uri}
        copy_headers ${lib.concatStringsSep " " forwardAuth.copyHeaders}
      }
    ''
    + ''
      reverse_proxy ${cfg.listenAddress}:${toString cfg.port}
    '';

  secretFiles = [
    {
      option = "encryptionKeyFile";
      value = cfg.encryptionKeyFile;
    }
    {
      option = "database.passwordFile";
      value = cfg.database.passwordFile;
    }
    {
      option = "mqtt.users.teslamate.passwordFile";
      value = cfg.mqtt.users.teslamate.passwordFile;
    }
  ];
  inStore = value: value != null && lib.hasPrefix "${builtins.storeDir}/" (toString value);

  mqttUserOption =
    name: description:
    lib.mkOption {
      default = { };
      description = "The MQTT user `${name}`: ${description}.";
      type = lib.types.submodule {
        options.passwordFile = lib.mkOption {
          type = lib.types.nullOr lib.types.path;
          default = null;
          example = "/run/secrets/mqtt/${name}";
          description = ''
            File holding the password of the MQTT user `${name}`. Mosquitto reads it with
            `LoadCredential=`, so it can stay root-only. Null leaves the user out.
          '';
        };
      };
    };
in
{
  imports = [
    ./common.nix
    ./vehicles.nix
  ];

  options.services.gridmate.teslamate = {
    enable = lib.mkEnableOption ''
      the TeslaMate stack: TeslaMate in Podman (podman-teslamate.service), its database
      and roles on this host's PostgreSQL, its MQTT users and ACLs on this host's
      Mosquitto, a Grafana datasource and dashboards, and gridmate's vehicles hub wired
      to it'';

    image = lib.mkOption {
      type = lib.types.str;
      default = defaultImage;
      example = "teslamate/teslamate:4.3.0@sha256:<index digest>";
      description = ''
        TeslaMate's container image, pinned as `repository:tag@sha256:<digest>`, where the
        digest is the multi-arch index digest of the tag (so amd64 and arm64 hosts run the
        same release). Podman pulls it once (`pull = "missing"`); a tag that moves later
        changes nothing. The default is TeslaMate 4.3.0; see docs/teslamate-on-nixos.md for
        where its digest was read and how to check it.
      '';
    };

    imageFile = lib.mkOption {
      type = lib.types.nullOr lib.types.package;
      default = null;
      example = lib.literalExpression ''
        pkgs.dockerTools.pullImage {
          imageName = "teslamate/teslamate";
          imageDigest = "sha256:<index digest>";
          hash = "sha256-...";
          finalImageTag = "4.3.0";
        }
      '';
      description = ''
        An image archive built or fetched by Nix (for example `dockerTools.pullImage` or
        `dockerTools.buildLayeredImage`), loaded before each start instead of pulling
        {option}`${prefix}.image` from a registry; {option}`${prefix}.image` must then
        name the archive's `name:tag`. Use it for hosts without registry access and in VM
        tests.
      '';
    };

    port = lib.mkOption {
      type = lib.types.port;
      default = 4000;
      description = "TeslaMate's web port (`PORT`).";
    };

    listenAddress = lib.mkOption {
      type = lib.types.str;
      default = "127.0.0.1";
      example = "0.0.0.0";
      description = ''
        Address TeslaMate's web interface listens on (`HTTP_BINDING_ADDRESS`; the container
        shares the host's network). TeslaMate has no login of its own: keep it on loopback
        and reach it through {option}`${prefix}.caddy` with forward authentication.
      '';
    };

    encryptionKeyFile = lib.mkOption {
      type = lib.types.path;
      example = "/run/secrets/teslamate/encryption-key";
      description = ''
        File holding TeslaMate's `ENCRYPTION_KEY`, which encrypts the Tesla tokens it
        stores. gridmate's vehicles hub decrypts those tokens with the same key:
        {option}`services.gridmate.vehicles.teslamateEncryptionKeyFile` defaults to this
        file. Keep it stable: a new key makes the stored tokens unreadable.

        It reaches TeslaMate through `LoadCredential=` and an environment file written
        into ${runtimeDirectory} (mode 0700) just before the container starts and removed
        when it stops, so it can stay root-only (a sops-nix secret with its default owner
        and mode). Podman's env-file format cannot carry a newline or a quote: a value
        with one is refused when the unit starts.
      '';
    };

    timeZone = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = config.time.timeZone or null;
      defaultText = lib.literalExpression "config.time.timeZone";
      example = "America/Phoenix";
      description = "TeslaMate's `TZ`.";
    };

    virtualHost = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "teslamate.home.example.com";
      description = ''
        The host name TeslaMate is reached by (`VIRTUAL_HOST`, and `CHECK_ORIGIN` for its
        live views); the Caddy virtual host's name when {option}`${prefix}.caddy.enable`
        is set.
      '';
    };

    environment = lib.mkOption {
      type = lib.types.attrsOf lib.types.str;
      default = { };
      example = {
        TESLA_API_HOST = "https://fleet-api.prd.na.vn.cloud.tesla.com";
        TESLA_AUTH_CLIENT_ID = "your-fleet-api-client-id";
      };
      description = ''
        Further environment variables of TeslaMate (for example its Fleet API settings).
        They are written to the Nix store: never put secrets here.
      '';
    };

    database = {
      name = lib.mkOption {
        type = lib.types.str;
        default = "teslamate";
        description = "TeslaMate's database on this host's PostgreSQL.";
      };
      user = lib.mkOption {
        type = lib.types.str;
        default = "teslamate";
        description = "TeslaMate's PostgreSQL role, owner of its database.";
      };
      passwordFile = lib.mkOption {
        type = lib.types.path;
        example = "/run/secrets/teslamate/db-password";
        description = ''
          File holding the password of TeslaMate's PostgreSQL role. postgresql-setup.service
          sets it (read with psql's `\getenv`, statement logging off, so it reaches neither
          argv nor the server log); TeslaMate gets it through its environment file, and
          {option}`services.gridmate.vehicles.teslamateDbPasswordFile` defaults to it.
        '';
      };
    };

    mqtt = {
      port = lib.mkOption {
        type = lib.types.port;
        default = 1883;
        description = "Port of the loopback Mosquitto listener the stack uses.";
      };
      namespace = lib.mkOption {
        type = lib.types.nullOr (lib.types.strMatching "[^/+#]+");
        default = null;
        example = "home";
        description = ''
          TeslaMate's `MQTT_NAMESPACE`: topics become `teslamate/<namespace>/cars/...`.
          gridmate's vehicles hub follows it.
        '';
      };
      homeAssistantDiscovery = lib.mkOption {
        type = lib.types.bool;
        default = false;
        description = ''
          TeslaMate's own Home Assistant discovery (`MQTT_HOME_ASSISTANT_DISCOVERY`). Off
          by default: gridmate already announces the cars, and both would make two devices
          per car.
        '';
      };
      manageListener = lib.mkOption {
        type = lib.types.bool;
        default = true;
        description = ''
          Whether to add a Mosquitto listener on 127.0.0.1:{option}`${prefix}.mqtt.port`
          with the users and ACLs below. Turn it off to put them on a listener of your own;
          {option}`${prefix}.mqtt.acl` shows what each user needs.
        '';
      };
      acl = lib.mkOption {
        type = lib.types.attrsOf (lib.types.listOf lib.types.str);
        readOnly = true;
        default = acls;
        defaultText = lib.literalMD "the ACLs described in docs/teslamate-on-nixos.md";
        description = ''
          The ACL lines (in services.mosquitto's `users.<name>.acl` form) of each user:
          `teslamate` writes `teslamate/#`; `gridmate` reads it and writes its own topics
          and Home Assistant discovery; `homeassistant` reads both and writes discovery.
          Nobody but `gridmate` may write below gridmate's base topic.
        '';
      };
      users = {
        teslamate = mqttUserOption "teslamate" "TeslaMate itself, writing `teslamate/#` (required)";
        gridmate = mqttUserOption "gridmate" "gridmate's vehicles hub";
        homeassistant = mqttUserOption "homeassistant" "Home Assistant";
      };
    };

    grafana = {
      enable = lib.mkOption {
        type = lib.types.bool;
        default = config.services.grafana.enable or false;
        defaultText = lib.literalExpression "config.services.grafana.enable";
        description = ''
          Whether to give Grafana the "TeslaMate" PostgreSQL datasource (as the read-only
          role {option}`${prefix}.grafana.databaseUser`) and TeslaMate's dashboards.
        '';
      };
      databaseUser = lib.mkOption {
        type = lib.types.str;
        default = "teslamate_grafana";
        description = ''
          A PostgreSQL role that may only read TeslaMate's `public` schema (not the
          `private` schema, where TeslaMate keeps the Tesla tokens).
        '';
      };
      databasePasswordFile = lib.mkOption {
        type = lib.types.nullOr lib.types.path;
        default = null;
        example = "/run/secrets/teslamate/grafana-db-password";
        description = ''
          File holding the password of {option}`${prefix}.grafana.databaseUser`. Grafana
          reads it through `LoadCredential=` and the datasource's `$__file{}` reference,
          so it never enters the Nix store.
        '';
      };
      dashboards = lib.mkOption {
        type = lib.types.nullOr lib.types.path;
        default = null;
        example = lib.literalExpression ''"''${inputs.teslamate}/grafana/dashboards"'';
        description = ''
          A directory of TeslaMate's dashboard JSON files (`grafana/dashboards` of the
          TeslaMate release you run), provisioned into Grafana with one folder per
          subdirectory. Pin it with a flake input of your own
          (`inputs.teslamate = { url = "github:teslamate-org/teslamate/v4.3.0"; flake = false; };`)
          so dashboards and image stay on the same release. Null provisions none.
        '';
      };
    };

    caddy = {
      enable = lib.mkEnableOption "a Caddy virtual host {option}`${prefix}.virtualHost` for TeslaMate";
      forwardAuth = lib.mkOption {
        default = null;
        description = ''
          Forward authentication in front of TeslaMate (Authelia, PocketID with an auth
          proxy, ...): every request is first sent to `upstream` + `uri`, and only a 2xx
          answer lets it through. TeslaMate has no login of its own.
        '';
        type = lib.types.nullOr (
          lib.types.submodule {
            options = {
              upstream = lib.mkOption {
                type = lib.types.str;
                example = "127.0.0.1:9091";
                description = "The authentication server (host:port or URL).";
              };
              uri = lib.mkOption {
                type = lib.types.str;
                default = "/api/authz/forward-auth";
                description = "The verification endpoint (Authelia 4.38's default).";
              };
              copyHeaders = lib.mkOption {
                type = lib.types.listOf lib.types.str;
                default = [
                  "Remote-User"
                  "Remote-Groups"
                  "Remote-Email"
                  "Remote-Name"
                ];
                description = "Headers of the authentication answer passed on to TeslaMate.";
              };
            };
          }
        );
      };
    };

    databaseSetup = lib.mkOption {
      type = lib.types.lines;
      internal = true;
      readOnly = true;
      default = databaseSetup;
      description = "What postgresql-setup.service runs for TeslaMate (tests run it).";
    };

    wireVehicles = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = ''
        Whether gridmate's vehicles hub on this host (when enabled) reads this TeslaMate:
        its MQTT topics (namespace, broker, the `gridmate` MQTT user), its database (car
        ids to VINs, the MQTT cross-check, and the Tesla token with
        `settings.tesla.token_source = "teslamate"`) and its encryption key. Every value
        is a default: set the vehicles option to override one.
      '';
    };
  };

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      {
        assertions = [
          {
            assertion = pinned || cfg.imageFile != null;
            message = ''
              ${prefix}.image is "${cfg.image}", which is not pinned. Give it as
              repository:tag@sha256:<multi-arch index digest> (for example from
              `skopeo inspect --raw docker://teslamate/teslamate:<tag> | sha256sum`), or set
              ${prefix}.imageFile to an image built or fetched by Nix.
            '';
          }
          {
            assertion = config.services.postgresql.enable;
            message = ''
              ${prefix} keeps TeslaMate's data in this host's PostgreSQL, but
              services.postgresql.enable is false. Set it to true.
            '';
          }
          {
            assertion = !pgRefused;
            message = ''
              ${prefix}: TeslaMate refuses PostgreSQL ${toString pgVersion} (it needs 16.7 or
              newer in the 16 series, 17.3 or newer in the 17 series). Set
              services.postgresql.package to a newer one, for example pkgs.postgresql_17.
            '';
          }
          {
            assertion = config.services.mosquitto.enable;
            message = ''
              ${prefix} gives TeslaMate a user on this host's Mosquitto, but
              services.mosquitto.enable is false. Set it to true.
            '';
          }
          {
            assertion = cfg.mqtt.users.teslamate.passwordFile != null;
            message = ''
              ${prefix}.mqtt.users.teslamate.passwordFile is not set. Set it to a file
              holding the password of TeslaMate's MQTT user (for example
              config.sops.secrets."teslamate/mqtt-password".path).
            '';
          }
          {
            assertion = !cfg.grafana.enable || cfg.grafana.databasePasswordFile != null;
            message = ''
              ${prefix}.grafana.enable is set (Grafana runs on this host) but
              ${prefix}.grafana.databasePasswordFile is not. Set it to a file holding the
              password of the read-only role ${cfg.grafana.databaseUser}, or set
              ${prefix}.grafana.enable = false.
            '';
          }
          {
            assertion =
              !(cfg.wireVehicles && vehicles.enable)
              || vehicles.teslamateMqttPasswordFile != null
              || (vehicles.settings.teslamate.mqtt.password_file or null) != null;
            message = ''
              ${prefix}.wireVehicles points gridmate's vehicles hub at this TeslaMate as the
              MQTT user "gridmate", but that user has no password file. Set
              ${prefix}.mqtt.users.gridmate.passwordFile (for example
              config.sops.secrets."teslamate/mqtt-gridmate".path).
            '';
          }
          {
            assertion = !cfg.caddy.enable || cfg.virtualHost != null;
            message = ''
              ${prefix}.caddy.enable is set but ${prefix}.virtualHost is not. Set it to the
              host name TeslaMate is reached by, e.g. "teslamate.home.example.com".
            '';
          }
        ];
        warnings =
          map (s: ''
            ${prefix}.${s.option} (${toString s.value}) is in the Nix store, which every
            user of this machine can read, so the secret is not secret. Keep it outside the
            store, for example with sops-nix (config.sops.secrets.<name>.path), and rotate it.
          '') (builtins.filter (s: inStore s.value) secretFiles)
          ++ lib.optional (cfg.caddy.enable && cfg.caddy.forwardAuth == null) ''
            ${prefix}.caddy.enable puts TeslaMate, which has no login of its own, on
            ${toString cfg.virtualHost} without ${prefix}.caddy.forwardAuth. Set it to
            your Authelia or PocketID forward-auth endpoint.
          '';

        virtualisation.oci-containers.containers.${containerName} = {
          inherit (cfg) image imageFile;
          pull = if cfg.imageFile != null then "never" else "missing";
          environment = {
            DATABASE_USER = cfg.database.user;
            DATABASE_NAME = cfg.database.name;
            DATABASE_HOST = "127.0.0.1";
            DATABASE_PORT = toString pgPort;
            MQTT_HOST = "127.0.0.1";
            MQTT_PORT = toString cfg.mqtt.port;
            MQTT_USERNAME = "teslamate";
            PORT = toString cfg.port;
            HTTP_BINDING_ADDRESS = cfg.listenAddress;
          }
          // lib.optionalAttrs (cfg.mqtt.namespace != null) { MQTT_NAMESPACE = cfg.mqtt.namespace; }
          // lib.optionalAttrs cfg.mqtt.homeAssistantDiscovery {
            MQTT_HOME_ASSISTANT_DISCOVERY = "true";
          }
          // lib.optionalAttrs (cfg.virtualHost != null) {
            VIRTUAL_HOST = cfg.virtualHost;
            CHECK_ORIGIN = "https://${cfg.virtualHost}";
          }
          // lib.optionalAttrs (cfg.timeZone != null) { TZ = cfg.timeZone; }
          // cfg.environment;
          environmentFiles = [ envFile ];
          extraOptions = [
            # PostgreSQL and Mosquitto listen on the host's loopback.
            "--network=host"
            "--cap-drop=ALL"
            "--security-opt=no-new-privileges"
          ];
        };

        systemd.services.${serviceName} = {
          after = [
            "postgresql.target"
            "mosquitto.service"
          ];
          requires = [ "postgresql.target" ];
          wants = [ "mosquitto.service" ];
          serviceConfig = {
            LoadCredential = gridmateLib.loadCredentials {
              teslamate_encryption_key = cfg.encryptionKeyFile;
              teslamate_db_password = cfg.database.passwordFile;
              teslamate_mqtt_password = cfg.mqtt.users.teslamate.passwordFile;
            };
            RuntimeDirectoryMode = "0700";
            ExecStartPre = [
              "${writeEnv} ${envFile} ENCRYPTION_KEY=teslamate_encryption_key DATABASE_PASS=teslamate_db_password MQTT_PASSWORD=teslamate_mqtt_password"
            ];
            # Runs however the container ended, so the secrets never outlive it.
            ExecStopPost = [ "${removeEnv}" ];
          };
        };

        services.postgresql = {
          ensureDatabases = [ cfg.database.name ];
          ensureUsers = [
            # Owner of the database: set by postgresql-setup below, whatever the
            # role's name (ensureDBOwnership needs it to equal the database's).
            { name = cfg.database.user; }
          ]
          ++ lib.optional cfg.grafana.enable { name = cfg.grafana.databaseUser; };
        };

        systemd.services.postgresql-setup = {
          serviceConfig.LoadCredential = gridmateLib.loadCredentials {
            teslamate_db_password = cfg.database.passwordFile;
            teslamate_grafana_db_password =
              if cfg.grafana.enable then cfg.grafana.databasePasswordFile else null;
          };
          script = lib.mkAfter databaseSetup;
        };

        services.mosquitto.listeners = lib.mkIf cfg.mqtt.manageListener [
          {
            address = "127.0.0.1";
            inherit (cfg.mqtt) port;
            users = lib.mapAttrs (name: user: {
              inherit (user) passwordFile;
              acl = acls.${name};
            }) (lib.filterAttrs (_: user: user.passwordFile != null) mqttUsers);
          }
        ];
      }

      (lib.mkIf cfg.grafana.enable {
        systemd.services.grafana.serviceConfig.LoadCredential = gridmateLib.loadCredentials {
          teslamate_grafana_db_password = cfg.grafana.databasePasswordFile;
        };
        services.grafana.provision = {
          enable = true;
          datasources.settings.datasources = [
            {
              name = "TeslaMate";
              uid = "TeslaMate";
              type = "postgres";
              url = "127.0.0.1:${toString pgPort}";
              user = cfg.grafana.databaseUser;
              access = "proxy";
              jsonData = {
                database = cfg.database.name;
                sslmode = "disable";
                postgresVersion = 1500;
              };
              secureJsonData.password = "$__file{${datasourcePasswordPath}}";
            }
          ];
          dashboards.settings.providers = lib.optional (cfg.grafana.dashboards != null) {
            name = "TeslaMate";
            folder = "TeslaMate";
            options = {
              path = cfg.grafana.dashboards;
              foldersFromFilesStructure = true;
            };
          };
        };
      })

      (lib.mkIf cfg.caddy.enable {
        services.caddy.virtualHosts.${cfg.virtualHost}.extraConfig = caddyConfig;
      })

      (lib.mkIf (cfg.wireVehicles && vehicles.enable) {
        services.gridmate.vehicles = {
          settings.teslamate = {
            enable = lib.mkDefault true;
            namespace = lib.mkIf (cfg.mqtt.namespace != null) (lib.mkDefault cfg.mqtt.namespace);
            mqtt = {
              host = lib.mkDefault "127.0.0.1";
              port = lib.mkDefault cfg.mqtt.port;
              username = lib.mkDefault "gridmate";
            };
          };
          settings.tesla.teslamate.dsn = lib.mkDefault databaseUrl;
          teslamateMqttPasswordFile = lib.mkDefault cfg.mqtt.users.gridmate.passwordFile;
          teslamateDbPasswordFile = lib.mkDefault cfg.database.passwordFile;
          teslamateEncryptionKeyFile = lib.mkDefault cfg.encryptionKeyFile;
        };
      })
    ]
  );
}
