# Mirrors (nixpkgs, nixos-25.11 era) what gridmate sets of
#   nixos/modules/services/networking/mosquitto.nix
#     enable, listeners.*.{port, address, users.<name>.{password,
#     passwordFile, hashedPassword, hashedPasswordFile, acl}, acl,
#     omitPasswordAuth}
# The upstream tier loads the real file instead when the nixpkgs tree has it;
# tests/nixos/harness.nix `mosquittoAcls` renders the ACL files as its
# makeACLFile does.
{ lib, ... }:
let
  inherit (lib) types mkOption;

  # mosquitto.nix shadows `str`: its configuration format has no escaping.
  str = types.strMatching "[^\r\n]*" // {
    description = "single-line string";
  };

  secret =
    type:
    mkOption {
      type = types.uniq (types.nullOr type);
      default = null;
    };

  user = types.submodule {
    options = {
      password = secret str;
      passwordFile = secret types.path;
      hashedPassword = secret str;
      hashedPasswordFile = secret types.path;
      acl = mkOption {
        type = types.listOf str;
        default = [ ];
      };
    };
  };

  listener = types.submodule {
    options = {
      port = mkOption {
        type = types.port;
        default = 1883;
      };
      address = mkOption {
        type = types.nullOr str;
        default = null;
      };
      users = mkOption {
        type = types.attrsOf user;
        default = { };
      };
      omitPasswordAuth = mkOption {
        type = types.bool;
        default = false;
      };
      acl = mkOption {
        type = types.listOf str;
        default = [ ];
      };
    };
  };
in
{
  options.services.mosquitto = {
    enable = mkOption {
      type = types.bool;
      default = false;
    };
    listeners = mkOption {
      type = types.listOf listener;
      default = [ ];
    };
  };
}
