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

  secret =
    type:
    mkOption {
      type = types.uniq (types.nullOr type);
      default = null;
    };

  user = types.submodule {
    options = {
      password = secret types.str;
      passwordFile = secret types.path;
      hashedPassword = secret types.str;
      hashedPasswordFile = secret types.path;
      acl = mkOption {
        type = types.listOf types.str;
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
        type = types.nullOr types.str;
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
        type = types.listOf types.str;
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
