# A TeslaMate host on ZFS with gridmate's vehicles hub, backed up and ready to
# be rebuilt (docs/backup.md): TeslaMate's database (pg_dump) and gridmate's
# state go to a restic repository on the NAS every night; PostgreSQL's data
# directory lives on its own dataset, snapshotted by Sanoid and replicated to
# the NAS by syncoid every hour. On a rebuilt host each service waits for its
# gridmate-preseed-<target> unit, which restores its data first. Secrets are
# sops-nix paths (root-only files outside the Nix store).
{ ... }:
let
  secret = name: "/run/secrets/gridmate/${name}";
in
{
  services.gridmate.vehicles = {
    enable = true;
    settings = {
      kafka.bootstrap_servers = "kafka.lan:9092";
      kafka.namespace = "tesla";
      mqtt.host = "homeassistant.lan";
      mqtt.username = "gridmate";
      teslamate.enable = true;
      tesla.token_source = "teslamate";
      tesla.teslamate.dsn = "postgresql://teslamate@127.0.0.1:5432/teslamate";
    };
    mqttPasswordFile = secret "mqtt-password";
    teslamateEncryptionKeyFile = secret "teslamate-encryption-key";
    teslamateDbPasswordFile = secret "teslamate-db-password";
  };

  # TeslaMate's database; its data directory is the dataset below.
  services.postgresql.enable = true;
  # node_exporter reads the freshness and preseed metrics (textfile collector).
  services.prometheus.exporters.node.enable = true;

  services.gridmate.backup = {
    enable = true;

    restic = {
      enable = true;
      repository = "sftp:restic@nas.lan:/srv/restic/gridmate";
    };
    resticPasswordFile = secret "restic-password";

    # pg_dump of TeslaMate's database before each backup. TeslaMate runs in
    # Podman here (virtualisation.oci-containers.containers.teslamate, whose
    # unit would be found by itself); named explicitly for this example.
    teslamate = {
      enable = true;
      units = [ "podman-teslamate.service" ];
    };

    replication = {
      enable = true;
      host = "syncoid@nas.lan";
      targetParent = "tank/replicas/teslamate-host";
      sshKeyFile = secret "syncoid-ssh-key";
      # The dataset is encrypted: the NAS keeps it encrypted (zfs send -w).
      raw = true;
    };

    preseed = {
      enable = true;
      # The first install has nothing to restore; a rebuild after a lost disk
      # should wait for the NAS rather than start empty.
      onFailure = "refuse";
      targets.postgresql = {
        kind = "dataset";
        dataset = "rpool/services/postgresql";
        units = [ "postgresql.service" ];
      };
    };

    settings.notify = {
      smtp_host = "smtp.example.com";
      username = "gridmate@example.com";
      sender = "gridmate@example.com";
      recipients.warning = [ "you@example.com" ];
      recipients.critical = [ "you@example.com" ];
    };
    smtpPasswordFile = secret "smtp-password";
  };
}
