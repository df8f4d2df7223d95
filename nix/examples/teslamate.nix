# TeslaMate and gridmate's vehicles hub on one host: TeslaMate in Podman with
# its database on the host's PostgreSQL, its MQTT users on the host's
# Mosquitto, Grafana with TeslaMate's dashboards behind Caddy and Authelia,
# and Prometheus with gridmate's alert rules. The vehicles hub reads this
# TeslaMate without further settings.
{ pkgs, ... }:
let
  secret = name: "/run/secrets/teslamate/${name}";
in
{
  services.gridmate.teslamate = {
    enable = true;
    encryptionKeyFile = secret "encryption-key";
    database.passwordFile = secret "db-password";
    mqtt.users = {
      teslamate.passwordFile = secret "mqtt-teslamate";
      gridmate.passwordFile = secret "mqtt-gridmate";
      homeassistant.passwordFile = secret "mqtt-homeassistant";
    };
    grafana.databasePasswordFile = secret "grafana-db-password";
    virtualHost = "teslamate.home.example.com";
    caddy = {
      enable = true;
      forwardAuth.upstream = "127.0.0.1:9091"; # Authelia
    };
  };

  services.gridmate.vehicles = {
    enable = true;
    settings.mqtt.username = "gridmate";
    mqttPasswordFile = secret "mqtt-gridmate";
  };

  services.gridmate.monitoring.alertRules = true;

  services.postgresql = {
    enable = true;
    package = pkgs.postgresql_17;
  };
  services.mosquitto.enable = true;
  services.grafana.enable = true;
  services.prometheus.enable = true;
  services.caddy.enable = true;
}
