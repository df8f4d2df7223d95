# A stand-in for NixOS's systemd unit machinery: the option types of
# systemd.services, systemd.timers and systemd.targets and how a unit's text
# is rendered.
#
# Mirrors (nixpkgs, nixos-25.11 era):
#   nixos/lib/systemd-lib.nix           unitNameType, checkUnitConfig with
#                                       assertValueOneOf, toOption,
#                                       attrsToSection, makeJobScript,
#                                       unitConfig, serviceConfig,
#                                       stage2ServiceConfig, targetConfig,
#                                       commonUnitText, serviceToUnit,
#                                       targetToUnit, timerToUnit
#   nixos/lib/systemd-unit-options.nix  unitOption (merges, never checks a
#                                       value: a bad value fails when the
#                                       unit text is rendered, as upstream),
#                                       the service and timer options
#                                       (a target has only the common ones)
#   nixos/lib/systemd-types.nix         services, timers and targets
# and is compared with them by tests/test_nix.py when a nixpkgs tree is given.
{
  lib,
  pkgs,
  # the NixOS configuration (systemd.package, systemd.globalEnvironment)
  config,
}:
let
  inherit (lib) types mkOption;
  cfg = config.systemd;

  unitNameType = types.strMatching "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)";

  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge =
      loc: defs:
      let
        defs' = lib.filterOverrides defs;
      in
      if lib.any (def: lib.isList def.value) defs' then
        lib.concatMap (def: lib.toList def.value) defs'
      else
        lib.mergeEqualOption loc defs';
  };

  assertValueOneOf =
    name: values: group: attr:
    lib.optional (
      attr ? ${name} && !lib.elem attr.${name} values
    ) "Systemd ${group} field `${name}' cannot have value `${toString attr.${name}}'.";

  checkUnitConfig =
    group: checks: attrs:
    let
      defs = lib.mapAttrs (
        _: v: if v._type or "" == "override" || v._type or "" == "if" then v.content else v
      ) attrs;
      errors = lib.concatMap (c: c group defs) checks;
    in
    if errors == [ ] then true else builtins.trace (lib.concatStringsSep "\n" errors) false;

  checkService = checkUnitConfig "Service" [
    (assertValueOneOf "Type" [
      "exec"
      "simple"
      "forking"
      "oneshot"
      "dbus"
      "notify"
      "notify-reload"
      "idle"
    ])
    (assertValueOneOf "Restart" [
      "no"
      "on-success"
      "on-failure"
      "on-abnormal"
      "on-abort"
      "always"
    ])
  ];

  toOption =
    x:
    if x == true then
      "true"
    else if x == false then
      "false"
    else
      toString x;

  attrsToSection =
    as:
    lib.concatStrings (
      lib.concatLists (
        lib.mapAttrsToList (
          name: value: map (x: "${name}=${toOption x}\n") (if lib.isList value then value else [ value ])
        ) as
      )
    );

  makeJobScript =
    {
      name,
      text,
      enableStrictShellChecks,
    }:
    let
      scriptName = lib.replaceStrings [ "\\" "@" ] [ "-" "_" ] (
        lib.replaceStrings [ "\\" ] [ "\\\\" ] name
      );
      script =
        if !enableStrictShellChecks then
          pkgs.writeShellScriptBin scriptName ''
            set -e

            ${text}
          ''
        else
          pkgs.writeShellApplication {
            name = scriptName;
            inherit text;
          };
    in
    lib.getExe (script.overrideAttrs (_: { name = "unit-script-${scriptName}"; }));

  unitNames = mkOption {
    default = [ ];
    type = types.listOf unitNameType;
  };

  commonOptions =
    { name, ... }:
    {
      options = {
        enable = mkOption {
          type = types.bool;
          default = true;
        };
        name = mkOption { type = types.str; };
        overrideStrategy = mkOption {
          type = types.enum [
            "asDropinIfExists"
            "asDropin"
          ];
          default = "asDropinIfExists";
        };
        description = mkOption {
          type = types.singleLineStr;
          default = "";
        };
        documentation = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        requiredBy = unitNames;
        upheldBy = unitNames;
        wantedBy = unitNames;
        aliases = unitNames;
        requires = unitNames;
        wants = unitNames;
        upholds = unitNames;
        after = unitNames;
        before = unitNames;
        bindsTo = unitNames;
        partOf = unitNames;
        conflicts = unitNames;
        requisite = unitNames;
        onFailure = unitNames;
        onSuccess = unitNames;
        unitConfig = mkOption {
          type = types.attrsOf unitOption;
          default = { };
        };
        startLimitBurst = mkOption { type = types.int; };
        startLimitIntervalSec = mkOption { type = types.int; };
        restartTriggers = mkOption {
          type = types.listOf types.unspecified;
          default = [ ];
        };
        reloadTriggers = mkOption {
          type = types.listOf unitOption;
          default = [ ];
        };
      };
    };

  # systemd-lib.nix's unitConfig: the [Unit] section from the typed options.
  unitConfig =
    { config, options, ... }:
    {
      config.unitConfig =
        let
          list = attr: key: lib.optionalAttrs (config.${attr} != [ ]) { ${key} = toString config.${attr}; };
        in
        list "requires" "Requires"
        // list "wants" "Wants"
        // list "upholds" "Upholds"
        // list "after" "After"
        // list "before" "Before"
        // list "bindsTo" "BindsTo"
        // list "partOf" "PartOf"
        // list "conflicts" "Conflicts"
        // list "requisite" "Requisite"
        // lib.optionalAttrs (config.description != "") { Description = config.description; }
        // list "documentation" "Documentation"
        // list "onFailure" "OnFailure"
        // list "onSuccess" "OnSuccess"
        // lib.optionalAttrs options.startLimitIntervalSec.isDefined {
          StartLimitIntervalSec = toString config.startLimitIntervalSec;
        }
        // lib.optionalAttrs options.startLimitBurst.isDefined {
          StartLimitBurst = toString config.startLimitBurst;
        };
    };

  serviceOptions =
    { name, config, ... }:
    {
      options = {
        environment = mkOption {
          type = types.attrsOf (
            types.nullOr (
              types.oneOf [
                types.str
                types.path
                types.package
              ]
            )
          );
          default = { };
        };
        path = mkOption {
          type = types.listOf (
            types.oneOf [
              types.package
              types.str
            ]
          );
          default = [ ];
        };
        serviceConfig = mkOption {
          type = types.addCheck (types.attrsOf unitOption) checkService;
          default = { };
        };
        # defaulted from systemd.enableStrictShellChecks below
        enableStrictShellChecks = mkOption { type = types.bool; };
        script = mkOption {
          type = types.lines;
          default = "";
        };
        scriptArgs = mkOption {
          type = types.str;
          default = "";
        };
        preStart = mkOption {
          type = types.lines;
          default = "";
        };
        postStart = mkOption {
          type = types.lines;
          default = "";
        };
        preStop = mkOption {
          type = types.lines;
          default = "";
        };
        postStop = mkOption {
          type = types.lines;
          default = "";
        };
        restartIfChanged = mkOption {
          type = types.bool;
          default = true;
        };
        reloadIfChanged = mkOption {
          type = types.bool;
          default = false;
        };
        stopIfChanged = mkOption {
          type = types.bool;
          default = true;
        };
        startAt = mkOption {
          type = types.either types.str (types.listOf types.str);
          default = [ ];
          apply = v: if lib.isList v then v else [ v ];
        };
      };
      config = lib.mkMerge [
        {
          name = "${name}.service";
          enableStrictShellChecks = lib.mkOptionDefault cfg.enableStrictShellChecks;
          # stage2ServiceConfig: the default PATH of every service
          path = lib.mkAfter [
            pkgs.coreutils
            pkgs.findutils
            pkgs.gnugrep
            pkgs.gnused
            cfg.package
          ];
          environment.PATH = lib.mkIf (
            config.path != [ ]
          ) "${lib.makeBinPath config.path}:${lib.makeSearchPathOutput "bin" "sbin" config.path}";
        }
        (lib.mkIf (config.preStart != "") {
          serviceConfig.ExecStartPre = [ (makeJobScript { name = "${name}-pre-start"; text = config.preStart; inherit (config) enableStrictShellChecks; }) ];
        })
        (lib.mkIf (config.script != "") {
          serviceConfig.ExecStart = makeJobScript { name = "${name}-start"; text = config.script; inherit (config) enableStrictShellChecks; } + " " + config.scriptArgs;
        })
        (lib.mkIf (config.postStart != "") {
          serviceConfig.ExecStartPost = [ (makeJobScript { name = "${name}-post-start"; text = config.postStart; inherit (config) enableStrictShellChecks; }) ];
        })
        (lib.mkIf (config.preStop != "") {
          serviceConfig.ExecStop = makeJobScript { name = "${name}-pre-stop"; text = config.preStop; inherit (config) enableStrictShellChecks; };
        })
        (lib.mkIf (config.postStop != "") {
          serviceConfig.ExecStopPost = makeJobScript { name = "${name}-post-stop"; text = config.postStop; inherit (config) enableStrictShellChecks; };
        })
      ];
    };

  timerOptions =
    { name, ... }:
    {
      options.timerConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
      config.name = "${name}.timer";
    };

  # systemd-lib.nix's targetConfig
  targetOptions =
    { name, ... }:
    {
      config.name = "${name}.target";
    };

  commonUnitText =
    def: lines:
    ''
      [Unit]
      ${attrsToSection def.unitConfig}
    ''
    + lines
    + lib.optionalString (def.wantedBy != [ ]) ''

      [Install]
      WantedBy=${lib.concatStringsSep " " def.wantedBy}
    '';

  unitAttrs = def: {
    inherit (def)
      name
      aliases
      wantedBy
      requiredBy
      upheldBy
      enable
      overrideStrategy
      ;
  };
in
{
  inherit unitNameType unitOption attrsToSection;

  types = {
    services = types.attrsOf (
      types.submodule [
        commonOptions
        unitConfig
        serviceOptions
      ]
    );
    timers = types.attrsOf (
      types.submodule [
        commonOptions
        unitConfig
        timerOptions
      ]
    );
    targets = types.attrsOf (
      types.submodule [
        commonOptions
        unitConfig
        targetOptions
      ]
    );
  };

  serviceToUnit =
    def:
    unitAttrs def
    // {
      text = commonUnitText def (
        "[Service]\n"
        + (
          let
            env = cfg.globalEnvironment // def.environment;
          in
          lib.concatMapStrings (
            n: lib.optionalString (env.${n} != null) "Environment=${builtins.toJSON "${n}=${env.${n}}"}\n"
          ) (lib.attrNames env)
        )
        + (
          if def.reloadIfChanged then
            "X-ReloadIfChanged=true\n"
          else if !def.restartIfChanged then
            "X-RestartIfChanged=false\n"
          else
            ""
        )
        + lib.optionalString (!def.stopIfChanged) "X-StopIfChanged=false\n"
        + attrsToSection def.serviceConfig
      );
    };

  # upstream writes a target's [Unit] section alone, no [Install]
  targetToUnit =
    def:
    unitAttrs def
    // {
      text = ''
        [Unit]
        ${attrsToSection def.unitConfig}
      '';
    };

  timerToUnit =
    def:
    unitAttrs def
    // {
      text = commonUnitText def ''
        [Timer]
        ${attrsToSection def.timerConfig}
      '';
    };
}
