# Mirrors (nixpkgs, nixos-25.11 era) what gridmate sets of
#   nixos/modules/services/databases/postgresql.nix
#     enable, package (default postgresql_17 from stateVersion 25.11 on),
#     settings (freeform, port 5432), identMap, authentication,
#     ensureDatabases, ensureUsers.*.{name,
#     ensureDBOwnership, ensureClauses}
#   and the postgresql-setup.service it creates (nixos-25.11: the ensure
#   steps run there, then postgresql.target is reached): User=postgres,
#   oneshot, PGPORT, and the `script` gridmate appends to (its shape as in
#   a nixos-25.11 postgresql.nix; the upstream tier has no such copy yet).
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
    identMap = mkOption {
      type = types.lines;
      default = "";
    };
    authentication = mkOption {
      type = types.lines;
      default = "";
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
              type = types.submodule {
                options = lib.genAttrs [
                  "superuser"
                  "createrole"
                  "createdb"
                  "inherit"
                  "login"
                  "replication"
                  "bypassrls"
                ] (
                  _:
                  mkOption {
                    type = types.nullOr types.bool;
                    default = null;
                  }
                );
              };
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
      description = "PostgreSQL Setup Scripts";
      requires = [ "postgresql.service" ];
      after = [ "postgresql.service" ];
      serviceConfig = {
        User = "postgres";
        Group = "postgres";
        Type = "oneshot";
        RemainAfterExit = true;
      };
      path = [ cfg.package ];
      environment.PGPORT = toString cfg.settings.port;
      # upstream first waits for the server, then runs the ensure steps
      script = ''
        while ! psql -d postgres -c "" 2> /dev/null; do
            if ! systemctl is-active --quiet postgresql.service; then exit 1; fi
            sleep 0.1
        done
      ''
      + lib.concatMapStrings (db: ''
        psql -tAc "SELECT 1 FROM pg_database WHERE datname = '${db}'" | grep -q 1 || psql -tAc 'CREATE DATABASE "${db}"'
      '') cfg.ensureDatabases
      + lib.concatMapStrings (user: ''
        psql -tAc "SELECT 1 FROM pg_roles WHERE rolname='${user.name}'" | grep -q 1 || psql -tAc 'CREATE USER "${user.name}"'
      '') cfg.ensureUsers;
    };
  };
}
