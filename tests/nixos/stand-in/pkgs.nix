# A stand-in for the parts of nixpkgs that gridmate's Nix files use, for
# evaluating them with nothing but nixpkgs' lib (see tests/nixos/harness.nix).
#
# Every builder returns a real derivation (builtins.derivation, never built)
# of the same shape as upstream's, so a module that treats a derivation as a
# string, or a string as a derivation, fails here as it fails on NixOS. What
# each piece mirrors (nixpkgs, nixos-25.11 era):
#   stdenv.mkDerivation   pkgs/stdenv/generic/make-derivation.nix: the
#                         arguments become derivation attributes; meta and
#                         passthru stay outside the derivation; overrideAttrs
#   runCommand, writeText, writeTextFile, writeTextDir, writeScript, writeScriptBin,
#   writeShellScript, writeShellScriptBin, writeShellApplication
#                         pkgs/build-support/trivial-builders/default.nix
#   formats.toml          pkgs/pkgs-lib/formats.nix (`toml`): a value type
#                         without null, and `generate` returning a
#                         derivation whose `value` attribute holds the JSON
#                         that json2toml turns into the file
#   formats.yaml          the same file (`yaml_1_1`): the value type, nullable
#   dockerTools.buildLayeredImage
#                         pkgs/build-support/docker/default.nix: a derivation
#   postgresql, postgresql_<major>
#                         pkgs/servers/sql/postgresql/generic.nix: see
#                         ./postgresql-package.nix
#   callPackage           lib.callPackageWith over this set
# tests/test_nix.py compares these with the real files when a nixpkgs tree
# is given (the "upstream" tier).
{
  lib,
  system,
  # distinguishes the gridmate package of each caller (flake, callPackage)
  tag,
}:
let
  inherit (lib) types;

  mkDerivation =
    args:
    let
      drvArgs = removeAttrs args [
        "meta"
        "passthru"
        "pos"
      ];
      drv = derivation (
        {
          inherit system;
          builder = "/bin/sh";
          args = [
            "-c"
            "echo 'a stand-in derivation is never built' >&2; exit 1"
          ];
        }
        // drvArgs
      );
    in
    drv
    // (args.passthru or { })
    // {
      meta = args.meta or { };
      overrideAttrs = f: mkDerivation (args // (if builtins.isFunction f then f args else f));
      override = overrides: mkDerivation (args // { overrideArgs = builtins.attrNames overrides; });
    };

  runCommand =
    name: env: buildCommand:
    mkDerivation (
      {
        inherit buildCommand name;
        passAsFile = [ "buildCommand" ] ++ (env.passAsFile or [ ]);
      }
      // removeAttrs env [ "passAsFile" ]
    );

  writeTextFile =
    {
      name,
      text,
      executable ? false,
      destination ? "",
      checkPhase ? "",
      meta ? { },
      passthru ? { },
    }:
    let
      matches = builtins.match "/bin/([^/]+)" destination;
    in
    runCommand name {
      inherit text executable checkPhase destination;
      passAsFile = [ "text" ];
      meta = lib.optionalAttrs (executable && matches != null) { mainProgram = lib.head matches; } // meta;
      inherit passthru;
    } "target=$out${destination}; mv \"$textPath\" \"$target\"";

  runtimeShell = "${package "bash"}/bin/bash";

  package = name: mkDerivation { inherit name; };

  postgres = import ./postgresql-package.nix { inherit lib mkDerivation; };

  pkgs = {
    inherit
      lib
      runCommand
      writeTextFile
      runtimeShell
      ;
    stdenv = {
      inherit mkDerivation;
      hostPlatform.system = system;
      buildPlatform.system = system;
      shellDryRun = "${package "bash"}/bin/bash -n -O extglob";
    };
    stdenvNoCC = pkgs.stdenv;
    buildPackages = pkgs;
    writeText = name: text: writeTextFile { inherit name text; };
    writeTextDir =
      path: text:
      writeTextFile {
        inherit text;
        name = builtins.baseNameOf path;
        destination = "/${path}";
      };
    writeScript =
      name: text:
      writeTextFile {
        inherit name text;
        executable = true;
      };
    writeScriptBin =
      name: text:
      writeTextFile {
        inherit name text;
        executable = true;
        destination = "/bin/${name}";
      };
    writeShellScript =
      name: text:
      writeTextFile {
        inherit name;
        executable = true;
        text = "#!${runtimeShell}\n${text}\n";
      };
    writeShellScriptBin =
      name: text:
      writeTextFile {
        inherit name;
        executable = true;
        destination = "/bin/${name}";
        text = "#!${runtimeShell}\n${text}\n";
        meta.mainProgram = name;
      };
    writeShellApplication =
      {
        name,
        text,
        runtimeInputs ? [ ],
        ...
      }:
      writeTextFile {
        inherit name;
        executable = true;
        destination = "/bin/${name}";
        text =
          "#!${runtimeShell}\nset -o errexit\nset -o nounset\nset -o pipefail\n"
          + lib.optionalString (runtimeInputs != [ ]) "export PATH=\"${lib.makeBinPath runtimeInputs}:$PATH\"\n"
          + text;
      };
    callPackage =
      fn: args:
      if builtins.isFunction fn then
        lib.callPackageWith pkgs fn args
      else
        # gridmate's own package (a file): its real expression needs
        # python3Packages and lib.fileset over the source tree, so
        # tests/test_nix.py evaluates nix/package.nix on its own.
        package "gridmate-${tag}";

    formats.toml =
      { }:
      {
        type =
          let
            valueType =
              types.oneOf [
                types.bool
                types.int
                types.float
                types.str
                types.path
                (types.attrsOf valueType)
                (types.listOf valueType)
              ]
              // {
                description = "TOML value";
              };
          in
          valueType;
        generate =
          name: value:
          runCommand name {
            nativeBuildInputs = [ (package "remarshal") ];
            value = builtins.toJSON value;
            passAsFile = [ "value" ];
            preferLocalBuild = true;
          } ''
            json2toml "$valuePath" "$out"
          '';
      };

    # formats.yaml (`yaml_1_1`): a nullable JSON-like value type
    formats.yaml =
      { }:
      {
        type =
          let
            valueType =
              types.nullOr (
                types.oneOf [
                  types.bool
                  types.int
                  types.float
                  types.str
                  types.path
                  (types.attrsOf valueType)
                  (types.listOf valueType)
                ]
              )
              // {
                description = "YAML 1.1 value";
              };
          in
          valueType;
        generate =
          name: value:
          runCommand name {
            nativeBuildInputs = [ (package "remarshal") ];
            value = builtins.toJSON value;
            passAsFile = [ "value" ];
            preferLocalBuild = true;
          } ''json2yaml "$valuePath" "$out"'';
      };

    # pkgs/build-support/docker: an image archive (a derivation)
    dockerTools.buildLayeredImage =
      {
        name,
        tag ? "latest",
        ...
      }:
      package "docker-image-${name}-${tag}.tar.gz";

    python3 = package "python3" // {
      withPackages = _: package "python3-env";
    };
  }
  // lib.genAttrs [
    "bash"
    "coreutils"
    "findutils"
    "gnugrep"
    "gnused"
    "systemd"
    "keepalived"
    "iptables"
    "nftables"
    "mosquitto"
    "jq"
    "apacheKafka"
    "procps"
    "remarshal"
    "remarshal_0_17"
    "nixos-firewall-tool"
    "sanoid"
    "zfs"
    "openssh"
    "util-linux"
    "podman"
    "grafana"
    "caddy"
    "logger"
  ] package
  // {
    xorg.lndir = package "lndir";
    restic = mkDerivation {
      name = "restic";
      meta.mainProgram = "restic";
    };
    # nixpkgs' postgresql_<major> (./postgresql-package.nix)
    postgresql_15 = postgres "15.14";
    postgresql_16 = postgres "16.10";
    postgresql_17 = postgres "17.6";
    postgresql = pkgs.postgresql_17;
    # nixpkgs' prometheus has promtool as its `cli` output (checkConfig)
    prometheus = package "prometheus" // {
      cli = package "prometheus-cli";
    };
  };
in
pkgs
