# Stand-ins for the NixOS options gridmate's modules read or set, declared
# with the types upstream uses, so a misspelt unit key, a wrongly typed value
# or a missing required option fails here as on a real system. Each file
# names the upstream files it mirrors; tests/test_nix.py compares them with
# the real ones when a nixpkgs tree is given.
{
  imports = [
    ./core.nix
    ./keepalived.nix
    ./firewall.nix
    ./services.nix
    ./restic.nix
    ./sanoid.nix
    ./syncoid.nix
    ./backup-support.nix
    ./oci-containers.nix
    ./postgresql.nix
    ./mosquitto.nix
    ./grafana.nix
    ./prometheus.nix
    ./caddy.nix
  ];
}
