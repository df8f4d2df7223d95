# Mirrors (nixpkgs, nixos-25.11 era) what gridmate sets of
#   nixos/modules/services/databases/postgresql.nix
#     enable, package (default postgresql_17 from stateVersion 25.11 on),
#     settings (freeform, port 5432), ensureDatabases, ensureUsers.*.{name,
#     ensureDBOwnership, ensureClauses}
#   and the postgresql-setup.service it creates (nixos-25.11: the ensure
#   steps run there, then postgresql.target is reached), whose `script`
#   gridmate appends to.
# The upstream tier loads the real file instead when the nixpkgs tree has it.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) types mkOption;
  cfg = config.services.postgresql;
in
{
  options.services.postgresql = {
    enable = mkOption {
      type = types.bool;
      default = false;
    };
    package = mkOption {
      type = types.package;
      default =
        if lib.versionAtLeast config.system.stateVersion "25.11" then
          pkgs.postgresql_17
        else
          pkgs.postgresql_16;
    };
    settings = mkOption {
      type = types.submodule {
        freeformType = types.attrsOf (
          types.oneOf [
            types.bool
            types.float
            types.int
            types.str
          ]
        );
        options.port = mkOption {
          type = types.port;
          default = 5432;
        };
      };
      default = { };
    };
    ensureDatabases = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    ensureUsers = mkOption {
      type = types.listOf (
        types.submodule {
          options = {
            name = mkOption { type = types.str; };
            ensureDBOwnership = mkOption {
              type = types.bool;
              default = false;
            };
            ensureClauses = mkOption {
              type = types.submodule { freeformType = types.attrsOf types.anything; };
              default = { };
            };
          };
        }
      );
      default = [ ];
    };
  };

  config = lib.mkIf cfg.enable {
    systemd.services.postgresql-setup = {
      requiredBy = [ "postgresql.target" ];
      after = [ "postgresql.service" ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        User = "postgres";
        Group = "postgres";
      };
      path = [ cfg.package ];
      script =
        lib.concatMapStrings (db: ''
          psql -tAc "SELECT 1 FROM pg_database WHERE datname = '${db}'" | grep -q 1 || psql -tAc 'CREATE DATABASE "${db}"'
        '') cfg.ensureDatabases
        + lib.concatMapStrings (user: ''
          psql -tAc "SELECT 1 FROM pg_roles WHERE rolname='${user.name}'" | grep -q 1 || psql -tAc 'CREATE USER "${user.name}"'
        '') cfg.ensureUsers;
    };
  };
}
