# Mirrors (nixpkgs, nixos-25.11 era) what gridmate sets of
#   nixos/modules/virtualisation/oci-containers.nix
#     backend, containers.<name>.{image, imageFile, imageStream, serviceName,
#     cmd, environment, environmentFiles, ports, volumes, dependsOn,
#     extraOptions, autoStart, pull}
#   and the podman-<name>.service it makes of a root container (mkService:
#   wantedBy, wants/after network-online unless an image file is given,
#   the podman run script, ExecStartPre pre-start, preStop/postStop,
#   Type=notify, RuntimeDirectory=<name>).
# The upstream tier loads the real file instead when the nixpkgs tree has it.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) types mkOption;
  cfg = config.virtualisation.oci-containers;

  container =
    { name, ... }:
    {
      options = {
        image = mkOption { type = types.str; };
        imageFile = mkOption {
          type = types.nullOr types.package;
          default = null;
        };
        imageStream = mkOption {
          type = types.nullOr types.package;
          default = null;
        };
        serviceName = mkOption {
          type = types.str;
          default = "${cfg.backend}-${name}";
        };
        cmd = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        environment = mkOption {
          type = types.attrsOf types.str;
          default = { };
        };
        environmentFiles = mkOption {
          type = types.listOf types.path;
          default = [ ];
        };
        ports = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        volumes = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        dependsOn = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        extraOptions = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        autoStart = mkOption {
          type = types.bool;
          default = true;
        };
        pull = mkOption {
          type = types.enum [
            "always"
            "missing"
            "never"
            "newer"
          ];
          default = "missing";
        };
      };
    };

  mkService =
    name: c:
    let
      escapedName = lib.escapeShellArg name;
      noImageFile = c.imageFile == null && c.imageStream == null;
      preStart = pkgs.writeShellApplication {
        name = "pre-start";
        runtimeInputs = [ ];
        text = ''
          ${cfg.backend} rm -f ${name} || true
          ${lib.optionalString false "" /* the registry login, unused by gridmate */}
          ${lib.optionalString (c.imageFile != null) ''
            ${cfg.backend} load -i ${c.imageFile}
          ''}
          ${lib.optionalString (c.imageStream != null) ''
            ${c.imageStream} | ${cfg.backend} load
          ''}
          ${lib.optionalString (cfg.backend == "podman") ''
            rm -f /run/${escapedName}/ctr-id
          ''}
        '';
      };
    in
    {
      wantedBy = lib.optional c.autoStart "multi-user.target";
      wants = lib.optional noImageFile "network-online.target";
      after = lib.optional noImageFile "network-online.target";
      path = [ pkgs.podman ];
      script = lib.concatStringsSep " \\\n  " (
        [
          "exec podman "
          "run"
          "--name=${escapedName}"
          "--log-driver=journald"
          "--cidfile=/run/${escapedName}/ctr-id"
          "--cgroups=enabled"
          "--sdnotify=conmon"
          "-d"
          "--replace"
        ]
        ++ lib.mapAttrsToList (
          k: v: "-e ${lib.escapeShellArg k}=${lib.escapeShellArg v}"
        ) c.environment
        ++ map (f: "--env-file ${lib.escapeShellArg f}") c.environmentFiles
        ++ map (p: "-p ${lib.escapeShellArg p}") c.ports
        ++ map (v: "-v ${lib.escapeShellArg v}") c.volumes
        ++ [ "--rm" ]
        ++ [ "--pull ${lib.escapeShellArg c.pull}" ]
        ++ map lib.escapeShellArg c.extraOptions
        ++ [ c.image ]
        ++ map lib.escapeShellArg c.cmd
      );
      preStop = "podman stop --ignore --cidfile=/run/${escapedName}/ctr-id";
      postStop = "podman rm -f --ignore --cidfile=/run/${escapedName}/ctr-id";
      serviceConfig = {
        ExecStartPre = [ "${preStart}/bin/pre-start" ];
        TimeoutStartSec = 0;
        TimeoutStopSec = 120;
        Restart = "always";
        Environment = "PODMAN_SYSTEMD_UNIT=%n";
        Type = "notify";
        NotifyAccess = "all";
        User = "root";
        RuntimeDirectory = escapedName;
      };
    };
in
{
  options.virtualisation.oci-containers = {
    backend = mkOption {
      type = types.enum [
        "podman"
        "docker"
      ];
      default =
        if lib.versionAtLeast config.system.stateVersion "22.05" then "podman" else "docker";
    };
    containers = mkOption {
      type = types.attrsOf (types.submodule container);
      default = { };
    };
  };

  config = lib.mkIf (cfg.containers != { }) {
    systemd.services = lib.mapAttrs' (
      n: c: lib.nameValuePair c.serviceName (mkService n c)
    ) cfg.containers;
  };
}
