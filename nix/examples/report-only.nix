# The daily report on a host without the energy component, reading a copy of
# the energy journal synced from the energy host.
{ ... }:
{
  services.gridmate.report = {
    enable = true;
    settings = {
      energy_state_directory = "/srv/gridmate-energy";
      time_zone = "America/Phoenix";
      notify = {
        smtp_host = "smtp.example.com";
        username = "gridmate@example.com";
        sender = "gridmate@example.com";
        recipients.info = [ "you@example.com" ];
      };
    };
    smtpPasswordFile = "/run/secrets/gridmate/smtp-password";
  };
}
