# Evaluates gridmate's NixOS modules and flake with nixpkgs' lib, against
# either the stand-ins in ./stand-in (tier "stand-in") or the real NixOS
# files of a nixpkgs tree (tier "upstream"): a full nixpkgs checkout, or a
# partial tree holding just the files listed in `upstreamFiles` below at
# their nixpkgs paths. Nothing is built; Nix 2.8 is enough (nixpkgs'
# default.nix is never imported).
#
#   import ./harness.nix { libDir = <nixpkgs lib>; root = <gridmate>; nixpkgs = null | <tree>; }
{
  libDir,
  root,
  nixpkgs ? null,
  # The services (names of `serviceFiles`) whose real module the upstream
  # tier loads; the others keep their stand-in (tests/test_nix.py passes
  # those whose files the nixpkgs tree has).
  realServices ? [ ],
}:
let
  lib = import libDir;
  upstream = nixpkgs != null;
  tier = if upstream then "upstream" else "stand-in";

  # The real NixOS files the upstream tier loads.
  upstreamFiles = {
    assertions = "nixos/modules/misc/assertions.nix";
    utils = "nixos/lib/utils.nix";
    formats = "pkgs/pkgs-lib/formats.nix";
    keepalived = "nixos/modules/services/networking/keepalived/default.nix";
    firewall = "nixos/modules/services/networking/firewall.nix";
    firewallIptables = "nixos/modules/services/networking/firewall-iptables.nix";
    firewallNftables = "nixos/modules/services/networking/firewall-nftables.nix";
    # Loaded when the tree holds them (a partial tree may not yet); their
    # stand-ins take their place otherwise.
    restic = "nixos/modules/services/backup/restic.nix";
    sanoid = "nixos/modules/services/backup/sanoid.nix";
    syncoid = "nixos/modules/services/backup/syncoid.nix";
  };
  real = name: nixpkgs + "/${upstreamFiles.${name}}";

  # The backup modules of the upstream tier: the real file when present,
  # else the stand-in mirroring it.
  optionalUpstream = [
    "restic"
    "sanoid"
    "syncoid"
  ];
  hasUpstream = lib.genAttrs optionalUpstream (
    name: upstream && builtins.pathExists (real name)
  );
  backupModules = map (
    name: if hasUpstream.${name} then real name else ./stand-in + "/${name}.nix"
  ) optionalUpstream;

  # Service modules gridmate sets options of, each with its stand-in; the
  # upstream tier loads the real file of those in `realServices`.
  serviceFiles = {
    oci-containers = {
      file = "nixos/modules/virtualisation/oci-containers.nix";
      standIn = ./stand-in/oci-containers.nix;
    };
    mosquitto = {
      file = "nixos/modules/services/networking/mosquitto.nix";
      standIn = ./stand-in/mosquitto.nix;
    };
    postgresql = {
      file = "nixos/modules/services/databases/postgresql.nix";
      standIn = ./stand-in/postgresql.nix;
    };
    grafana = {
      file = "nixos/modules/services/monitoring/grafana.nix";
      standIn = ./stand-in/grafana.nix;
    };
    prometheus = {
      file = "nixos/modules/services/monitoring/prometheus/default.nix";
      standIn = ./stand-in/prometheus.nix;
    };
    caddy = {
      file = "nixos/modules/services/web-servers/caddy/default.nix";
      standIn = ./stand-in/caddy.nix;
    };
  };
  # A real module without its `imports`: those are only aliases of old option
  # names (oci-containers.nix: mkChangedOptionModule for `docker-containers`),
  # whose top-level `mkIf` on the old option loops forever next to the free-
  # form top level the example checks and VM-test machines are evaluated with.
  withoutImports =
    file:
    let
      module = import file;
    in
    {
      _file = file;
      imports = [
        (lib.setFunctionArgs (args: removeAttrs (module args) [ "imports" ]) (
          lib.functionArgs module
        ))
      ];
    };
  serviceModules = lib.mapAttrsToList (
    name: service:
    if upstream && builtins.elem name realServices then
      withoutImports (nixpkgs + "/${service.file}")
    else
      service.standIn
  ) serviceFiles;

  standInPkgs = import ./stand-in/pkgs.nix;

  mkPkgs =
    { system, tag }:
    let
      base = standInPkgs { inherit lib system tag; };
    in
    if upstream then
      let
        pkgs = base // {
          formats = import (real "formats") { inherit lib pkgs; };
        };
      in
      pkgs
    else
      base;

  # The NixOS options gridmate's modules use. Stand-in tier: ./stand-in/nixos.nix.
  # Upstream tier: the real modules, plus the few option declarations of
  # nixos/modules/system/boot/systemd.nix (a module too large to load on its
  # own: services, timers, targets) typed with the real
  # utils.systemdUtils.types, and the stand-in for
  # what is still not loaded from upstream (firewall, prometheus, local
  # services' enable).
  nixosModules =
    if !upstream then
      [ ./stand-in/nixos.nix ]
    else
      [
        (real "assertions")
        (real "keepalived")
        (
          {
            config,
            lib,
            pkgs,
            utils,
            ...
          }:
          {
            options.systemd = {
              package = lib.mkOption {
                type = lib.types.package;
                default = pkgs.systemd;
              };
              globalEnvironment = lib.mkOption {
                type = lib.types.attrsOf (
                  lib.types.nullOr (
                    lib.types.oneOf [
                      lib.types.str
                      lib.types.path
                      lib.types.package
                    ]
                  )
                );
                default = { };
              };
              enableStrictShellChecks = lib.mkOption {
                type = lib.types.bool;
                default = false;
              };
              services = lib.mkOption {
                type = utils.systemdUtils.types.services;
                default = { };
              };
              timers = lib.mkOption {
                type = utils.systemdUtils.types.timers;
                default = { };
              };
              targets = lib.mkOption {
                type = utils.systemdUtils.types.targets;
                default = { };
              };
            };
            config._module.args.utils = import (real "utils") { inherit lib config pkgs; };
          }
        )
        ./stand-in/services.nix
        ./stand-in/backup-support.nix
        ./upstream-inputs.nix
        ./upstream-service-inputs.nix
      ]
      ++ backupModules
      ++ serviceModules
      ++ map real [
        "firewall"
        "firewallIptables"
        "firewallNftables"
      ];

  eval =
    {
      modules,
      system ? "x86_64-linux",
    }:
    lib.evalModules {
      modules = [
        { _module.args.pkgs = mkPkgs { inherit system; tag = "callpackage"; }; }
      ]
      ++ nixosModules
      ++ modules;
    };

  # The unit files NixOS would write for a configuration (an evalModules
  # result): name -> { text, wantedBy, ... }, rendered as
  # nixos/modules/system/boot/systemd.nix does, with `toUnits` being
  # utils.systemdUtils.lib or its stand-in.
  unitsWith =
    toUnits: result:
    let
      withName = toUnit: def: lib.nameValuePair def.name (toUnit def);
    in
    lib.mapAttrs' (_: withName toUnits.serviceToUnit) result.config.systemd.services
    // lib.mapAttrs' (_: withName toUnits.targetToUnit) result.config.systemd.targets
    // lib.mapAttrs' (_: withName toUnits.timerToUnit) result.config.systemd.timers;

  standInUnits =
    result:
    unitsWith (import ./stand-in/systemd.nix {
      inherit lib;
      inherit (result) config;
      pkgs = result._module.args.pkgs;
    }) result;

  units =
    result:
    if upstream then
      unitsWith
        (import (real "utils") {
          inherit lib;
          inherit (result) config;
          pkgs = result._module.args.pkgs;
        }).systemdUtils.lib
        result
    else
      standInUnits result;

  # nixpkgs' lib.nixosSystem (flake.nix -> nixos/lib/eval-config.nix) for the
  # flake's example checks: the stand-in or upstream options above, other
  # options (boot, fileSystems, ...) accepted as they are, and a toplevel that
  # throws on failed assertions and depends on every unit's text, like
  # nixos/modules/system/activation/top-level.nix.
  nixosSystem =
    { modules, ... }:
    let
      result = eval {
        modules = [ { freeformType = lib.types.attrsOf lib.types.anything; } ] ++ modules;
      };
      config = result.config;
      failed = map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);
      pkgs = result._module.args.pkgs;
      toplevel =
        if failed != [ ] then
          throw "\nFailed assertions:\n${lib.concatMapStringsSep "\n" (m: "- ${m}") failed}"
        else
          pkgs.runCommand "nixos-system-stand-in" {
            units = lib.mapAttrsToList (name: unit: "${name}\n${unit.text}") (units result);
          } "touch $out";
    in
    {
      config = lib.recursiveUpdate config { system.build.toplevel = toplevel; };
    };

  # The options under `options` as a tree of { type; default?; sub? }, sub
  # being the options of a submodule type (attrsOf submodule, listOf
  # submodule), for comparing stand-ins with upstream declarations.
  describeOptions =
    let
      simple =
        v:
        v == null
        || builtins.isBool v
        || builtins.isInt v
        || builtins.isString v
        || (builtins.isList v && lib.all builtins.isString v);
      go =
        depth: opts:
        lib.mapAttrs (
          _: o:
          if lib.isOption o then
            let
              sub = o.type.getSubOptions (o.loc ++ [ "<name>" ]);
            in
            {
              type = o.type.description;
              hasDefault = o ? default;
            }
            # A default computed from other options (postgresql.nix's
            # finalPackage reads `package`, which has a value only once the
            # service is enabled) may fail to evaluate: it is no simple value.
            // lib.optionalAttrs (o ? default && (builtins.tryEval (simple o.default)).value) {
              inherit (o) default;
            }
            // lib.optionalAttrs (depth < 3 && sub != { }) { sub = go (depth + 1) sub; }
          else if builtins.isAttrs o then
            go depth o
          else
            null
        ) (removeAttrs opts [ "_module" ]);
    in
    go 0;

  # Evaluates modules against the stand-ins, whatever this harness's tier.
  evalStandIn =
    modules:
    lib.evalModules {
      modules = [
        {
          _module.args.pkgs = standInPkgs {
            inherit lib;
            system = "x86_64-linux";
            tag = "callpackage";
          };
        }
        ./stand-in/nixos.nix
      ]
      ++ modules;
    };

  # The keepalived.conf the real keepalived module writes for a configuration
  # (upstream tier only). The module writes it with pkgs.writeText inside a
  # `let`; calling the module again with a writeText whose result's outPath
  # is the text itself lets the text through to ExecStart, where it is cut out.
  keepalivedConf =
    result:
    let
      capture = result._module.args.pkgs // {
        writeText = _name: text: { outPath = text; };
      };
      module = import (real "keepalived") {
        inherit (result) config;
        inherit lib;
        pkgs = capture;
      };
      execStart = module.config.content.systemd.services.keepalived.serviceConfig.ExecStart;
      afterFlag = lib.last (lib.splitString " -f " execStart);
    in
    if !upstream then
      throw "keepalivedConf needs the upstream tier"
    else
      lib.removeSuffix " -p /run/keepalived.pid" afterFlag;

  # What the real firewall modules would load into the kernel (upstream tier
  # only): the iptables backend's firewall-start script, taken from its
  # ExecStart the way keepalivedConf takes keepalived.conf, and the nftables
  # backend's ruleset as nixos/modules/services/networking/nftables.nix
  # loads each table it manages.
  firewallRules =
    result:
    let
      cfg = result.config.networking.firewall;
      capture = result._module.args.pkgs // {
        writeScriptBin = _name: text: { outPath = text; };
      };
      iptablesModule = import (real "firewallIptables") {
        inherit (result) config;
        inherit lib;
        pkgs = capture;
      };
      execStart = iptablesModule.config.content.systemd.services.firewall.serviceConfig.ExecStart;
      table = result.config.networking.nftables.tables.nixos-fw;
    in
    if !upstream then
      throw "firewallRules needs the upstream tier"
    else if cfg.backend == "iptables" then
      {
        backend = "iptables";
        script = lib.removeSuffix "/bin/firewall-start firewall-start" (lib.removePrefix "@" execStart);
      }
    else
      {
        backend = "nftables";
        # nftables.nix replaces a table it manages: declare it, delete it, load it.
        ruleset = ''
          table ${table.family} ${table.name} {}
          delete table ${table.family} ${table.name}
          table ${table.family} ${table.name} {
          ${table.content}
          }
        '';
      };

  flakeOutputsFor =
    flakePkgs:
    let
      flake = import (root + "/flake.nix");
      self =
        flake.outputs {
          inherit self;
          nixpkgs = {
            lib = lib // {
              inherit nixosSystem;
            };
            legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" "riscv64-linux" ] flakePkgs;
          };
        }
        // {
          outPath = root;
        };
    in
    self;

  flake = flakeOutputsFor (
    system:
    mkPkgs {
      inherit system;
      tag = "flake-${system}";
    }
  );

  stubPkgs = mkPkgs {
    system = "x86_64-linux";
    tag = "stub";
  };
in
{
  inherit
    lib
    tier
    eval
    units
    flake
    mkPkgs
    nixosSystem
    standInUnits
    keepalivedConf
    firewallRules
    describeOptions
    evalStandIn
    upstreamFiles
    hasUpstream
    serviceFiles
    realServices
    ;
  # a package of that name (an unbuilt derivation)
  package = name: stubPkgs.stdenv.mkDerivation { inherit name; };
  # nixpkgs' PostgreSQL package at that version, as a host pinning another
  # nixpkgs for it would have (./stand-in/postgresql-package.nix)
  postgresql = import ./stand-in/postgresql-package.nix {
    inherit lib;
    inherit (stubPkgs.stdenv) mkDerivation;
  };
  gridmateLib = import (root + "/modules/lib.nix") { inherit lib; };
  modules = root + "/modules";
}
