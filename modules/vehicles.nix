# services.gridmate.vehicles: Tesla Fleet Telemetry (from Kafka) published to
# Home Assistant over MQTT, as the systemd service gridmate-vehicles.service.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  gridmateLib = import ./lib.nix { inherit lib; };
  cfg = config.services.gridmate.vehicles;
  component = "vehicles";
  prefix = "services.gridmate.vehicles";
  format = gridmateLib.settingsFormat pkgs;

  # Every secret of the vehicles settings model: the `*File` option, the
  # systemd credential gridmate looks for, and the settings key it fills.
  # tests/test_nix.py checks this list against the Python settings model.
  secrets = [
    {
      option = "mqttPasswordFile";
      credential = "mqtt_password";
      key = [
        "mqtt"
        "password"
      ];
      what = "the password of Home Assistant's MQTT broker (user `settings.mqtt.username`)";
    }
    {
      option = "kafkaPasswordFile";
      credential = "kafka_password";
      key = [
        "kafka"
        "password"
      ];
      what = "the SASL password of the Kafka cluster (user `settings.kafka.sasl_username`)";
    }
    {
      option = "teslamateMqttPasswordFile";
      credential = "teslamate_mqtt_password";
      key = [
        "teslamate"
        "mqtt"
        "password"
      ];
      what = "the password of TeslaMate's MQTT broker (user `settings.teslamate.mqtt.username`)";
    }
    gridmateLib.sharedSecrets.teslamateEncryptionKey
    gridmateLib.sharedSecrets.teslamateDbPassword
    gridmateLib.sharedSecrets.teslaRefreshToken
    gridmateLib.sharedSecrets.smtpPassword
    gridmateLib.sharedSecrets.notifyMqttPassword
    gridmateLib.sharedSecrets.appriseUrls
  ];

  # An empty `kafka` table would make gridmate look for Fleet Telemetry (and
  # refuse the missing namespace) on a host that reads only TeslaMate or polls.
  settings = gridmateLib.dropNulls (
    if usesKafka then cfg.settings else removeAttrs cfg.settings [ "kafka" ]
  );
  checks = gridmateLib.secretChecks component cfg secrets;
  localKafka = gridmateLib.hasLocal config "apache-kafka";
  localMosquitto = gridmateLib.hasLocal config "mosquitto";
  # The sources gridmate's settings model accepts (VehiclesSettings._some_source).
  usesKafka = lib.any (v: v != null) (lib.attrValues cfg.settings.kafka);
  teslamate = cfg.settings.teslamate.enable or false;
  polling =
    (cfg.settings.polling.enable or true) && (cfg.settings.tesla.token_source or "none") != "none";
in
{
  imports = [ ./common.nix ];

  options.services.gridmate.vehicles = {
    enable = lib.mkEnableOption "gridmate's vehicles component (Tesla Fleet Telemetry records from Kafka, published to Home Assistant over MQTT), run as the systemd service gridmate-vehicles.service; it needs at least one data source: Fleet Telemetry ({option}`services.gridmate.vehicles.settings.kafka.namespace`), TeslaMate or Tesla API polling";

    package = gridmateLib.mkPackageOption config component;

    renderedSettings = lib.mkOption {
      type = lib.types.attrsOf lib.types.anything;
      internal = true;
      readOnly = true;
      default = settings;
      description = "The settings as written to the unit's TOML file (for tests).";
    };

    settings = lib.mkOption {
      default = { };
      example = lib.literalExpression ''
        {
          kafka.bootstrap_servers = "kafka.lan:9092";
          kafka.namespace = "tesla";
          mqtt.host = "homeassistant.lan";
          mqtt.username = "gridmate";
          vehicles."5YJ3E1EA1KF000001" = "Model 3";
        }
      '';
      description = ''
        gridmate-vehicles' configuration, written to a TOML file in the Nix store
        and passed with `--config`. Every key of the vehicles table in gridmate's
        configuration reference (docs/configuration.md) can be set here; the ones
        below are typed and documented because most installations set them.
        `gridmate vehicles check-config --config FILE` validates a file by hand.

        Never put secrets here: the Nix store is world-readable. Use the `*File`
        options of this module (for example {option}`${prefix}.mqttPasswordFile`).
      '';
      type = lib.types.submodule {
        freeformType = format.type;
        options = {
          kafka.bootstrap_servers = lib.mkOption {
            type = lib.types.nullOr lib.types.str;
            default = null;
            example = "kafka1.lan:9092,kafka2.lan:9092";
            description = ''
              Comma-separated `host:port` list of the Kafka cluster fleet-telemetry
              writes to. Unset means gridmate's default `127.0.0.1:9092`, which is only
              allowed when {option}`services.apache-kafka.enable` is set on this host.
            '';
          };
          kafka.namespace = lib.mkOption {
            type = lib.types.nullOr (lib.types.strMatching "[A-Za-z0-9._-]+");
            default = null;
            example = "tesla";
            description = ''
              The `namespace` of fleet-telemetry's configuration: its topics are
              `<namespace>_V`, `<namespace>_connectivity`, `<namespace>_alerts` and
              `<namespace>_errors`. Required to read Fleet Telemetry; fleet-telemetry has
              no default.
            '';
          };
          mqtt.host = lib.mkOption {
            type = lib.types.nullOr lib.types.str;
            default = null;
            example = "homeassistant.lan";
            description = ''
              Home Assistant's MQTT broker. Unset means gridmate's default `127.0.0.1`,
              which is only allowed when {option}`services.mosquitto.enable` is set on
              this host. The port is `mqtt.port` (default 1883), the user `mqtt.username`,
              the password {option}`${prefix}.mqttPasswordFile`.
            '';
          };
          metrics.port = lib.mkOption {
            type = lib.types.port;
            default = 9108;
            description = ''
              Port of the Prometheus `/metrics` endpoint (on `metrics.listen_address`,
              default `127.0.0.1`). Each gridmate daemon on a host needs its own.
            '';
          };
        };
      };
    };
  }
  // gridmateLib.mkSecretOptions component secrets;

  config = lib.mkIf cfg.enable {
    assertions = checks.assertions ++ [
      {
        assertion = usesKafka || teslamate || polling;
        message = ''
          ${prefix} has no vehicle data source. Configure at least one of:
          Fleet Telemetry from Kafka (settings.kafka.namespace, the `namespace` of your
          fleet-telemetry server), TeslaMate (settings.teslamate.enable = true), or Tesla
          API polling (settings.tesla.token_source = "teslamate" or "oauth").
        '';
      }
      {
        assertion = !usesKafka || cfg.settings.kafka.namespace != null;
        message = ''
          ${prefix}.settings.kafka.namespace is not set. Set it to the `namespace` of your
          fleet-telemetry server's configuration (its topics are <namespace>_V, ...).
        '';
      }
      {
        assertion = !usesKafka || cfg.settings.kafka.bootstrap_servers != null || localKafka;
        message = ''
          ${prefix}.settings.kafka.bootstrap_servers is not set and this host runs no Kafka
          (services.apache-kafka.enable is false). Set it to the Kafka cluster that
          fleet-telemetry writes to, e.g. "kafka.lan:9092".
        '';
      }
      {
        assertion = cfg.settings.mqtt.host != null || localMosquitto;
        message = ''
          ${prefix}.settings.mqtt.host is not set and this host runs no Mosquitto
          (services.mosquitto.enable is false). Set it to Home Assistant's MQTT broker,
          e.g. "homeassistant.lan".
        '';
      }
    ];
    inherit (checks) warnings;

    systemd.services.gridmate-vehicles =
      let
        local = gridmateLib.localServiceUnits config [
          "apache-kafka"
          "mosquitto"
          "postgresql"
        ];
      in
      gridmateLib.mkService {
        inherit component;
        inherit (cfg) package;
        description = "gridmate vehicles: Tesla Fleet Telemetry to Home Assistant over MQTT";
        settingsFile = gridmateLib.mkSettingsFile pkgs component settings;
        credentials = gridmateLib.secretCredentials cfg secrets;
        after = local;
        wants = local;
      };

    services.prometheus.scrapeConfigs = lib.mkIf (
      config.services.gridmate.prometheus.scrape && gridmateLib.hasLocal config "prometheus"
    ) (gridmateLib.scrapeConfig component settings);
  };
}
