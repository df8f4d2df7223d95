# One host ("pantry", 192.168.1.22) of an active/passive energy pair; the
# other host ("garage", 192.168.1.21) has the same settings with
# priority = 100 and unicastPeers = [ "192.168.1.22" ]. keepalived starts
# gridmate-energy on the active host only; the firewall is opened for VRRP
# from the peer.
{ ... }:
{
  services.gridmate.energy = {
    enable = true;
    settings = {
      tariff.preset = "srp-tou";
      tariff.time_zone = "America/Phoenix";
      tesla.token_source = "oauth";
      tesla.oauth.client_id = "your-tesla-app-client-id";
      reserve.restore_reserve_percent = 30;
      notify = {
        smtp_host = "smtp.example.com";
        username = "gridmate@example.com";
        sender = "gridmate@example.com";
        node_name = "pantry";
        recipients.warning = [ "you@example.com" ];
        # the sent-ledger mirror, so the new active host does not repeat mail
        mqtt.host = "192.168.1.10";
      };
    };
    teslaRefreshTokenFile = "/run/secrets/gridmate/tesla-refresh-token";
    smtpPasswordFile = "/run/secrets/gridmate/smtp-password";
    failover = {
      enable = true;
      interface = "enp1s0";
      virtualRouterId = 51;
      priority = 150;
      unicastPeers = [ "192.168.1.21" ];
    };
  };
}
