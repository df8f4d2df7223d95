# services.gridmate.report: the daily metrics file and e-mail report, run by
# the timer gridmate-report.timer as the oneshot gridmate-report.service.
#
# Reading the energy service's state with DynamicUser: gridmate-energy writes
# its journal into /var/lib/gridmate-energy with mode 0600 (UMask=0077) as
# the transient user `gridmate-energy`. When the energy component runs on
# this host, the report runs as that same transient user (units that name the
# same DynamicUser share one UID) and lists gridmate-energy as a second
# StateDirectory, so systemd mounts it into the report's sandbox without
# changing any ownership. The report only reads there; its own files go to
# /var/lib/gridmate-report. Without a local energy component it runs as its
# own transient user `gridmate-report` and reads the journal directory named
# in `settings.energy_state_directory` (e.g. a copy synced from elsewhere).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  gridmateLib = import ./lib.nix { inherit lib; };
  cfg = config.services.gridmate.report;
  energy = config.services.gridmate.energy;
  component = "report";
  prefix = "services.gridmate.report";
  format = gridmateLib.settingsFormat pkgs;

  # Every secret of the report settings model; tests/test_nix.py checks this
  # list against the Python settings model.
  secrets = [
    gridmateLib.sharedSecrets.smtpPassword
    gridmateLib.sharedSecrets.notifyMqttPassword
    gridmateLib.sharedSecrets.appriseUrls
    gridmateLib.sharedSecrets.haDeviceMqttPassword
  ];

  withEnergy = energy.enable;
  settings = gridmateLib.dropNulls cfg.settings;
  checks = gridmateLib.secretChecks component cfg secrets;
  at = path: lib.attrByPath path null cfg.settings;
in
{
  imports = [ ./common.nix ];

  options.services.gridmate.report = {
    enable = lib.mkEnableOption "gridmate's daily report (metrics file and e-mail built from the energy service's journal), run by gridmate-report.timer as the oneshot service gridmate-report.service";

    package = gridmateLib.mkPackageOption config component;

    onCalendar = lib.mkOption {
      type = with lib.types; either str (listOf str);
      default = "*-*-* 00:15:00";
      example = "*-*-* 00:30:00 America/Phoenix";
      description = ''
        When the report runs (systemd.time(7) calendar events, `OnCalendar=` of
        gridmate-report.timer). It reports the previous complete day in
        `settings.time_zone`, so run it shortly after midnight there; a time zone
        can be appended to the calendar event. The timer is `Persistent=`: a run
        missed while the machine was off happens at the next boot.
      '';
    };

    settings = lib.mkOption {
      default = { };
      example = lib.literalExpression ''
        {
          time_zone = "America/Phoenix";
          recovery_target_percent = 40;
          notify = {
            smtp_host = "smtp.example.com";
            username = "gridmate@example.com";
            sender = "gridmate@example.com";
            recipients.info = [ "you@example.com" ];
          };
        }
      '';
      description = ''
        The report's configuration, written to a TOML file in the Nix store and passed
        with `--config`. Every key of the report table in gridmate's configuration
        reference (docs/configuration.md) can be set here.

        Never put secrets here: the Nix store is world-readable. Use
        {option}`${prefix}.smtpPasswordFile` and {option}`${prefix}.mqttPasswordFile`.
      '';
      type = lib.types.submodule {
        freeformType = format.type;
        options = {
          time_zone = lib.mkOption {
            type = lib.types.nullOr lib.types.str;
            default = energy.settings.tariff.time_zone or null;
            defaultText = lib.literalExpression "config.services.gridmate.energy.settings.tariff.time_zone or null";
            example = "America/Phoenix";
            description = ''
              The site's time zone (IANA name), which decides where a day begins and
              ends; it should be the energy tariff's. Unset means the system's.
            '';
          };
          state_directory = lib.mkOption {
            type = lib.types.str;
            default = "/var/lib/gridmate-report";
            readOnly = true;
            description = "Where the report keeps its metrics files (the unit's StateDirectory).";
          };
          energy_state_directory = lib.mkOption {
            type = lib.types.nullOr lib.types.str;
            default = if withEnergy then "/var/lib/gridmate-energy" else null;
            defaultText = lib.literalExpression ''
              if config.services.gridmate.energy.enable then "/var/lib/gridmate-energy" else null
            '';
            description = ''
              The energy service's state directory, whose journal the report reads.
              With the energy component on this host it is that service's
              StateDirectory; otherwise set it to where a copy of the journal lives
              (readable by the report's transient user).
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
        assertion = cfg.settings.energy_state_directory != null;
        message = ''
          ${prefix}.enable is set but services.gridmate.energy is not enabled on this host,
          so there is no journal to report on. Enable services.gridmate.energy here, or set
          ${prefix}.settings.energy_state_directory to a directory holding the energy
          service's journal (<dir>/energy/journal/YYYY-MM-DD.jsonl).
        '';
      }
      {
        assertion =
          (at [ "notify" "username" ]) == null
          || cfg.smtpPasswordFile != null
          || (at [ "notify" "password_file" ]) != null;
        message = ''
          ${prefix}.settings.notify.username is set but no SMTP password is given.
          Set ${prefix}.smtpPasswordFile to a file holding it.
        '';
      }
    ];
    warnings =
      checks.warnings
      ++ lib.optional (cfg.mqttPasswordFile != null && (at [ "ha_device" "enable" ]) != true) ''
        ${prefix}.mqttPasswordFile is set but settings.ha_device.enable is not, so the
        report publishes nothing to Home Assistant's broker and the password is not used.
      '';

    systemd.services.gridmate-report =
      let
        local = gridmateLib.localServiceUnits config [
          "postfix"
          "mosquitto"
        ];
      in
      gridmateLib.mkService {
        inherit component;
        inherit (cfg) package;
        description = "gridmate report: daily metrics file and e-mail report";
        command = "daily";
        oneshot = true;
        # Share the energy service's transient identity so its 0600 journal
        # is readable; see the comment at the top of this file.
        user = if withEnergy then "gridmate-energy" else "gridmate-report";
        stateDirectories = [ "gridmate-report" ] ++ lib.optional withEnergy "gridmate-energy";
        settingsFile = gridmateLib.mkSettingsFile pkgs component settings;
        credentials = gridmateLib.secretCredentials cfg secrets;
        after = local ++ lib.optional withEnergy "gridmate-energy.service";
        wants = local;
      };

    systemd.timers.gridmate-report = {
      description = "Daily gridmate report";
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnCalendar = cfg.onCalendar;
        Persistent = true;
        # Spread the mail a little; the day is long complete by then.
        RandomizedDelaySec = "5min";
      };
    };
  };
}
