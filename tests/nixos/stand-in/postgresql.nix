# Mirrors (nixpkgs, nixos-25.11 era, amansakhuja/nixpkgs5
# 634a93eb83713b5bdc6ae6d0e7a0f5f09d6643c5)
#   nixos/modules/services/databases/postgresql.nix
# in what gridmate sets, reads or extends:
#   options   enable, package (no default of its own: the module sets it
#             from system.stateVersion, postgresql_17 from 25.11 on),
#             finalPackage (read-only: the package without JIT and without
#             extensions; enableJIT and extensions are not mirrored, their
#             defaults are assumed), dataDir (defaulted from the package's
#             psqlSchema), settings (free-form, port), identMap and
#             authentication (with the module's own lines around what
#             others add), initialScript, ensureDatabases,
#             ensureUsers.*.{name, ensureDBOwnership, ensureClauses}
#   config    the assertion on ensureDBOwnership, the warning about a beta
#             or release-candidate package, postgresql.target, and
#             postgresql-setup.service (the ensure steps gridmate appends
#             to), both as the module writes them.
# postgresql.service itself is not mirrored: gridmate only orders units on
# it. tests/test_nix.py compares this file with the real one (declared
# options, refused configurations, the rendered postgresql-setup.service and
# postgresql.target) and runs the rendered setup script against PostgreSQL.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    attrValues
    concatMapStrings
    concatStringsSep
    elem
    filterAttrs
    mapAttrs
    mkAfter
    mkBefore
    mkDefault
    mkEnableOption
    mkMerge
    mkOption
    optionalString
    types
    versionAtLeast
    ;
  cfg = config.services.postgresql;
in
{
  options.services.postgresql = {
    enable = mkEnableOption "PostgreSQL Server";
    package = mkOption { type = types.package; };
    finalPackage = mkOption {
      type = types.package;
      readOnly = true;
      default = cfg.package.withoutJIT.withPackages (_: [ ]);
    };
    dataDir = mkOption { type = types.path; };
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
    initialScript = mkOption {
      type = types.nullOr types.path;
      default = null;
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
    warnings =
      let
        unstableState =
          if lib.hasInfix "beta" cfg.package.version then
            "in beta"
          else if lib.hasInfix "rc" cfg.package.version then
            "a release candidate"
          else
            null;
      in
      lib.optional (unstableState != null) ''
        PostgreSQL ${lib.versions.major cfg.package.version} is currently ${unstableState},
        and is not advised for use in production environments.
      '';

    assertions = map (
      { name, ensureDBOwnership, ... }:
      {
        assertion = ensureDBOwnership -> elem name cfg.ensureDatabases;
        message = ''
          For each database user defined with `services.postgresql.ensureUsers` and
          `ensureDBOwnership = true;`, a database with the same name must be defined
          in `services.postgresql.ensureDatabases`.

          Offender: ${name} has not been found among databases.
        '';
      }
    ) cfg.ensureUsers;

    # upstream goes on with postgresql_14 and _13 (with a warning) and throws
    # for older releases; none of them is in the stand-in pkgs
    services.postgresql.package = mkDefault (
      if versionAtLeast config.system.stateVersion "25.11" then
        pkgs.postgresql_17
      else if versionAtLeast config.system.stateVersion "24.11" then
        pkgs.postgresql_16
      else
        pkgs.postgresql_15
    );

    services.postgresql.dataDir = mkDefault "/var/lib/postgresql/${cfg.package.psqlSchema}";

    services.postgresql.authentication = mkMerge [
      (mkBefore "# Generated file; do not edit!")
      (mkAfter ''
        # default value of services.postgresql.authentication
        local all postgres         peer map=postgres
        local all all              peer
        host  all all 127.0.0.1/32 md5
        host  all all ::1/128      md5
      '')
    ];

    services.postgresql.identMap = mkAfter ''
      postgres postgres postgres
    '';

    systemd.targets.postgresql = {
      description = "PostgreSQL";
      wantedBy = [ "multi-user.target" ];
      bindsTo = [
        "postgresql.service"
        "postgresql-setup.service"
      ];
    };

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

      path = [ cfg.finalPackage ];
      environment.PGPORT = builtins.toString cfg.settings.port;

      # Wait for PostgreSQL to be ready to accept connections.
      script = ''
        check-connection() {
          psql -d postgres -v ON_ERROR_STOP=1 <<-'  EOF'
            SELECT pg_is_in_recovery() \gset
            \if :pg_is_in_recovery
            \i still-recovering
            \endif
          EOF
        }
        while ! check-connection 2> /dev/null; do
            if ! systemctl is-active --quiet postgresql.service; then exit 1; fi
            sleep 0.1
        done

        if test -e "${cfg.dataDir}/.first_startup"; then
          ${optionalString (cfg.initialScript != null) ''
            psql -f "${cfg.initialScript}" -d postgres
          ''}
          rm -f "${cfg.dataDir}/.first_startup"
        fi
      ''
      + optionalString (cfg.ensureDatabases != [ ]) ''
        ${concatMapStrings (database: ''
          psql -tAc "SELECT 1 FROM pg_database WHERE datname = '${database}'" | grep -q 1 || psql -tAc 'CREATE DATABASE "${database}"'
        '') cfg.ensureDatabases}
      ''
      + ''
        ${concatMapStrings (
          user:
          let
            dbOwnershipStmt = optionalString user.ensureDBOwnership ''psql -tAc 'ALTER DATABASE "${user.name}" OWNER TO "${user.name}";' '';

            filteredClauses = filterAttrs (name: value: value != null) user.ensureClauses;

            clauseSqlStatements = attrValues (mapAttrs (n: v: if v then n else "no${n}") filteredClauses);

            userClauses = ''psql -tAc 'ALTER ROLE "${user.name}" ${concatStringsSep " " clauseSqlStatements}' '';
          in
          ''
            psql -tAc "SELECT 1 FROM pg_roles WHERE rolname='${user.name}'" | grep -q 1 || psql -tAc 'CREATE USER "${user.name}"'
            ${userClauses}

            ${dbOwnershipStmt}
          ''
        ) cfg.ensureUsers}
      '';
    };
  };
}
