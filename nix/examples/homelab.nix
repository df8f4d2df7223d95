# Every gridmate component on one host. Secrets are files outside the Nix
# store, owned by root with mode 0400: with sops-nix, use
# `config.sops.secrets."gridmate/mqtt-password".path` where this file writes
# "/run/secrets/gridmate/mqtt-password" (sops-nix's default location).
{ ... }:
let
  secret = name: "/run/secrets/gridmate/${name}";
  notify = {
    smtp_host = "smtp.example.com";
    username = "gridmate@example.com";
    sender = "gridmate@example.com";
    recipients.info = [ "you@example.com" ];
    recipients.warning = [ "you@example.com" ];
    recipients.critical = [ "you@example.com" ];
  };
in
{
  services.gridmate.vehicles = {
    enable = true;
    settings = {
      kafka.bootstrap_servers = "127.0.0.1:9092"; # fleet-telemetry's Kafka
      kafka.namespace = "tesla"; # fleet-telemetry's `namespace`
      mqtt.host = "homeassistant.lan";
      mqtt.username = "gridmate";
      vehicles."5YJ3E1EA1KF000001" = "Model 3";
    };
    mqttPasswordFile = secret "mqtt-password";
  };

  services.gridmate.energy = {
    enable = true;
    settings = {
      tariff.preset = "original";
      tariff.time_zone = "America/Phoenix";
      tesla.token_source = "teslamate";
      tesla.teslamate.dsn = "postgresql://teslamate@127.0.0.1:5432/teslamate";
      powerwall.gateway.url = "https://192.168.91.1";
      thermostats = [
        {
          id = "living";
          kind = "honeywell";
          device_id = "LCC-00D02DB89E33";
          location_id = "123456";
        }
      ];
      honeywell.api_key = "your-consumer-key";
      weather = {
        latitude = 33.45;
        longitude = -112.07;
        user_agent = "gridmate/1 (you@example.com)";
      };
      inherit notify;
    };
    teslamateEncryptionKeyFile = secret "teslamate-encryption-key";
    teslamateDbPasswordFile = secret "teslamate-db-password";
    honeywellClientSecretFile = secret "honeywell-client-secret";
    honeywellRefreshTokenFile = secret "honeywell-refresh-token";
    powerwallGatewayPasswordFile = secret "gateway-password";
    smtpPasswordFile = secret "smtp-password";
  };

  services.gridmate.report = {
    enable = true;
    onCalendar = "*-*-* 00:15:00 America/Phoenix";
    settings = {
      # time_zone defaults to the energy tariff's
      recovery_target_percent = 40;
      inherit notify;
    };
    smtpPasswordFile = secret "smtp-password";
  };

  # gridmate adds a scrape job for each daemon when Prometheus runs here.
  services.prometheus.enable = true;
}
