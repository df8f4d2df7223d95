# Mirrors (nixpkgs, nixos-25.11 era) services.<name>.enable of the local
# services gridmate orders itself after and never configures otherwise:
#   nixos/modules/services/misc/apache-kafka.nix
#   nixos/modules/services/home-automation/home-assistant.nix
#   nixos/modules/services/mail/postfix.nix
# and `system.stateVersion` (nixos/modules/misc/version.nix), which
# oci-containers.nix and postgresql.nix read for their defaults.
# The upstream tier loads this file too.
{ lib, ... }:
let
  inherit (lib) types mkOption;
in
{
  options = {
    services = lib.genAttrs [
      "apache-kafka"
      "home-assistant"
      "postfix"
    ] (_: {
      enable = mkOption {
        type = types.bool;
        default = false;
      };
    });
    system.stateVersion = mkOption {
      type = types.str;
      default = "25.11";
    };
  };
}
