# Fleet Telemetry (Kafka) and TeslaMate (MQTT and its PostgreSQL) to Home
# Assistant, on a host running nothing else of gridmate's.
{ ... }:
{
  services.gridmate.vehicles = {
    enable = true;
    settings = {
      kafka.bootstrap_servers = "kafka.lan:9092";
      kafka.namespace = "tesla";
      mqtt.host = "homeassistant.lan";
      mqtt.username = "gridmate";
      teslamate.enable = true;
      teslamate.mqtt.host = "teslamate.lan";
      teslamate.mqtt.username = "gridmate";
      tesla.token_source = "teslamate";
      tesla.teslamate.dsn = "postgresql://teslamate@teslamate.lan:5432/teslamate";
    };
    mqttPasswordFile = "/run/secrets/gridmate/mqtt-password";
    teslamateMqttPasswordFile = "/run/secrets/gridmate/mqtt-password";
    teslamateEncryptionKeyFile = "/run/secrets/gridmate/teslamate-encryption-key";
    teslamateDbPasswordFile = "/run/secrets/gridmate/teslamate-db-password";
  };
}
