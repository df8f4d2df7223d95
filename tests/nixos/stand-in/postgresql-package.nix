# A stand-in for nixpkgs' postgresql_<major> packages, of the shape
# nixos/modules/services/databases/postgresql.nix reads. Mirrors (nixpkgs,
# nixos-25.11 era, amansakhuja/nixpkgs5 0dd60b71d52c23fa967d9c9f97b4fbcae848e622)
#   pkgs/servers/sql/postgresql/generic.nix
#     the server: pname "postgresql", its version, the outputs out, dev,
#     doc, lib, man and jit (jitSupport is on wherever the host can run what
#     the build platform builds), and its passthru: psqlSchema (the major
#     version, which names the data directory), withJIT (the server with its
#     `jit` output as an extension), withoutJIT (the server itself), pkgs
#     (the extensions), withPackages
#   its postgresqlWithPackages
#     the buildEnv "postgresql-and-plugins-<version>" that withPackages
#     returns (the module's finalPackage), with installedExtensions, pkgs,
#     psqlSchema, version, withJIT, withoutJIT and withPackages
# `pkgs` is empty: the extensions gridmate needs (cube, earthdistance) are
# contrib modules inside the server package, not packages of their own.
{
  lib,
  # the stand-in stdenv.mkDerivation (./pkgs.nix)
  mkDerivation,
}:
let
  withPackages =
    postgresql: f:
    let
      installedExtensions = f postgresql.pkgs;
    in
    mkDerivation {
      name = "${postgresql.pname}-and-plugins-${postgresql.version}";
      paths = installedExtensions ++ [
        postgresql
        postgresql.man
      ];
      passthru = {
        inherit installedExtensions;
        inherit (postgresql) pkgs psqlSchema version;
        withJIT = withPackages postgresql (_: installedExtensions ++ [ postgresql.jit ]);
        withoutJIT = withPackages postgresql (_: lib.remove postgresql.jit installedExtensions);
        withPackages = f': withPackages postgresql (ps: installedExtensions ++ f' ps);
      };
    };

  postgresql =
    version:
    let
      this = mkDerivation {
        pname = "postgresql";
        inherit version;
        name = "postgresql-${version}";
        outputs = [
          "out"
          "dev"
          "doc"
          "lib"
          "man"
          "jit"
        ];
        passthru = {
          psqlSchema = lib.versions.major version;
          withJIT = this.withPackages (_: [ this.jit ]);
          withoutJIT = this;
          pkgs = { };
          withPackages = withPackages this;
        };
        # the module's meta.maintainers is the package's (the postgres team)
        meta.maintainers = [ ];
      };
    in
    this;
in
postgresql
