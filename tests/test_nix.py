"""Checks of gridmate's Nix files (flake, package, NixOS modules).

Three tiers, by what the machine has:

* Always: flake.lock is a well-formed lock of one pinned nixpkgs input, and
  docs/nixpkgs-pin.md records the same revision.
* With ``nix-instantiate`` on PATH: every .nix file in the repository parses.
* With ``NIXPKGS_LIB`` pointing at a checkout of nix-community/nixpkgs.lib (or
  of nixpkgs): the NixOS modules, nix/package.nix and the flake's outputs are
  evaluated with ``lib.evalModules`` against small stand-ins for the parts of
  NixOS and nixpkgs they use, and the resulting systemd units are checked.
  ``scripts/fetch-nixpkgs-lib`` prints how to get one; nothing here downloads.

Nothing is built: no nixpkgs is needed, and none can be fetched offline.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
NIX_INSTANTIATE = shutil.which("nix-instantiate")
SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache"}

needs_nix = pytest.mark.skipif(
    NIX_INSTANTIATE is None,
    reason="nix-instantiate is not installed (Debian: apt-get install nix-bin)",
)


# ------------------------------------------------------------------ helpers


def _nix_files() -> list[Path]:
    """Every tracked or untracked (not ignored) .nix file in the repository."""
    if (ROOT / ".git").exists() and shutil.which("git"):
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", "*.nix"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode()
        files = {ROOT / name for name in listed.split("\0") if name}
    else:  # a source tree without git, e.g. the Nix build sandbox
        files = set()
        for directory, subdirs, names in os.walk(ROOT):
            subdirs[:] = [d for d in subdirs if d not in SKIP_DIRS and not d.startswith("result")]
            files.update(Path(directory, n) for n in names if n.endswith(".nix"))
    return sorted(f for f in files if f.is_file())  # ls-files also lists deleted files


def _run_nix(args: list[str]) -> subprocess.CompletedProcess[str]:
    assert NIX_INSTANTIATE is not None
    # --readonly-mode: evaluate without touching the Nix store or its database.
    return subprocess.run(
        [NIX_INSTANTIATE, "--readonly-mode", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NIX_PATH": ""},
    )


def _nix_string(value: str | Path) -> str:
    """A Nix string literal (JSON string syntax is valid Nix, bar `${`)."""
    return json.dumps(str(value)).replace("${", "\\${")


def _resolve_lib(value: str) -> Path | None:
    """The directory holding lib's default.nix, given a checkout or the lib dir."""
    path = Path(value).expanduser()
    for candidate in (path / "lib", path):
        if (candidate / "default.nix").is_file() and (candidate / "modules.nix").is_file():
            return candidate.resolve()
    return None


def _lib_dir() -> Path:
    value = os.environ.get("NIXPKGS_LIB")
    if NIX_INSTANTIATE is None:
        pytest.skip("nix-instantiate is not installed (Debian: apt-get install nix-bin)")
    if not value:
        pytest.skip(
            "NIXPKGS_LIB is not set: point it at a checkout of nix-community/nixpkgs.lib or of "
            "nixpkgs to evaluate the NixOS modules (see scripts/fetch-nixpkgs-lib)"
        )
    lib = _resolve_lib(value)
    if lib is None:
        pytest.fail(f"NIXPKGS_LIB={value} has no lib/default.nix and lib/modules.nix")
    probe = _run_nix(["--eval", "--json", "-E", f"(import {_nix_string(lib)}).version"])
    if probe.returncode != 0:
        if "requires Nix" in probe.stderr or "minimum" in probe.stderr.lower():
            pytest.skip(f"nixpkgs lib at {lib} cannot be evaluated by this Nix: {probe.stderr}")
        pytest.fail(f"cannot evaluate nixpkgs lib at {lib}:\n{probe.stderr}")
    return lib


# The stand-ins for nixpkgs and NixOS that the evaluation tests use. Options
# are declared as strictly as NixOS declares them, so a misspelt unit key or
# a wrongly typed value fails here as it would on a real system.
HARNESS = r"""
{ libDir, root }:
let
  lib = import libDir;
  inherit (lib) types mkOption;

  storePath =
    name: "/nix/store/${builtins.substring 0 32 (builtins.hashString "sha256" name)}-${name}";

  fakeDrv = name: {
    type = "derivation";
    inherit name;
    outPath = storePath name;
    drvPath = storePath "${name}.drv";
    override = args: fakeDrv "${name}-overridden" // { overrideArgs = builtins.attrNames args; };
  };

  mkPkgs = { system, tag }: {
    stdenv.hostPlatform.system = system;
    callPackage = path: args: fakeDrv "gridmate-${tag}";
    formats.toml = { }: {
      type = types.attrsOf types.anything;
      generate =
        name: value: storePath "${name}-${builtins.hashString "sha256" (builtins.toJSON value)}";
    };
  };

  # systemd's unit option values, as nixpkgs' systemd-lib types them.
  unitValue = types.oneOf [ types.bool types.int types.str types.path ];
  unitOption = types.either unitValue (types.listOf unitValue);

  serviceModule = {
    options = {
      description = mkOption { type = types.str; default = ""; };
      wantedBy = mkOption { type = types.listOf types.str; default = [ ]; };
      after = mkOption { type = types.listOf types.str; default = [ ]; };
      wants = mkOption { type = types.listOf types.str; default = [ ]; };
      requires = mkOption { type = types.listOf types.str; default = [ ]; };
      environment = mkOption {
        type = types.attrsOf (types.nullOr (types.oneOf [ types.str types.path types.package ]));
        default = { };
      };
      path = mkOption {
        type = types.listOf (types.either types.package types.str);
        default = [ ];
      };
      preStart = mkOption { type = types.lines; default = ""; };
      startLimitBurst = mkOption { type = types.int; };
      startLimitIntervalSec = mkOption { type = types.int; };
      unitConfig = mkOption { type = types.attrsOf unitOption; default = { }; };
      serviceConfig = mkOption { type = types.attrsOf unitOption; default = { }; };
    };
  };

  nixosStub = {
    options = {
      assertions = mkOption { type = types.listOf types.unspecified; default = [ ]; };
      warnings = mkOption { type = types.listOf types.str; default = [ ]; };
      systemd.services = mkOption {
        type = types.attrsOf (types.submodule serviceModule);
        default = { };
      };
    };
  };

  flakeOutputsFor = flakePkgs:
    let
      flake = import (root + "/flake.nix");
      self = flake.outputs {
        inherit self;
        nixpkgs = {
          inherit lib;
          legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" "riscv64-linux" ] (
            system: flakePkgs system
          );
        };
      } // { outPath = root; };
    in
    self;

  flake = flakeOutputsFor (system: mkPkgs { inherit system; tag = "flake-${system}"; });

  eval = { modules, system ? "x86_64-linux" }:
    let
      result = lib.evalModules {
        modules = [
          nixosStub
          { _module.args.pkgs = mkPkgs { inherit system; tag = "callpackage"; }; }
        ] ++ modules;
      };
    in
    result;

  gridmateLib = import (root + "/modules/lib.nix") { inherit lib; };
in
{
  inherit lib eval flake gridmateLib fakeDrv storePath mkPkgs;
  modules = root + "/modules";
}
"""


@pytest.fixture(scope="module")
def nix_eval(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    lib = _lib_dir()
    harness = tmp_path_factory.mktemp("nix") / "harness.nix"
    harness.write_text(HARNESS)

    def evaluate(body: str, *, expect_error: bool = False) -> Any:
        """Evaluate `body` with `h` bound to the harness; returns its JSON value."""
        expr = (
            f"let h = import {_nix_string(harness)} "
            f"{{ libDir = {_nix_string(lib)}; root = {_nix_string(ROOT)}; }}; "
            f"inherit (h) lib; in {body}"
        )
        result = _run_nix(["--eval", "--strict", "--json", "-E", expr])
        if expect_error:
            assert result.returncode != 0, f"expected an evaluation error, got {result.stdout}"
            return result.stderr
        assert result.returncode == 0, f"nix evaluation failed:\n{result.stderr}\n---\n{body}"
        return json.loads(result.stdout)

    yield evaluate


# ------------------------------------------------------------ always-on tier


def _lock() -> dict[str, Any]:
    path = ROOT / "flake.lock"
    if not path.exists():
        pytest.skip("flake.lock is not part of this source tree (e.g. the Nix build sandbox)")
    return json.loads(path.read_text())


def test_flake_lock_pins_one_nixpkgs_revision() -> None:
    lock = _lock()
    assert lock["version"] == 7
    assert lock["nodes"][lock["root"]]["inputs"] == {"nixpkgs": "nixpkgs"}
    node = lock["nodes"]["nixpkgs"]
    locked, original = node["locked"], node["original"]
    assert original == {"owner": "NixOS", "ref": "nixos-25.11", "repo": "nixpkgs", "type": "github"}
    assert locked["type"] == "github" and locked["owner"] == "NixOS" and locked["repo"] == "nixpkgs"
    assert re.fullmatch(r"[0-9a-f]{40}", locked["rev"])
    assert re.fullmatch(r"sha256-[A-Za-z0-9+/]{43}=", locked["narHash"])
    assert isinstance(locked["lastModified"], int) and locked["lastModified"] > 1_700_000_000


def test_pin_provenance_is_documented() -> None:
    locked = _lock()["nodes"]["nixpkgs"]["locked"]
    doc = ROOT / "docs" / "nixpkgs-pin.md"
    assert doc.exists(), "docs/nixpkgs-pin.md must say where the flake.lock pin comes from"
    text = doc.read_text()
    for key in ("rev", "narHash", "lastModified"):
        assert str(locked[key]) in text, f"docs/nixpkgs-pin.md does not mention the locked {key}"


def test_flake_inputs_match_the_lock() -> None:
    flake = ROOT / "flake.nix"
    if not flake.exists():
        pytest.skip("flake.nix is not part of this source tree")
    text = flake.read_text()
    assert 'inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";' in text
    assert "flake-utils" not in text


# ------------------------------------------------------------------ parsing


@needs_nix
def test_every_nix_file_parses() -> None:
    files = _nix_files()
    if not files:
        pytest.skip("no .nix files in this source tree")
    failures = []
    for path in files:
        result = _run_nix(["--parse", str(path)])
        if result.returncode != 0:
            failures.append(f"{path.relative_to(ROOT)}:\n{result.stderr.strip()}")
    assert not failures, "these .nix files do not parse:\n\n" + "\n\n".join(failures)


def test_the_expected_nix_files_exist() -> None:
    if not (ROOT / "flake.nix").exists():
        pytest.skip("the Nix files are not part of this source tree")
    names = {str(p.relative_to(ROOT)) for p in _nix_files()}
    expected = {
        "flake.nix",
        "nix/package.nix",
        "nix/package-default.nix",
        "nix/tests/default.nix",
        "modules/default.nix",
        "modules/common.nix",
        "modules/lib.nix",
        "modules/vehicles.nix",
        "modules/energy.nix",
        "modules/report.nix",
    }
    assert expected <= names, f"missing: {sorted(expected - names)}"


# -------------------------------------------------------- evaluation tier


COMPONENTS = ("vehicles", "energy", "report")


def test_modules_evaluate_with_nothing_enabled(nix_eval: Any) -> None:
    got = nix_eval(
        """
        let c = (h.eval { modules = [ h.modules ]; }).config; in {
          services = builtins.attrNames c.systemd.services;
          inherit (c) warnings;
          enabled = lib.mapAttrs (_: v: v.enable) (removeAttrs c.services.gridmate [ "package" ]);
        }
        """
    )
    assert got == {"services": [], "warnings": [], "enabled": dict.fromkeys(COMPONENTS, False)}


def test_enabling_a_component_that_has_not_landed_warns(nix_eval: Any) -> None:
    for component in COMPONENTS:
        got = nix_eval(
            f"""
            let
              enable = {{ services.gridmate.{component}.enable = true; }};
              c = (h.eval {{ modules = [ h.modules enable ]; }}).config;
            in {{ inherit (c) warnings; services = builtins.attrNames c.systemd.services; }}
            """
        )
        assert got["services"] == []
        assert len(got["warnings"]) == 1
        assert f"services.gridmate.{component}.enable" in got["warnings"][0]


def test_package_defaults_to_the_flake_package_without_an_overlay(nix_eval: Any) -> None:
    got = nix_eval(
        """
        let
          pkgName = modules: system: lib.mapAttrs (_: v: v.package.name)
            (removeAttrs (h.eval { inherit modules system; }).config.services.gridmate
              [ "package" ]);
          custom = h.fakeDrv "gridmate-custom";
        in {
          flake = pkgName [ h.flake.nixosModules.default ] "x86_64-linux";
          flakeArm = pkgName [ h.flake.nixosModules.default ] "aarch64-linux";
          # a system the flake does not build for: the plain callPackage default
          flakeOther = pkgName [ h.flake.nixosModules.default ] "riscv64-linux";
          plain = pkgName [ h.modules ] "x86_64-linux";
          user = pkgName [
            h.flake.nixosModules.default
            { services.gridmate.package = custom; }
          ] "x86_64-linux";
          one = pkgName [
            h.flake.nixosModules.default
            { services.gridmate.vehicles.package = custom; }
          ] "x86_64-linux";
          # several of the flake's modules together load package-default.nix once
          together = pkgName [
            h.flake.nixosModules.default
            h.flake.nixosModules.vehicles
            h.flake.nixosModules.energy
            h.flake.nixosModules.report
          ] "x86_64-linux";
          single = builtins.attrNames
            (h.eval { modules = [ h.flake.nixosModules.report ]; }).config.services.gridmate;
        }
        """
    )
    flake = "gridmate-flake-x86_64-linux"
    assert got["flake"] == dict.fromkeys(COMPONENTS, flake)
    assert got["flakeArm"] == dict.fromkeys(COMPONENTS, "gridmate-flake-aarch64-linux")
    assert got["flakeOther"] == dict.fromkeys(COMPONENTS, "gridmate-callpackage")
    assert got["plain"] == dict.fromkeys(COMPONENTS, "gridmate-callpackage")
    assert got["user"] == dict.fromkeys(COMPONENTS, "gridmate-custom")
    assert got["one"] == {"vehicles": "gridmate-custom", "energy": flake, "report": flake}
    assert got["together"] == dict.fromkeys(COMPONENTS, flake)
    assert got["single"] == ["package", "report"]


def test_options_are_documented(nix_eval: Any) -> None:
    got = nix_eval(
        """
        let
          opts = (h.eval { modules = [ h.modules ]; }).options.services.gridmate;
          describe = o: { description = o.description or null; hasDefaultText = o ? defaultText; };
        in {
          package = describe opts.package;
        } // lib.genAttrs [ "vehicles" "energy" "report" ] (c: {
          enable = describe opts.${c}.enable;
          package = describe opts.${c}.package;
        })
        """
    )
    assert got["package"]["hasDefaultText"] and "overlays.default" in got["package"]["description"]
    for component in COMPONENTS:
        assert f"gridmate-{component}.service" in got[component]["enable"]["description"]
        assert got[component]["package"]["hasDefaultText"]
        assert "services.gridmate.package" in got[component]["package"]["description"]


# A component module as the component owners will write it, to check the
# unit that modules/lib.nix's mkService produces.
EXAMPLE_COMPONENT = """
  ({ config, lib, pkgs, ... }:
  let
    g = import (h.modules + "/lib.nix") { inherit lib; };
    cfg = config.services.gridmate.vehicles;
  in {
    options.services.gridmate.vehicles.settings = lib.mkOption {
      type = (g.settingsFormat pkgs).type; default = { };
    };
    options.services.gridmate.vehicles.mqttPasswordFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path; default = null;
    };
    config.systemd.services.gridmate-vehicles = g.mkService ({
      component = "vehicles";
      description = "gridmate vehicles";
      inherit (cfg) package;
      settingsFile = g.mkSettingsFile pkgs "vehicles" cfg.settings;
      credentials = {
        mqtt_password = cfg.mqttPasswordFile;
        teslamate_password = null;
        fleet_key = "/run/secrets/fleet key.pem";
      };
    } // EXTRA);
  })
"""


def _unit(nix_eval: Any, extra: str = "{ }", config: str = "{ }") -> dict[str, Any]:
    component = EXAMPLE_COMPONENT.replace("EXTRA", extra)
    return nix_eval(
        f"""
        let c = (h.eval {{ modules = [
          h.flake.nixosModules.default
          {component}
          {{ services.gridmate.vehicles.mqttPasswordFile = "/run/secrets/mqtt"; }}
          {config}
        ]; }}).config;
        in c.systemd.services.gridmate-vehicles // {{
          settingsFile = h.gridmateLib.mkSettingsFile
            (h.mkPkgs {{ system = "x86_64-linux"; tag = "x"; }})
            "vehicles"
            c.services.gridmate.vehicles.settings;
          packagePath = c.services.gridmate.vehicles.package.outPath;
        }}
        """
    )


def test_service_unit_shape(nix_eval: Any) -> None:
    unit = _unit(nix_eval, config='{ services.gridmate.vehicles.settings.mqtt.host = "broker"; }')
    sc = unit["serviceConfig"]
    assert unit["wantedBy"] == ["multi-user.target"]
    assert "network-online.target" in unit["after"] and "network-online.target" in unit["wants"]
    assert unit["startLimitBurst"] == 5 and unit["startLimitIntervalSec"] == 300
    assert {k: sc[k] for k in ("Type", "NotifyAccess", "Restart", "DynamicUser")} == {
        "Type": "notify",
        "NotifyAccess": "main",
        "Restart": "on-failure",
        "DynamicUser": True,
    }
    assert sc["WatchdogSec"] == "30" and sc["RestartSec"] == 5
    assert sc["RestartPreventExitStatus"] == 2  # configuration errors are not retried
    assert (
        sc["StateDirectory"]
        == sc["RuntimeDirectory"]
        == sc["CacheDirectory"]
        == "gridmate-vehicles"
    )
    assert sc["ExecStart"] == (
        f"{unit['packagePath']}/bin/gridmate vehicles run --config {unit['settingsFile']}"
    )
    assert "gridmate-flake-x86_64-linux" in unit["packagePath"]
    assert unit["settingsFile"].endswith(".toml-" + unit["settingsFile"].rsplit("-", 1)[1])
    # null credentials are dropped; names sorted; paths kept verbatim
    assert sc["LoadCredential"] == [
        "fleet_key:/run/secrets/fleet key.pem",
        "mqtt_password:/run/secrets/mqtt",
    ]


def test_settings_change_the_rendered_file(nix_eval: Any) -> None:
    a = _unit(nix_eval, config='{ services.gridmate.vehicles.settings.mqtt.host = "a"; }')
    b = _unit(nix_eval, config='{ services.gridmate.vehicles.settings.mqtt.host = "b"; }')
    assert a["settingsFile"] != b["settingsFile"]
    assert a["serviceConfig"]["ExecStart"] != b["serviceConfig"]["ExecStart"]


def test_service_hardening(nix_eval: Any) -> None:
    sc = _unit(nix_eval)["serviceConfig"]
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": True,
        "PrivateTmp": True,
        "PrivateDevices": True,
        "ProtectKernelTunables": True,
        "ProtectKernelModules": True,
        "ProtectKernelLogs": True,
        "ProtectControlGroups": True,
        "ProtectClock": True,
        "ProtectHostname": True,
        "ProtectProc": "invisible",
        "ProcSubset": "all",
        "RestrictNamespaces": True,
        "RestrictRealtime": True,
        "RestrictSUIDSGID": True,
        "LockPersonality": True,
        "MemoryDenyWriteExecute": True,
        "NoNewPrivileges": True,
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "SystemCallArchitectures": "native",
        "SystemCallFilter": ["@system-service", "~@privileged", "~@resources"],
        "RestrictAddressFamilies": ["AF_UNIX", "AF_INET", "AF_INET6"],
        "UMask": "0077",
        "DevicePolicy": "closed",
        "PrivateUsers": True,
        "RemoveIPC": True,
    }
    assert {k: sc.get(k) for k in expected} == expected
    assert "DeviceAllow" not in sc and "ReadWritePaths" not in sc


def test_hardening_and_unit_can_be_adjusted(nix_eval: Any) -> None:
    unit = _unit(
        nix_eval,
        extra="""{
          hardening = {
            deviceAllow = [ "char-ttyUSB rw" ];
            memoryDenyWriteExecute = false;
            procSubset = "pid";
            addressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" "AF_NETLINK" ];
          };
          watchdogSec = "1min";
          extraArgs = [ "--debug" "100%" "a b" ];
          after = [ "postgresql.service" ];
          environment.TZ = "UTC";
          serviceConfig.RestartSec = 30;
        }""",
    )
    sc = unit["serviceConfig"]
    assert sc["DeviceAllow"] == ["char-ttyUSB rw"] and sc["PrivateDevices"] is False
    assert sc["MemoryDenyWriteExecute"] is False and sc["ProcSubset"] == "pid"
    assert "AF_NETLINK" in sc["RestrictAddressFamilies"]
    assert sc["WatchdogSec"] == "1min" and sc["RestartSec"] == 30
    assert sc["ExecStart"].endswith(' --debug "100%%" "a b"')
    assert unit["after"] == ["network-online.target", "postgresql.service"]
    assert unit["environment"]["TZ"] == "UTC" and "MPLCONFIGDIR" in unit["environment"]


def test_credentials_are_validated(nix_eval: Any) -> None:
    err = nix_eval(
        'h.gridmateLib.loadCredentials { mqtt_password = "secrets/mqtt"; }', expect_error=True
    )
    assert "must be an absolute path" in err
    err = nix_eval('h.gridmateLib.loadCredentials { "a/b" = "/run/x"; }', expect_error=True)
    assert "credential name 'a/b'" in err
    # a path literal is passed by name, not copied into the world-readable store
    got = nix_eval("h.gridmateLib.loadCredentials { k = /run/secrets/k; }")
    assert got == ["k:/run/secrets/k"]


def test_exec_arguments_are_quoted_for_systemd(nix_eval: Any) -> None:
    got = nix_eval(
        r"map h.gridmateLib.escapeExecArg "
        r'[ "plain" "/nix/store/x-y/bin/gridmate" "a b" "50%" "$HOME" 3 "x\"y" ]'
    )
    assert got == [
        "plain",
        "/nix/store/x-y/bin/gridmate",
        '"a b"',
        '"50%%"',
        '"$$HOME"',
        "3",
        '"x\\"y"',
    ]


# nix/package.nix against a stand-in python3Packages: every attribute it
# uses must be in this list (each one checked to exist in nixpkgs as
# pkgs/development/python-modules/<name>), anything else fails.
RUNTIME_DEPENDENCIES = [
    "aiohttp",
    "aiokafka",
    "aiomqtt",
    "aiosmtpd",
    "aiosmtplib",
    "asyncpg",
    "cryptography",
    "holidays",
    "httpx",
    "matplotlib",
    "prometheus-client",
    "protobuf",
    "pydantic",
    "pydantic-settings",
    "sdnotify",
]
CHECK_DEPENDENCIES = ["hypothesis", "pytest", "pytest-asyncio"]
PYTHON_PACKAGES = [*RUNTIME_DEPENDENCIES, *CHECK_DEPENDENCIES, "hatchling"]


def _package(nix_eval: Any, tansu: bool) -> dict[str, Any]:
    names = " ".join(_nix_string(n) for n in PYTHON_PACKAGES)
    tansu_arg = 'tansu = h.fakeDrv "tansu";' if tansu else ""
    return nix_eval(
        f"""
        let
          py = lib.genAttrs [ {names} ] h.fakeDrv // {{
            python.sitePackages = "lib/python3.13/site-packages";
            buildPythonApplication = attrs: attrs;
          }};
          p = import (h.modules + "/../nix/package.nix") {{
            inherit lib;
            python3Packages = py;
            protobuf = h.fakeDrv "protobuf-cpp";
            mosquitto = h.fakeDrv "mosquitto";
            {tansu_arg}
          }};
          names = map (d: d.name);
        in {{
          inherit (p) pname version pyproject preBuild checkPhase makeWrapperArgs;
          build-system = names p.build-system;
          dependencies = names p.dependencies;
          nativeBuildInputs = names p.nativeBuildInputs;
          nativeCheckInputs = names p.nativeCheckInputs;
          meta = {{
            inherit (p.meta) mainProgram;
            mit = p.meta.license == lib.licenses.mit;
            linux = p.meta.platforms == lib.platforms.linux;
          }};
          demoTools = names p.passthru.demoTools;
        }}
        """
    )


def test_package_definition(nix_eval: Any) -> None:
    pkg = _package(nix_eval, tansu=True)
    version = re.search(r'__version__ = "([^"]+)"', (ROOT / "src/gridmate/__init__.py").read_text())
    assert version is not None
    assert (pkg["pname"], pkg["version"], pkg["pyproject"]) == ("gridmate", version.group(1), True)
    assert pkg["build-system"] == ["hatchling"]
    assert sorted(pkg["dependencies"]) == RUNTIME_DEPENDENCIES
    assert sorted(pkg["nativeCheckInputs"]) == CHECK_DEPENDENCIES
    assert pkg["nativeBuildInputs"] == ["protobuf-cpp"]
    assert 'scripts/gen-proto --protoc "$(command -v protoc)"' in pkg["preBuild"]
    assert 'pytest -m "not services and not netns"' in pkg["checkPhase"]
    assert pkg["meta"] == {"mainProgram": "gridmate", "mit": True, "linux": True}
    assert pkg["demoTools"] == ["mosquitto", "tansu"]
    flag, var, sep, path = pkg["makeWrapperArgs"]
    assert (flag, var, sep) == ("--suffix", "PATH", ":")
    assert "mosquitto/bin" in path and "tansu/bin" in path


def test_package_without_tansu(nix_eval: Any) -> None:
    pkg = _package(nix_eval, tansu=False)
    assert pkg["demoTools"] == ["mosquitto"]
    assert "tansu" not in pkg["makeWrapperArgs"][3]


def test_package_dependencies_match_pyproject(nix_eval: Any) -> None:
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = {
        re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0].lower()
        for d in pyproject["project"]["dependencies"]
    }
    pkg = _package(nix_eval, tansu=False)
    # nixpkgs names Python packages by their normalised PyPI name
    assert {n.replace("_", "-") for n in wanted} == set(pkg["dependencies"])


def test_flake_outputs(nix_eval: Any) -> None:
    got = nix_eval(
        """
        let f = h.flake; in {
          outputs = builtins.attrNames (removeAttrs f [ "outPath" ]);
          systems = lib.mapAttrs (_: v: builtins.attrNames v) {
            inherit (f) packages checks devShells formatter apps;
          };
          packages = builtins.attrNames f.packages.x86_64-linux;
          defaultPackage = f.packages.x86_64-linux.default.name;
          checksX86 = builtins.attrNames f.checks.x86_64-linux;
          checksArm = builtins.attrNames f.checks.aarch64-linux;
          modules = builtins.attrNames f.nixosModules;
          app = f.apps.x86_64-linux.default.type;
        }
        """
    )
    assert got["outputs"] == [
        "apps",
        "checks",
        "devShells",
        "formatter",
        "nixosModules",
        "overlays",
        "packages",
    ]
    for output, systems in got["systems"].items():
        assert systems == ["aarch64-linux", "x86_64-linux"], output
    assert got["packages"] == ["default", "gridmate"]
    assert got["defaultPackage"] == "gridmate-flake-x86_64-linux"
    assert {"package", "formatting"} <= set(got["checksX86"])
    assert got["checksArm"] == ["formatting", "package"]  # no VM tests on aarch64
    assert got["modules"] == ["default", "energy", "report", "vehicles"]
    assert got["app"] == "app"


def test_overlay(nix_eval: Any) -> None:
    got = nix_eval(
        """
        let
          prev = h.mkPkgs { system = "x86_64-linux"; tag = "overlay"; }
            // { pythonPackagesExtensions = [ ]; };
          final = prev // h.flake.overlays.default final prev;
          ext = builtins.head final.pythonPackagesExtensions;
          py = ext { toPythonModule = d: d // { isPythonModule = true; }; } { };
        in {
          gridmate = final.gridmate.name;
          extensions = builtins.length final.pythonPackagesExtensions;
          pyGridmate = { inherit (py.gridmate) name isPythonModule overrideArgs; };
        }
        """
    )
    assert got == {
        "gridmate": "gridmate-overlay",
        "extensions": 1,
        "pyGridmate": {
            "name": "gridmate-overlay-overridden",
            "isPythonModule": True,
            "overrideArgs": ["python3Packages"],
        },
    }
