# services.gridmate.energy: time-of-use control of the Powerwall, thermostats
# and home EV charging, as the systemd service gridmate-energy.service.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  gridmateLib = import ./lib.nix { inherit lib; };
  cfg = config.services.gridmate.energy;
  component = "energy";
  prefix = "services.gridmate.energy";
  format = gridmateLib.settingsFormat pkgs;

  # Every secret of the energy settings model: the `*File` option, the
  # systemd credential gridmate looks for, and the settings key it fills.
  # tests/test_nix.py checks this list against the Python settings model.
  secrets = [
    gridmateLib.sharedSecrets.teslamateEncryptionKey
    gridmateLib.sharedSecrets.teslamateDbPassword
    gridmateLib.sharedSecrets.teslaRefreshToken
    {
      option = "honeywellClientSecretFile";
      credential = "honeywell_client_secret";
      key = [
        "honeywell"
        "client_secret"
      ];
      what = "the consumer secret of your Honeywell Home developer app (`settings.honeywell.api_key` is its key)";
    }
    {
      option = "honeywellRefreshTokenFile";
      credential = "honeywell_refresh_token";
      key = [
        "honeywell"
        "refresh_token"
      ];
      what = "the initial Honeywell Home refresh token (rotated tokens are then kept in the state directory)";
    }
    {
      option = "homeAssistantTokenFile";
      credential = "home_assistant_token";
      key = [
        "home_assistant"
        "token"
      ];
      what = "a Home Assistant long-lived access token (for thermostats of kind `home_assistant`)";
    }
    {
      option = "powerwallGatewayPasswordFile";
      credential = "powerwall_gateway_password";
      key = [
        "powerwall"
        "gateway"
        "password"
      ];
      what = "the customer password of the Powerwall gateway (`settings.powerwall.gateway.url`)";
    }
    gridmateLib.sharedSecrets.smtpPassword
    gridmateLib.sharedSecrets.notifyMqttPassword
    gridmateLib.sharedSecrets.appriseUrls
    {
      option = "mqttPasswordFile";
      credential = "mqtt_password";
      key = [
        "ev"
        "mqtt"
        "password"
      ];
      # the Home Assistant device publishes to the same broker as the vehicles hub
      alsoKeys = [
        [
          "ha_device"
          "mqtt"
          "password"
        ]
      ];
      what = "the password of the MQTT broker the vehicles hub publishes to, read for EV charging state (`settings.ev.mqtt`) and by the Home Assistant device (`settings.ha_device.mqtt`)";
    }
  ];

  settings = gridmateLib.dropNulls cfg.settings;
  checks = gridmateLib.secretChecks component cfg secrets;
  at = path: lib.attrByPath path null cfg.settings;
  hasSecret =
    secret:
    cfg.${secret.option} != null
    || at (lib.init secret.key ++ [ "${lib.last secret.key}_file" ]) != null;
  secretNamed = credential: lib.findFirst (s: s.credential == credential) null secrets;
  tokenSource = at [
    "tesla"
    "token_source"
  ];
  failover = cfg.failover;
  failoverComplete = failover.enable && failover.interface != null && failover.virtualRouterId != null;
  settingsFile = gridmateLib.mkSettingsFile pkgs component settings;
  credentials = gridmateLib.secretCredentials cfg secrets;
  # The systemd this system runs (not whatever /run/current-system points at
  # while a switch is under way).
  systemctl = "${config.systemd.package}/bin/systemctl";
  # keepalived's generic notify program gets TYPE NAME STATE PRIORITY. It runs as
  # root, so it only switches units: the energy service runs on the active node,
  # and gridmate-energy-failover@STATE announces the transition as the energy
  # unit's own user with its credentials (the SMTP password stays out of argv).
  # It records the new state first (the energy service checks it before every
  # write); tests/test_energy_failover.py runs the same file under keepalived.
  roleDirectory = "/run/gridmate-energy-failover";
  roleFile = "${roleDirectory}/state";
  notifyScript = pkgs.writeShellScript "gridmate-energy-failover-notify" (
    lib.replaceStrings
      [ "@systemctl@" "@roleDirectory@" "@roleFile@" ]
      [ systemctl roleDirectory roleFile ]
      (builtins.readFile ./energy-failover-notify.sh)
  );
  # networking.firewall.backend where NixOS has it (it also knows firewalld).
  firewallBackend =
    config.networking.firewall.backend
      or (if config.networking.nftables.enable then "nftables" else "iptables");
  # Firewall rules accepting VRRP (IP protocol 112) from the peers on the
  # failover interface; the chain names are those of nixpkgs'
  # nixos/modules/services/networking/firewall-iptables.nix.
  vrrpRules =
    let
      interface = if failover.interface == null then "" else failover.interface;
      isV6 = lib.hasInfix ":";
    in
    {
      iptables = lib.concatMapStrings (
        peer:
        "${if isV6 peer then "ip6tables" else "iptables"} -w -A nixos-fw -i ${interface} -p 112 -s ${peer} -j nixos-fw-accept\n"
      ) failover.unicastPeers;
      nftables = lib.concatMapStrings (
        peer:
        "iifname \"${interface}\" ${if isV6 peer then "ip6" else "ip"} saddr ${peer} meta l4proto 112 accept\n"
      ) failover.unicastPeers;
    };
  honeywellThermostats = builtins.filter (t: (t.kind or null) == "honeywell") (
    cfg.settings.thermostats or [ ]
  );
in
{
  imports = [ ./common.nix ];

  options.services.gridmate.energy = {
    enable = lib.mkEnableOption "gridmate's energy component (time-of-use control of the Powerwall, thermostats and home EV charging), run as the systemd service gridmate-energy.service";

    package = gridmateLib.mkPackageOption config component;

    settings = lib.mkOption {
      default = { };
      example = lib.literalExpression ''
        {
          tariff.preset = "original";
          tesla.token_source = "teslamate";
          tesla.teslamate.dsn = "postgresql://teslamate@127.0.0.1:5432/teslamate";
          powerwall.gateway.url = "https://192.168.91.1";
          thermostats = [
            { id = "living"; kind = "honeywell"; device_id = "LCC-00D02DB89E33"; location_id = "123456"; }
          ];
          honeywell.api_key = "your-consumer-key";
          weather = { latitude = 33.45; longitude = -112.07; user_agent = "gridmate/1 (you@example.com)"; };
        }
      '';
      description = ''
        gridmate-energy's configuration, written to a TOML file in the Nix store and
        passed with `--config`. Every key of the energy table in gridmate's
        configuration reference (docs/configuration.md) can be set here: the tariff
        (`tariff.preset` or `tariff.schedules`), `reserve`, the thermostat `policy`,
        `thermostats`, `honeywell`, `home_assistant`, `tesla`, `powerwall`, `weather`,
        `ev` and `notify`. `gridmate energy plan --config FILE` prints the day's plan.

        Never put secrets here: the Nix store is world-readable. Use the `*File`
        options of this module (for example {option}`${prefix}.teslamateEncryptionKeyFile`).
      '';
      type = lib.types.submodule {
        freeformType = format.type;
        options = {
          metrics.port = lib.mkOption {
            type = lib.types.port;
            default = 9109;
            description = ''
              Port of the Prometheus `/metrics` endpoint (on `metrics.listen_address`,
              default `127.0.0.1`). Each gridmate daemon on a host needs its own; the
              vehicles component uses 9108.
            '';
          };
        };
      };
    };

    failover = {
      enable = lib.mkEnableOption ''
        active/passive failover of the energy manager between two hosts with keepalived
        (VRRP). Configure both hosts alike, with their own {option}`${prefix}.failover.priority`
        and each other as {option}`${prefix}.failover.unicastPeers`. keepalived then starts
        gridmate-energy.service on the active host and stops it on the other one (the unit
        is no longer started at boot), and every transition is journalled and announced by
        `gridmate energy failover-notify`, run as gridmate-energy-failover@<STATE>.service
        with the energy unit's user, state directory and credentials'';

      interface = lib.mkOption {
        type = lib.types.nullOr lib.types.str;
        default = null;
        example = "enp1s0";
        description = "Network interface keepalived sends and receives VRRP adverts on.";
      };

      virtualRouterId = lib.mkOption {
        type = lib.types.nullOr (lib.types.ints.between 1 255);
        default = null;
        example = 51;
        description = ''
          VRRP router id (1-255) of the pair; the same on both hosts and different from
          every other VRRP group on the network.
        '';
      };

      priority = lib.mkOption {
        type = lib.types.ints.between 1 254;
        default = 100;
        example = 150;
        description = ''
          This host's VRRP priority; the higher one becomes active, and takes over again
          when it comes back (preemption).
        '';
      };

      unicastPeers = lib.mkOption {
        type = lib.types.listOf lib.types.str;
        default = [ ];
        example = [ "192.168.1.21" ];
        description = "Addresses of the other host(s); VRRP adverts go to them by unicast.";
      };

      virtualIps = lib.mkOption {
        type = lib.types.listOf lib.types.str;
        default = [ ];
        example = [ "192.168.1.20/24" ];
        description = ''
          Addresses (`IP/PREFIX`) the active host carries, e.g. for a metrics scrape target
          that follows the active node. Not needed for failover itself.
        '';
      };

      notifyScript = lib.mkOption {
        type = lib.types.package;
        internal = true;
        readOnly = true;
        default = notifyScript;
        defaultText = lib.literalMD "a script that starts or stops gridmate-energy.service";
        description = ''
          keepalived's notify program (run as root): starts gridmate-energy.service on
          MASTER, stops it on BACKUP, FAULT and STOP, and starts
          gridmate-energy-failover@STATE.service, which announces the transition.
        '';
      };

      openFirewall = lib.mkOption {
        type = lib.types.bool;
        default = true;
        example = false;
        description = ''
          Whether to accept VRRP adverts (IP protocol 112) from
          {option}`${prefix}.failover.unicastPeers` on
          {option}`${prefix}.failover.interface` in the NixOS firewall, with either
          firewall backend (iptables, or nftables when {option}`networking.nftables.enable`
          is set). Without it the firewall, which is on by default, drops the other host's
          adverts: each host then thinks it is alone, both become active and both write to
          the Powerwall. Turn it off only if you open VRRP yourself.
        '';
      };
    };
  }
  // gridmateLib.mkSecretOptions component secrets;

  config = lib.mkIf cfg.enable {
    assertions = checks.assertions ++ [
      {
        assertion = tokenSource != "teslamate" || hasSecret (secretNamed "teslamate_encryption_key");
        message = ''
          ${prefix}.settings.tesla.token_source is "teslamate" but TeslaMate's encryption key
          is not given. Set ${prefix}.teslamateEncryptionKeyFile to a file holding TeslaMate's
          ENCRYPTION_KEY (and ${prefix}.teslamateDbPasswordFile for its database password).
        '';
      }
      {
        assertion =
          tokenSource != "oauth"
          || (at [
            "tesla"
            "oauth"
            "client_id"
          ]) != null;
        message = ''
          ${prefix}.settings.tesla.token_source is "oauth" but settings.tesla.oauth.client_id
          is not set. Set it to your Tesla developer application's client ID, and
          ${prefix}.teslaRefreshTokenFile to a file holding the first refresh token.
        '';
      }
      {
        assertion = (at [ "notify" "username" ]) == null || hasSecret (secretNamed "smtp_password");
        message = ''
          ${prefix}.settings.notify.username is set but no SMTP password is given.
          Set ${prefix}.smtpPasswordFile to a file holding it.
        '';
      }
      {
        assertion =
          honeywellThermostats == [ ]
          || (
            hasSecret (secretNamed "honeywell_client_secret")
            && hasSecret (secretNamed "honeywell_refresh_token")
            && (at [ "honeywell" "api_key" ]) != null
          );
        message = ''
          ${prefix}.settings.thermostats has a thermostat of kind "honeywell", which needs
          settings.honeywell.api_key (your Honeywell Home app's consumer key),
          ${prefix}.honeywellClientSecretFile and ${prefix}.honeywellRefreshTokenFile.
        '';
      }
    ]
    ++ lib.optionals failover.enable [
      {
        assertion = failover.interface != null;
        message = ''
          ${prefix}.failover.enable is set but ${prefix}.failover.interface is not. Set it to
          the network interface that reaches the other host (for example "enp1s0").
        '';
      }
      {
        assertion = failover.virtualRouterId != null;
        message = ''
          ${prefix}.failover.enable is set but ${prefix}.failover.virtualRouterId is not. Pick
          a VRRP router id (1-255) unused on this network and set the same on both hosts.
        '';
      }
      {
        assertion = failover.unicastPeers != [ ];
        message = ''
          ${prefix}.failover.enable is set but ${prefix}.failover.unicastPeers is empty. List
          the other host's address there (and this host's on the other host).
        '';
      }
    ];
    warnings =
      checks.warnings
      ++ lib.optional
        (
          failover.enable
          && failover.openFirewall
          && config.networking.firewall.enable
          && firewallBackend == "firewalld"
        )
        ''
        ${prefix}.failover.openFirewall cannot open VRRP in firewalld. Allow IP protocol
        112 from ${lib.concatStringsSep ", " failover.unicastPeers} in your firewalld zone
        (for example a rich rule), then set ${prefix}.failover.openFirewall = false.
        Without it both hosts become active and both write to the Powerwall.
      ''
      ++ lib.optional (failoverComplete && (at [ "notify" "mqtt" ]) == null) ''
        ${prefix}.failover.enable is set but settings.notify.mqtt is not: without a broker
        both hosts share, a split brain (both hosts active) is not detected and both
        write to the Powerwall. Set settings.notify.mqtt on both hosts to the same broker.
      ''
      ++ lib.optional (cfg.mqttPasswordFile != null && (at [ "notify" "mqtt" ]) == null) ''
        ${prefix}.mqttPasswordFile is set but settings.notify.mqtt is not, so no MQTT
        connection uses it.
      '';

    systemd.services.gridmate-energy =
      let
        # TeslaMate's database, the notification ledger's broker and Home
        # Assistant, when they run on this host.
        local = gridmateLib.localServiceUnits config [
          "postgresql"
          "mosquitto"
          "home-assistant"
        ];
      in
      gridmateLib.mkService {
        inherit component;
        inherit (cfg) package;
        description = "gridmate energy: time-of-use control of the Powerwall and thermostats";
        inherit settingsFile credentials;
        after = local;
        wants = local;
        # With failover keepalived starts it on the active node only.
        wantedBy = lib.optionals (!failover.enable) [ "multi-user.target" ];
      };

    systemd.services."gridmate-energy-failover@" = lib.mkIf failover.enable (
      gridmateLib.mkService {
        inherit component credentials settingsFile;
        inherit (cfg) package;
        description = "gridmate energy: announce the failover transition to %i";
        oneshot = true;
        # The energy unit's user and state directory: the journal and the
        # notification queue are the energy service's. Not its runtime or
        # cache directory: systemd removes a RuntimeDirectory= when the unit
        # that declares it stops, which would take /run/gridmate-energy (the
        # status file) away from the running energy service.
        user = "gridmate-energy";
        runtimeDirectory = null;
        cacheDirectory = null;
        serviceConfig = {
          ExecStart = "${
            lib.concatMapStringsSep " " gridmateLib.escapeExecArg [
              "${cfg.package}/bin/gridmate"
              component
              "failover-notify"
              "--config"
              settingsFile
              "INSTANCE"
              "gridmate-energy"
            ]
          } %i";
          TimeoutStartSec = 60;
        };
      }
    );

    # keepalived runs the notify script as root: with script security it
    # checks that no part of the script's path is writable by anyone else
    # (store paths pass) instead of logging a SECURITY VIOLATION.
    # Only once the instance is complete: otherwise the assertions above say
    # what to set, and keepalived's own would add a second, vaguer message.
    services.keepalived = lib.mkIf failoverComplete {
      enable = true;
      enableScriptSecurity = lib.mkDefault true;
      vrrpInstances.gridmate-energy = {
        inherit (failover)
          interface
          virtualRouterId
          priority
          unicastPeers
          ;
        state = "BACKUP";
        virtualIps = map (addr: { inherit addr; }) failover.virtualIps;
        # A cut link between the hosts must not put both in FAULT (nobody in
        # control): keepalived ignores the interface's carrier, and a node that
        # loses its peer becomes MASTER; the lease on the shared broker then
        # lets only one of two MASTERs write (docs/energy.md, Split brain).
        extraConfig = ''
          notify "${failover.notifyScript}" root
          dont_track_primary
        '';
      };
    };

    # VRRP adverts from the peers, for whichever firewall backend is in use
    # (keepalived's own openFirewall writes iptables rules only, and accepts
    # VRRP from anyone).
    networking.firewall = lib.mkIf (failover.enable && failover.openFirewall) {
      extraCommands = lib.mkIf (firewallBackend == "iptables") vrrpRules.iptables;
      extraInputRules = lib.mkIf (firewallBackend == "nftables") vrrpRules.nftables;
    };

    # The energy service checks the role file and the lease before every write.
    services.gridmate.energy.settings.failover = lib.mkIf failover.enable {
      enable = lib.mkDefault true;
      role_file = lib.mkDefault roleFile;
    };

    services.prometheus.scrapeConfigs = lib.mkIf (
      config.services.gridmate.prometheus.scrape && gridmateLib.hasLocal config "prometheus"
    ) (gridmateLib.scrapeConfig component settings);
  };
}
