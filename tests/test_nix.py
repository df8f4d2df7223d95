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
import urllib.parse
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
    if not (ROOT / "modules").is_dir() or not (ROOT / "flake.nix").is_file():
        pytest.skip("the Nix files are not part of this source tree (e.g. the Nix build)")
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


HARNESS = ROOT / "tests" / "nixos" / "harness.nix"
TIERS = ("stand-in", "upstream")


def _upstream_tree() -> Path | None:
    """The nixpkgs tree of the upstream tier: $GRIDMATE_NIXPKGS (a nixpkgs checkout, or a
    partial tree of UPSTREAM_FILES at their nixpkgs paths), else
    ~/.cache/gridmate/nixpkgs-subset when it exists (docs/nixos.md, How this was checked)."""
    value = os.environ.get("GRIDMATE_NIXPKGS")
    if value:
        return Path(value).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    default = cache / "gridmate" / "nixpkgs-subset"
    return default if default.is_dir() else None


UPSTREAM_FILES = (
    "nixos/modules/misc/assertions.nix",
    "nixos/lib/utils.nix",
    "nixos/lib/systemd-lib.nix",
    "nixos/lib/systemd-unit-options.nix",
    "nixos/lib/systemd-types.nix",
    "pkgs/pkgs-lib/formats.nix",
    "nixos/modules/services/networking/keepalived/default.nix",
    "nixos/modules/services/networking/firewall.nix",
    "nixos/modules/services/networking/firewall-iptables.nix",
    "nixos/modules/services/networking/firewall-nftables.nix",
)


# Service modules gridmate sets options of (tests/nixos/harness.nix `serviceFiles`).
# The upstream tier loads each whose file the tree has, in place of its stand-in;
# the others stay stand-ins there, and the comparison tests skip them with a reason.
SERVICE_FILES = {
    "oci-containers": "nixos/modules/virtualisation/oci-containers.nix",
    "mosquitto": "nixos/modules/services/networking/mosquitto.nix",
    "postgresql": "nixos/modules/services/databases/postgresql.nix",
    "grafana": "nixos/modules/services/monitoring/grafana.nix",
    "prometheus": "nixos/modules/services/monitoring/prometheus/default.nix",
    "caddy": "nixos/modules/services/web-servers/caddy/default.nix",
}


def _real_services(tree: Path) -> dict[str, str | None]:
    """Service name -> None when the upstream tier loads its real file, else why not."""
    found: dict[str, str | None] = {}
    for name, path in SERVICE_FILES.items():
        file = tree / path
        if not file.is_file():
            found[name] = f"{tree} has no {path}"
        elif name == "postgresql" and "postgresql-setup" not in file.read_text():
            # gridmate's modules rely on the nixos-25.11 split of the ensure steps
            # into postgresql-setup.service and postgresql.target.
            found[name] = f"{path} in {tree} predates postgresql-setup.service (nixos-25.11)"
        else:
            found[name] = None
    return found


def _tree_for(tier: str) -> Path | None:
    if tier == "stand-in":
        return None
    tree = _upstream_tree()
    if tree is None:
        pytest.skip(
            "no nixpkgs tree for the upstream tier: set GRIDMATE_NIXPKGS to a nixpkgs "
            "checkout, or to a partial tree of the files docs/nixos.md lists"
        )
    missing = [name for name in UPSTREAM_FILES if not (tree / name).is_file()]
    if missing:
        pytest.skip(f"the nixpkgs tree {tree} lacks {', '.join(missing)}")
    return tree.resolve()


def _evaluator(lib: Path, tree: Path | None) -> Any:
    nixpkgs = "null" if tree is None else _nix_string(tree)
    real = [] if tree is None else [n for n, why in _real_services(tree).items() if why is None]
    real_services = "[ " + " ".join(_nix_string(n) for n in real) + " ]"

    def evaluate(body: str, *, expect_error: bool = False) -> Any:
        """Evaluate `body` with `h` bound to the harness; returns its JSON value."""
        expr = (
            f"let h = import {_nix_string(HARNESS)} "
            f"{{ libDir = {_nix_string(lib)}; root = {_nix_string(ROOT)}; nixpkgs = {nixpkgs}; "
            f"realServices = {real_services}; }}; "
            f"inherit (h) lib; in {body}"
        )
        result = _run_nix(["--eval", "--strict", "--json", "-E", expr])
        if expect_error:
            assert result.returncode != 0, f"expected an evaluation error, got {result.stdout}"
            return result.stderr
        assert result.returncode == 0, f"nix evaluation failed:\n{result.stderr}\n---\n{body}"
        return json.loads(result.stdout)

    return evaluate


@pytest.fixture(scope="module", params=TIERS)
def nix_eval(request: pytest.FixtureRequest) -> Any:
    """An evaluator over the stand-ins, then over the real upstream NixOS files."""
    lib = _lib_dir()
    return _evaluator(lib, _tree_for(request.param))


@pytest.fixture(scope="module")
def stand_in_eval() -> Any:
    return _evaluator(_lib_dir(), None)


@pytest.fixture(scope="module")
def upstream_eval() -> Any:
    return _evaluator(_lib_dir(), _tree_for("upstream"))


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
        "nix/tests/vehicles.nix",
        "nix/tests/energy.nix",
        "modules/default.nix",
        "modules/common.nix",
        "modules/lib.nix",
        "modules/vehicles.nix",
        "modules/energy.nix",
        "modules/report.nix",
        "modules/backup.nix",
        "nix/tests/backup.nix",
        "modules/teslamate.nix",
        "modules/monitoring.nix",
    }
    assert expected <= names, f"missing: {sorted(expected - names)}"


# -------------------------------------------------------- evaluation tier


COMPONENTS = ("vehicles", "energy", "report")
# Every module under services.gridmate with its own enable and package: the
# components with a unit of their own, and the backup module (hooks and oneshots).
# gridmate's modules with a `package` option of their own, and all of them.
PACKAGED = (*COMPONENTS, "backup")
MODULES = (*PACKAGED, "teslamate")


def test_modules_evaluate_with_nothing_enabled(nix_eval: Any) -> None:
    got = nix_eval(
        """
        let c = (h.eval { modules = [ h.modules ]; }).config; in {
          services = builtins.filter (lib.hasPrefix "gridmate")
            (builtins.attrNames c.systemd.services);
          inherit (c) warnings;
          enabled = lib.mapAttrs (_: v: v.enable)
            (removeAttrs c.services.gridmate [ "package" "prometheus" "monitoring" ]);
          containers = c.virtualisation.oci-containers.containers;
          listeners = c.services.mosquitto.listeners;
          ruleFiles = c.services.prometheus.ruleFiles;
        }
        """
    )
    assert got == {
        "services": [],
        "warnings": [],
        "enabled": dict.fromkeys(MODULES, False),
        "containers": {},
        "listeners": [],
        "ruleFiles": [],
    }


def test_package_defaults_to_the_flake_package_without_an_overlay(nix_eval: Any) -> None:
    got = nix_eval(
        """
        let
          pkgName = modules: system: lib.mapAttrs (_: v: v.package.name)
            (lib.filterAttrs (n: _: builtins.elem n [ "vehicles" "energy" "report" "backup" ])
              (h.eval { inherit modules system; }).config.services.gridmate);
          custom = h.package "gridmate-custom";
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
            h.flake.nixosModules.backup
          ] "x86_64-linux";
          single = builtins.attrNames
            (h.eval { modules = [ h.flake.nixosModules.report ]; }).config.services.gridmate;
        }
        """
    )
    flake = "gridmate-flake-x86_64-linux"
    assert got["flake"] == dict.fromkeys(PACKAGED, flake)
    assert got["flakeArm"] == dict.fromkeys(PACKAGED, "gridmate-flake-aarch64-linux")
    assert got["flakeOther"] == dict.fromkeys(PACKAGED, "gridmate-callpackage")
    assert got["plain"] == dict.fromkeys(PACKAGED, "gridmate-callpackage")
    assert got["user"] == dict.fromkeys(PACKAGED, "gridmate-custom")
    assert got["one"] == {
        "vehicles": "gridmate-custom",
        "energy": flake,
        "report": flake,
        "backup": flake,
    }
    assert got["together"] == dict.fromkeys(PACKAGED, flake)
    assert got["single"] == ["package", "prometheus", "report"]


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


# A minimal component module written directly against modules/lib.nix, to
# check the unit shape mkService produces independently of the real modules.
EXAMPLE_COMPONENT = """
  ({ config, lib, pkgs, ... }:
  let
    g = import (h.modules + "/lib.nix") { inherit lib; };
    cfg = config.services.gridmate.example;
  in {
    options.services.gridmate.example.package = g.mkPackageOption config "example";
    options.services.gridmate.example.settings = lib.mkOption {
      type = (g.settingsFormat pkgs).type; default = { };
    };
    options.services.gridmate.example.mqttPasswordFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path; default = null;
    };
    config.systemd.services.gridmate-example = g.mkService ({
      component = "example";
      description = "gridmate example";
      inherit (cfg) package;
      settingsFile = g.mkSettingsFile pkgs "example" cfg.settings;
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
          {{ services.gridmate.example.mqttPasswordFile = "/run/secrets/mqtt"; }}
          {config}
        ]; }}).config;
        in c.systemd.services.gridmate-example // {{
          settingsFile = h.gridmateLib.mkSettingsFile
            (h.mkPkgs {{ system = "x86_64-linux"; tag = "x"; }})
            "example"
            c.services.gridmate.example.settings;
          packagePath = c.services.gridmate.example.package.outPath;
        }}
        """
    )


def test_service_unit_shape(nix_eval: Any) -> None:
    unit = _unit(nix_eval, config='{ services.gridmate.example.settings.mqtt.host = "broker"; }')
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
        sc["StateDirectory"] == sc["RuntimeDirectory"] == sc["CacheDirectory"] == "gridmate-example"
    )
    assert sc["ExecStart"] == (
        f"{unit['packagePath']}/bin/gridmate example run --config {unit['settingsFile']}"
    )
    assert "gridmate-flake-x86_64-linux" in unit["packagePath"]
    assert re.fullmatch(r"/nix/store/[a-z0-9]{32}-gridmate-example\.toml", unit["settingsFile"])
    # null credentials are dropped; names sorted; paths kept verbatim
    assert sc["LoadCredential"] == [
        "fleet_key:/run/secrets/fleet key.pem",
        "mqtt_password:/run/secrets/mqtt",
    ]


def test_settings_change_the_rendered_file(nix_eval: Any) -> None:
    a = _unit(nix_eval, config='{ services.gridmate.example.settings.mqtt.host = "a"; }')
    b = _unit(nix_eval, config='{ services.gridmate.example.settings.mqtt.host = "b"; }')
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


# ------------------------------------------------- the component modules

# A host with every component enabled and valid, as docs/nixos.md shows it.
HOST = """
  {
    services.gridmate.vehicles = {
      enable = true;
      settings.kafka.namespace = "tesla";
      settings.kafka.bootstrap_servers = "kafka.lan:9092";
      settings.mqtt.host = "ha.lan";
      settings.mqtt.username = "gridmate";
      mqttPasswordFile = "/run/secrets/mqtt";
    };
    services.gridmate.energy = {
      enable = true;
      settings.tariff.preset = "original";
      settings.tariff.time_zone = "America/Phoenix";
      settings.tesla.token_source = "teslamate";
      teslamateEncryptionKeyFile = "/run/secrets/teslamate-key";
      teslamateDbPasswordFile = "/run/secrets/teslamate-db";
    };
    services.gridmate.report.enable = true;
  }
"""


def _host(nix_eval: Any, *configs: str, body: str = "c") -> Any:
    """Evaluate the flake's modules with HOST and `configs`; `body` sees `c` (config)."""
    modules = " ".join(f"({m})" for m in (HOST, *configs))
    return nix_eval(
        f"""
        let
          r = h.eval {{ modules = [ h.flake.nixosModules.default {modules} ]; }};
          c = r.config;
          failed = map (a: a.message) (builtins.filter (a: !a.assertion) c.assertions);
        in {body}
        """
    )


def _failed(nix_eval: Any, *configs: str) -> list[str]:
    return _host(nix_eval, *configs, body="failed")


def test_the_documented_host_evaluates_cleanly(nix_eval: Any) -> None:
    got = _host(
        nix_eval,
        body="""{
          inherit failed;
          inherit (c) warnings;
          services = builtins.filter (lib.hasPrefix "gridmate")
            (builtins.attrNames c.systemd.services);
          timers = builtins.attrNames c.systemd.timers;
        }""",
    )
    assert got == {
        "failed": [],
        "warnings": [],
        "services": ["gridmate-energy", "gridmate-report", "gridmate-vehicles"],
        "timers": ["gridmate-report"],
    }


def test_daemon_units(nix_eval: Any) -> None:
    units = _host(
        nix_eval,
        body="""{
          inherit (c.systemd.services) gridmate-vehicles gridmate-energy;
          pkg = c.services.gridmate.package.outPath;
        }""",
    )
    for component in ("vehicles", "energy"):
        unit = units[f"gridmate-{component}"]
        sc = unit["serviceConfig"]
        assert unit["wantedBy"] == ["multi-user.target"]
        assert (sc["Type"], sc["NotifyAccess"], sc["Restart"]) == ("notify", "main", "on-failure")
        assert sc["WatchdogSec"] == "30" and sc["RestartPreventExitStatus"] == 2
        assert sc["DynamicUser"] is True and sc["User"] == f"gridmate-{component}"
        assert sc["StateDirectory"] == sc["RuntimeDirectory"] == f"gridmate-{component}"
        argv = sc["ExecStart"].split(" ")
        assert argv[:4] == [f"{units['pkg']}/bin/gridmate", component, "run", "--config"]
        assert re.fullmatch(rf"/nix/store/\S+-gridmate-{component}\.toml\S*", argv[4])
        assert sc["UMask"] == "0077" and sc["CapabilityBoundingSet"] == ""
        assert sc["ProtectSystem"] == "strict" and sc["PrivateTmp"] is True
        assert sc["RestrictAddressFamilies"] == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert units["gridmate-vehicles"]["serviceConfig"]["LoadCredential"] == [
        "mqtt_password:/run/secrets/mqtt"
    ]
    assert units["gridmate-energy"]["serviceConfig"]["LoadCredential"] == [
        "teslamate_db_password:/run/secrets/teslamate-db",
        "teslamate_encryption_key:/run/secrets/teslamate-key",
    ]


def test_report_is_a_oneshot_on_a_persistent_timer(nix_eval: Any) -> None:
    got = _host(
        nix_eval,
        body="""{
          unit = c.systemd.services.gridmate-report;
          timer = { inherit (c.systemd.timers.gridmate-report) wantedBy timerConfig; };
          timerText = (h.units r)."gridmate-report.timer".text;
          settings = h.gridmateLib.dropNulls c.services.gridmate.report.settings;
        }""",
    )
    unit, timer, settings = got["unit"], got["timer"], got["settings"]
    assert "[Timer]\nOnCalendar=*-*-* 00:15:00\nPersistent=true\n" in got["timerText"]
    assert "[Install]\nWantedBy=timers.target\n" in got["timerText"]
    sc = unit["serviceConfig"]
    assert sc["Type"] == "oneshot" and unit["wantedBy"] == []
    for daemon_only in ("WatchdogSec", "NotifyAccess", "Restart", "RestartSec"):
        assert daemon_only not in sc
    assert " report daily --config " in sc["ExecStart"]
    assert timer["wantedBy"] == ["timers.target"]
    assert timer["timerConfig"]["OnCalendar"] == "*-*-* 00:15:00"
    assert timer["timerConfig"]["Persistent"] is True
    # shares the energy service's transient user and mounts its state directory
    assert sc["DynamicUser"] is True
    assert sc["User"] == sc["Group"] == "gridmate-energy"
    assert sc["StateDirectory"] == "gridmate-report gridmate-energy"
    assert sc["WorkingDirectory"] == "/var/lib/gridmate-report"
    assert settings["state_directory"] == "/var/lib/gridmate-report"
    assert settings["energy_state_directory"] == "/var/lib/gridmate-energy"
    assert settings["time_zone"] == "America/Phoenix"  # the energy tariff's
    assert "gridmate-energy.service" in unit["after"]
    assert sc["ProtectSystem"] == "strict" and sc["UMask"] == "0077"


def test_report_without_local_energy(nix_eval: Any) -> None:
    no_energy = "{ services.gridmate.energy.enable = lib.mkForce false; }"
    failed = _failed(nix_eval, no_energy)
    assert len(failed) == 1 and "settings.energy_state_directory" in failed[0]
    got = _host(
        nix_eval,
        no_energy,
        '{ services.gridmate.report.settings.energy_state_directory = "/srv/energy"; }',
        body="{ inherit failed; sc = c.systemd.services.gridmate-report.serviceConfig; }",
    )
    assert got["failed"] == []
    assert got["sc"]["User"] == "gridmate-report"
    assert got["sc"]["StateDirectory"] == "gridmate-report"


def test_report_timer_and_time_zone_follow_the_configuration(nix_eval: Any) -> None:
    got = _host(
        nix_eval,
        """{
          services.gridmate.report.onCalendar = "*-*-* 00:30:00 America/Phoenix";
          services.gridmate.energy.settings.tariff.time_zone = lib.mkForce "America/Denver";
        }""",
        body="""{
          calendar = c.systemd.timers.gridmate-report.timerConfig.OnCalendar;
          zone = c.services.gridmate.report.settings.time_zone;
        }""",
    )
    assert got == {"calendar": "*-*-* 00:30:00 America/Phoenix", "zone": "America/Denver"}


def test_ordering_after_local_services(nix_eval: Any) -> None:
    body = """lib.mapAttrs (_: u: { inherit (u) after wants; }) {
      inherit (c.systemd.services) gridmate-vehicles gridmate-energy gridmate-report;
    }"""
    remote = _host(nix_eval, body=body)
    for unit in ("gridmate-vehicles", "gridmate-energy"):
        assert remote[unit] == {
            "after": ["network-online.target"],
            "wants": ["network-online.target"],
        }
    local = _host(
        nix_eval,
        """{
          services.apache-kafka.enable = true;
          services.mosquitto.enable = true;
          services.postgresql.enable = true;
          services.home-assistant.enable = true;
          services.postfix.enable = true;
        }""",
        body=body,
    )
    assert local["gridmate-vehicles"]["after"] == [
        "network-online.target",
        "apache-kafka.service",
        "mosquitto.service",
        "postgresql.service",
        "postgresql.target",
    ]
    assert local["gridmate-energy"]["after"] == [
        "network-online.target",
        "postgresql.service",
        "postgresql.target",
        "mosquitto.service",
        "home-assistant.service",
    ]
    assert local["gridmate-report"]["after"] == [
        "network-online.target",
        "postfix.service",
        "mosquitto.service",
        "gridmate-energy.service",
    ]
    assert local["gridmate-vehicles"]["wants"] == local["gridmate-vehicles"]["after"]


def test_vehicles_assertions(nix_eval: Any) -> None:
    unset = """{
      services.gridmate.vehicles.settings.kafka.namespace = lib.mkForce null;
      services.gridmate.vehicles.settings.kafka.bootstrap_servers = lib.mkForce null;
      services.gridmate.vehicles.settings.mqtt.host = lib.mkForce null;
    }"""
    failed = _failed(nix_eval, unset)
    assert len(failed) == 2, failed
    assert "has no vehicle data source" in failed[0]
    assert "mqtt.host is not set and this host runs no Mosquitto" in failed[1]

    half_kafka = """{
      services.gridmate.vehicles.settings.kafka.namespace = lib.mkForce null;
      services.gridmate.vehicles.settings.kafka.bootstrap_servers = lib.mkForce "kafka.lan:9092";
    }"""
    failed = _failed(nix_eval, half_kafka)
    assert len(failed) == 1 and "settings.kafka.namespace is not set" in failed[0]

    no_broker = """{
      services.gridmate.vehicles.settings.kafka.bootstrap_servers = lib.mkForce null;
    }"""
    failed = _failed(nix_eval, no_broker)
    assert len(failed) == 1
    assert "bootstrap_servers is not set and this host runs no Kafka" in failed[0]
    assert _failed(nix_eval, no_broker, "{ services.apache-kafka.enable = true; }") == []

    teslamate_only = """{
      services.gridmate.vehicles.settings.kafka.namespace = lib.mkForce null;
      services.gridmate.vehicles.settings.kafka.bootstrap_servers = lib.mkForce null;
      services.gridmate.vehicles.settings.teslamate.enable = true;
    }"""
    assert _failed(nix_eval, teslamate_only) == []


def test_secret_written_inline_or_twice_is_refused(nix_eval: Any) -> None:
    failed = _failed(nix_eval, '{ services.gridmate.vehicles.settings.mqtt.password = "hunter2"; }')
    assert len(failed) == 1
    assert "services.gridmate.vehicles.settings.mqtt.password holds a secret inline" in failed[0]
    assert "services.gridmate.vehicles.mqttPasswordFile" in failed[0]
    failed = _failed(
        nix_eval, '{ services.gridmate.vehicles.settings.mqtt.password_file = "/etc/mqtt"; }'
    )
    assert len(failed) == 1
    assert "mqttPasswordFile and services.gridmate.vehicles.settings.mqtt.password_file" in (
        failed[0].replace("\n", " ")
    )


def test_secret_file_setting_alone_warns(nix_eval: Any) -> None:
    got = _host(
        nix_eval,
        """{
          services.gridmate.vehicles.mqttPasswordFile = lib.mkForce null;
          services.gridmate.vehicles.settings.mqtt.password_file = "/etc/gridmate/mqtt";
        }""",
        body="{ inherit failed; inherit (c) warnings; }",
    )
    assert got["failed"] == []
    [warning] = [w.replace("\n", " ") for w in got["warnings"]]
    assert "mqtt.password_file is read by the service's transient DynamicUser" in warning
    assert "readable by every user" in warning


def test_only_secret_files_in_the_store_warn(nix_eval: Any, tmp_path: Path) -> None:
    """A path literal is passed by name; a file in the store is readable by everyone."""
    secret = tmp_path / "smtp-password"
    secret.write_text("not really secret once it is in the store\n")
    got = _host(
        nix_eval,
        f"""{{
          # a path literal outside the store: used by name, never copied
          services.gridmate.energy.smtpPasswordFile = /run/secrets/smtp;
          # an interpolated path: Nix copies the file into the store
          services.gridmate.report.smtpPasswordFile = "${{{tmp_path}/smtp-password}}";
        }}""",
        body="""{
          inherit failed; inherit (c) warnings;
          energy = c.systemd.services.gridmate-energy.serviceConfig.LoadCredential;
          report = c.systemd.services.gridmate-report.serviceConfig.LoadCredential;
        }""",
    )
    assert got["failed"] == []
    assert "smtp_password:/run/secrets/smtp" in got["energy"]
    [report] = [c for c in got["report"] if c.startswith("smtp_password:")]
    assert re.fullmatch(r"smtp_password:/nix/store/[a-z0-9]{32}-smtp-password", report)
    [warning] = [w.replace("\n", " ") for w in got["warnings"]]
    assert "services.gridmate.report.smtpPasswordFile" in warning
    assert "is in the Nix store" in warning and "every user" in warning
    assert "energy" not in warning


def test_energy_assertions(nix_eval: Any) -> None:
    failed = _failed(
        nix_eval, "{ services.gridmate.energy.teslamateEncryptionKeyFile = lib.mkForce null; }"
    )
    assert len(failed) == 1 and "TeslaMate's encryption key" in failed[0]
    failed = _failed(
        nix_eval, '{ services.gridmate.energy.settings.tesla.token_source = lib.mkForce "oauth"; }'
    )
    assert len(failed) == 1 and "settings.tesla.oauth.client_id" in failed[0]
    failed = _failed(
        nix_eval,
        """{
          services.gridmate.energy.settings.notify.username = "me";
          services.gridmate.energy.settings.thermostats = [
            { id = "living"; kind = "honeywell"; device_id = "LCC-1"; location_id = "1"; }
          ];
        }""",
    )
    assert len(failed) == 2
    assert "no SMTP password" in failed[0] and "smtpPasswordFile" in failed[0]
    assert "honeywellClientSecretFile" in failed[1]


def _without_nulls(value: Any) -> Any:
    """A value without the null options upstream's submodules add (its renderer drops them)."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def test_prometheus_scrape_configs(nix_eval: Any) -> None:
    body = "c.services.prometheus.scrapeConfigs"
    assert _host(nix_eval, body=body) == []
    scrape = _without_nulls(_host(nix_eval, "{ services.prometheus.enable = true; }", body=body))
    assert scrape == [
        {
            "job_name": "gridmate-energy",
            "static_configs": [{"targets": ["127.0.0.1:9109"], "labels": {"component": "energy"}}],
        },
        {
            "job_name": "gridmate-vehicles",
            "static_configs": [
                {"targets": ["127.0.0.1:9108"], "labels": {"component": "vehicles"}}
            ],
        },
    ]
    moved = _without_nulls(
        _host(
            nix_eval,
            """{
          services.prometheus.enable = true;
          services.gridmate.vehicles.settings.metrics.listen_address = "0.0.0.0";
          services.gridmate.vehicles.settings.metrics.port = 9300;
          services.gridmate.energy.settings.metrics.enable = false;
        }""",
            body=body,
        )
    )
    assert [(j["job_name"], j["static_configs"][0]["targets"]) for j in moved] == [
        ("gridmate-vehicles", ["127.0.0.1:9300"])
    ]
    off = _host(
        nix_eval,
        "{ services.prometheus.enable = true; services.gridmate.prometheus.scrape = false; }",
        body=body,
    )
    assert off == []


# -- the module's secret tables against the Python settings models


def _python_credentials(model: type) -> set[tuple[str, str]]:
    """(credential name, dotted settings key) of every secret in a settings model."""
    import types
    import typing

    from pydantic import BaseModel

    from gridmate.runtime.secrets import Credential

    found: set[tuple[str, str]] = set()

    def models_in(annotation: Any) -> list[type]:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [annotation]
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            return [m for arg in typing.get_args(annotation) for m in models_in(arg)]
        return []

    def walk(current: type, prefix: str) -> None:
        for name, field in current.model_fields.items():  # type: ignore[attr-defined]
            for meta in field.metadata:
                if isinstance(meta, Credential):
                    found.add((meta.name, prefix + name))
            for sub in models_in(field.annotation):
                walk(sub, f"{prefix}{name}.")

    walk(model, "")
    return found


def test_secret_options_cover_every_credential_of_the_settings_models(nix_eval: Any) -> None:
    from gridmate.components import all_components

    got = nix_eval(
        """
        let
          opts = (h.eval { modules = [ h.modules ]; }).options.services.gridmate;
          files = c: lib.filterAttrs (n: _: lib.hasSuffix "File" n) opts.${c};
        in lib.genAttrs [ "vehicles" "energy" "report" "backup" ] (c:
          lib.mapAttrs (_: o: o.description) (files c))
        """
    )
    models = {c.name: c.settings_model for c in all_components()}
    for component, options in got.items():
        declared = set()
        for option, description in options.items():
            credential = re.search(r"as the credential `([a-z_]+)`", description)
            keys = re.findall(r"This is the file form of the setting\s+`([a-z_.]+)`", description)
            assert credential and keys, f"{component}.{option}: description names no credential"
            declared.update((credential.group(1), key) for key in keys)
        assert declared == _python_credentials(models[component]), component


def _load_in_gridmate(units: dict[str, Any], directory: Path) -> None:
    """Each component's rendered settings and credentials, loaded by gridmate's own model."""
    from gridmate.components import all_components

    models = {c.name: c.settings_model for c in all_components()}
    for component, unit in units.items():
        credentials = directory / component
        credentials.mkdir()
        for entry in unit["credentials"]:
            name, _, _ = entry.partition(":")
            (credentials / name).write_text(f"secret-{name}-value")
        config = directory / f"{component}.json"
        config.write_text(json.dumps(unit["settings"]))
        # TOML and JSON load to the same data, and gridmate's loader builds the
        # model from the parsed file exactly like this.
        os.environ["CREDENTIALS_DIRECTORY"] = str(credentials)
        try:
            settings = models[component](**json.loads(config.read_text()))
        finally:
            del os.environ["CREDENTIALS_DIRECTORY"]
        dumped = json.dumps(settings.model_dump(mode="json"))
        assert "secret-" not in dumped  # secrets were read, and stay masked


_RENDERED = """lib.genAttrs (builtins.filter (n: c.services.gridmate.${n}.enable)
  [ "vehicles" "energy" "report" ]) (n: {
    settings = c.services.gridmate.${n}.renderedSettings
      or (h.gridmateLib.dropNulls c.services.gridmate.${n}.settings);
    credentials = c.systemd.services."gridmate-${n}".serviceConfig.LoadCredential;
  }) // lib.optionalAttrs c.services.gridmate.backup.enable {
    backup = {
      settings = c.services.gridmate.backup.finalSettings;
      credentials = lib.unique (lib.concatMap (u: u.serviceConfig.LoadCredential or [ ])
        (lib.attrValues (lib.filterAttrs (n: _: lib.hasPrefix "gridmate-preseed-" n)
          c.systemd.services)));
    };
  }"""


def test_module_settings_load_in_gridmate(nix_eval: Any, tmp_path: Path) -> None:
    """The settings and credentials the modules produce are accepted by gridmate."""
    units = _host(nix_eval, body=_RENDERED)
    assert sorted(units) == sorted(COMPONENTS)
    _load_in_gridmate(units, tmp_path)


# -- the example hosts of docs/nixos.md (flake checks example-<name> on NixOS)

EXAMPLES = {
    "homelab": {
        "gridmate-vehicles.service",
        "gridmate-energy.service",
        "gridmate-report.service",
        "gridmate-report.timer",
    },
    "vehicles-only": {"gridmate-vehicles.service"},
    "failover-pantry": {"gridmate-energy.service", "gridmate-energy-failover@.service"},
    "report-only": {"gridmate-report.service", "gridmate-report.timer"},
    "backup-zfs": {
        "gridmate-vehicles.service",
        "gridmate-preseed-gridmate-vehicles.service",
        "gridmate-preseed-postgresql.service",
        "gridmate-preseed-teslamate.service",
    },
    "teslamate": {"gridmate-vehicles.service"},
}


def test_every_example_host_is_listed() -> None:
    if not (ROOT / "nix" / "examples").is_dir():
        pytest.skip("nix/examples is not part of this source tree")
    files = {p.stem for p in (ROOT / "nix" / "examples").glob("*.nix")}
    assert files - {"default", "machine", "checks"} == set(EXAMPLES)


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_example_host_evaluates_cleanly(nix_eval: Any, example: str, tmp_path: Path) -> None:
    got = nix_eval(
        f"""
        let
          r = h.eval {{ modules = [
            h.flake.nixosModules.default
            (import (h.modules + "/../nix/examples")).{json.dumps(example)}
          ]; }};
          c = r.config;
        in {{
          failed = map (a: a.message) (builtins.filter (a: !a.assertion) c.assertions);
          inherit (c) warnings;
          units = lib.mapAttrs (_: u: u.text) (lib.filterAttrs
            (n: _: lib.hasPrefix "gridmate-" n) (h.units r));
          rendered = {_RENDERED};
        }}
        """
    )
    assert got["failed"] == [] and got["warnings"] == []
    assert set(got["units"]) == EXAMPLES[example]
    for name, text in got["units"].items():
        if name.endswith(".service"):
            assert "\nExecStart=/nix/store/" in text, name
    _load_in_gridmate(got["rendered"], tmp_path)


# -- the VM tests' machines, evaluated with the modules

VM_TESTS = ("vehicles", "energy", "teslamate")


@pytest.mark.parametrize("test", VM_TESTS)
def test_vm_test_machine_evaluates(nix_eval: Any, test: str) -> None:
    """The VM test's node, with every non-gridmate option accepted as is.

    Catches misspelt or mistyped services.gridmate options and failing
    assertions in the VM tests without running a VM; the upstream options
    the node sets (Kafka, Mosquitto, ...) are only checked by the VM run.
    """
    got = nix_eval(
        f"""
        let
          pkgs = h.mkPkgs {{ system = "x86_64-linux"; tag = "vm"; }};
          t = import (h.modules + "/../nix/tests/{test}.nix") {{ inherit pkgs lib; }};
          c = (h.eval {{ modules = [
            {{ freeformType = lib.types.attrsOf lib.types.anything; }}
            h.flake.nixosModules.default
            t.nodes.machine
          ]; }}).config;
        in {{
          inherit (t) name;
          script = builtins.isString t.testScript;
          failed = map (a: a.message) (builtins.filter (a: !a.assertion) c.assertions);
          inherit (c) warnings;
          units = lib.mapAttrs (_: u: {{
            inherit (u) after wantedBy;
            ExecStart = u.serviceConfig.ExecStart or null;
            LoadCredential = u.serviceConfig.LoadCredential or [ ];
          }}) c.systemd.services;
        }}
        """
    )
    assert got["name"] == f"gridmate-{test}" and got["script"]
    assert got["failed"] == [] and got["warnings"] == []
    unit = got["units"]["gridmate-vehicles" if test == "teslamate" else f"gridmate-{test}"]
    if test == "teslamate":
        assert "mosquitto.service" in unit["after"] and "postgresql.target" in unit["after"]
        assert [c.split(":")[0] for c in unit["LoadCredential"]] == [
            "mqtt_password",
            "teslamate_db_password",
            "teslamate_encryption_key",
            "teslamate_mqtt_password",
        ]
        podman = got["units"]["podman-teslamate"]
        assert [c.split(":")[0] for c in podman["LoadCredential"]] == [
            "teslamate_db_password",
            "teslamate_encryption_key",
            "teslamate_mqtt_password",
        ]
    elif test == "vehicles":
        assert "apache-kafka.service" in unit["after"] and "mosquitto.service" in unit["after"]
        assert "postgresql.service" in unit["after"]
        assert [c.split(":")[0] for c in unit["LoadCredential"]] == ["mqtt_password"]
    else:
        assert unit["wantedBy"] == []  # the script starts it after setting the clock
        assert "gridmate-simulators.service" in unit["after"]
        assert [c.split(":")[0] for c in unit["LoadCredential"]] == [
            "honeywell_client_secret",
            "honeywell_refresh_token",
            "powerwall_gateway_password",
            "tesla_refresh_token",
        ]
        assert " report daily " in got["units"]["gridmate-report"]["ExecStart"]


# -- systemd-analyze security on the generated units

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
# The overall exposure systemd-analyze reports for each unit (lower is
# better; "OK" is below 5.0). docs/nixos.md records the same figures.
EXPECTED_EXPOSURE = {"vehicles": 1.1, "energy": 1.1, "report": 1.1}


def _unit_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _render_unit(name: str, unit: dict[str, Any]) -> str:
    """The unit file as NixOS writes it (systemd-lib's attrsToSection)."""
    lines = ["[Unit]", f"Description={unit['description']}"]
    for key in ("after", "wants", "requires"):
        if unit[key]:
            lines.append(f"{key.capitalize()}={' '.join(unit[key])}")
    lines.append("[Service]")
    for key, value in sorted(unit["environment"].items()):
        lines.append(f'Environment="{key}={value}"')
    for key, value in sorted(unit["serviceConfig"].items()):
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"{key}={_unit_value(item)}")
    if unit["wantedBy"]:
        lines += ["[Install]", f"WantedBy={' '.join(unit['wantedBy'])}"]
    return "\n".join(lines) + "\n"


def _offline_analyze_supported() -> str | None:
    if SYSTEMD_ANALYZE is None:
        return "systemd-analyze is not installed"
    probe = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--help"], capture_output=True, text=True, check=False
    )
    if "--offline" not in probe.stdout:
        return "this systemd-analyze has no 'security --offline' (systemd >= 250 needed)"
    return None


@pytest.mark.parametrize("component", COMPONENTS)
def test_units_rate_ok_in_systemd_analyze_security(
    nix_eval: Any, tmp_path: Path, component: str
) -> None:
    reason = _offline_analyze_supported()
    if reason:
        pytest.skip(reason)
    assert SYSTEMD_ANALYZE is not None
    unit = _host(nix_eval, body=f'c.systemd.services."gridmate-{component}"')
    path = tmp_path / f"gridmate-{component}.service"
    path.write_text(_render_unit(path.name, unit))
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d) (\w+)", result.stdout)
    assert found, result.stdout + result.stderr
    exposure, rating = float(found.group(1)), found.group(2)
    assert rating in {"PERFECT", "SAFE", "OK"}, result.stdout
    assert exposure <= EXPECTED_EXPOSURE[component], result.stdout
    docs = ROOT / "docs" / "nixos.md"
    if docs.exists():
        assert f"| gridmate-{component}.service | {EXPECTED_EXPOSURE[component]} |" in (
            docs.read_text()
        ), "docs/nixos.md must record the expected exposure"


# nix/package.nix against a stand-in python3Packages: every attribute it
# uses must be in this list (each one checked to exist in nixpkgs as
# pkgs/development/python-modules/<name>), anything else fails.
RUNTIME_DEPENDENCIES = [
    "aiohttp",
    "aiokafka",
    "aiomqtt",
    "aiosmtpd",
    "aiosmtplib",
    "apprise",
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
    tansu_arg = 'tansu = h.package "tansu";' if tansu else ""
    return nix_eval(
        f"""
        let
          py = lib.genAttrs [ {names} ] h.package // {{
            python.sitePackages = "lib/python3.13/site-packages";
            buildPythonApplication = attrs: attrs;
          }};
          p = import (h.modules + "/../nix/package.nix") {{
            inherit lib;
            python3Packages = py;
            protobuf = h.package "protobuf-cpp";
            mosquitto = h.package "mosquitto";
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


def test_package_source_set_lists_files_that_exist() -> None:
    """nix/package-files.txt is the package's source set; ./dev test runs the check
    phase's tests on a copy of exactly those files (see check_package_tests)."""
    listing = ROOT / "nix" / "package-files.txt"
    if not listing.exists():
        pytest.skip("nix/package-files.txt is not part of this source tree")
    listed = [
        line for line in listing.read_text().splitlines() if line and not line.startswith("#")
    ]
    assert {"src", "tests", "pyproject.toml", "scripts/gen-proto"} <= set(listed)
    assert [name for name in listed if not (ROOT / name).exists()] == []
    assert "./package-files.txt" in (ROOT / "nix" / "package.nix").read_text()


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
    examples = {f"example-{name}" for name in EXAMPLES}
    vm_tests = {"vm-vehicles", "vm-energy", "vm-backup", "vm-teslamate"}
    assert {"package", "formatting"} | vm_tests | examples == set(got["checksX86"])
    # no VM tests on aarch64
    assert set(got["checksArm"]) == {"formatting", "package"} | examples
    assert got["modules"] == [
        "backup",
        "default",
        "energy",
        "monitoring",
        "report",
        "teslamate",
        "vehicles",
    ]
    assert got["app"] == "app"


def test_example_checks_evaluate_each_host_as_a_nixos_system(nix_eval: Any) -> None:
    got = nix_eval(
        """lib.mapAttrs (_: check: { inherit (check) name toplevel; })
          (lib.filterAttrs (n: _: lib.hasPrefix "example-" n) h.flake.checks.x86_64-linux)"""
    )
    assert sorted(got) == sorted(f"example-{name}" for name in EXAMPLES)
    for name, check in got.items():
        assert check["name"] == f"gridmate-{name}"
        assert re.fullmatch(r"/nix/store/[a-z0-9]{32}-[^/]+\.drv", check["toplevel"])


def _example_check(nix_eval: Any, example: str, **kwargs: Any) -> Any:
    """nix/examples/checks.nix for one inline example host, as the flake calls it."""
    return nix_eval(
        f"""
        let
          checks = import (h.modules + "/../nix/examples/checks.nix") {{
            inherit lib;
            system = "x86_64-linux";
            pkgs = h.mkPkgs {{ system = "x86_64-linux"; tag = "check"; }};
            nixosSystem = h.nixosSystem;
            gridmateModule = h.flake.nixosModules.default;
            examples.probe = {example};
          }};
        in checks.example-probe.drvPath
        """,
        **kwargs,
    )


def test_example_checks_fail_where_the_host_would(nix_eval: Any) -> None:
    """The check forces the system: failed assertions and warnings cannot pass it."""
    report = 'services.gridmate.report = { enable = true; settings.energy_state_directory = "/"; };'
    good = "{ " + report + " }"
    assert _example_check(nix_eval, good).endswith(".drv")
    failover = "services.gridmate.energy = { enable = true; failover.enable = true; };"
    err = _example_check(nix_eval, "{ " + failover + " }", expect_error=True)
    assert "Failed assertions" in err and "failover.interface is not" in err
    err = _example_check(
        nix_eval,
        "{ " + report + ' services.gridmate.report.settings.notify.password_file = "/pw"; }',
        expect_error=True,
    )
    assert "gridmate example probe has warnings" in err and "password_file" in err


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
            "name": "gridmate-overlay",
            "isPythonModule": True,
            "overrideArgs": ["python3Packages"],
        },
    }


# ------------------------------------------------------------ energy failover

FAILOVER = """{
  services.gridmate.energy.smtpPasswordFile = "/run/secrets/smtp";
  services.gridmate.energy.settings.notify.username = "gridmate";
  services.gridmate.energy.settings.notify.mqtt.host = "192.168.1.10";
  services.gridmate.energy.failover = {
    enable = true;
    interface = "enp1s0";
    virtualRouterId = 51;
    priority = 150;
    unicastPeers = [ "192.168.1.21" ];
    virtualIps = [ "192.168.1.20/24" ];
  };
}"""


def test_failover_hands_the_energy_unit_to_keepalived(nix_eval: Any) -> None:
    got = _host(
        nix_eval,
        FAILOVER,
        body="""{
          inherit failed;
          keepalived = {
            inherit (c.services.keepalived) enable enableScriptSecurity;
            instance = {
              inherit (c.services.keepalived.vrrpInstances.gridmate-energy)
                interface state virtualRouterId priority noPreempt unicastPeers extraConfig;
              virtualIps = map (ip: ip.addr)
                c.services.keepalived.vrrpInstances.gridmate-energy.virtualIps;
            };
          };
          energy = c.systemd.services.gridmate-energy;
          settings = c.services.gridmate.energy.settings.failover;
          announce = c.systemd.services."gridmate-energy-failover@";
          pkg = c.services.gridmate.package.outPath;
          script = {
            inherit (c.services.gridmate.energy.failover.notifyScript) text;
            path = c.services.gridmate.energy.failover.notifyScript.outPath;
            systemd = c.systemd.package.outPath;
          };
        }""",
    )
    assert got["failed"] == []
    assert got["energy"]["wantedBy"] == []
    keepalived = got["keepalived"]
    assert keepalived["enable"] is True
    # keepalived runs the notify script as root: with script security it checks the
    # script's path instead of logging "SECURITY VIOLATION" at every start.
    assert keepalived["enableScriptSecurity"] is True
    instance = keepalived["instance"]
    assert (instance["interface"], instance["state"], instance["virtualRouterId"]) == (
        "enp1s0",
        "BACKUP",
        51,
    )
    assert instance["priority"] == 150 and instance["noPreempt"] is False
    assert instance["unicastPeers"] == ["192.168.1.21"]
    assert instance["virtualIps"] == ["192.168.1.20/24"]
    script = got["script"]
    # A cut link between the hosts must not put both in FAULT: the interface's
    # carrier is not tracked (the lease decides which of two MASTERs writes).
    assert instance["extraConfig"] == f'notify "{script["path"]}" root\ndont_track_primary\n'
    # The energy service checks the state the script records before every write.
    assert got["settings"] == {"enable": True, "role_file": "/run/gridmate-energy-failover/state"}
    text = script["text"]
    assert text.index("mv -f /run/gridmate-energy-failover/state.new") < text.index("systemctl")
    assert re.fullmatch(r"/nix/store/[a-z0-9]{32}-gridmate-energy-failover-notify", script["path"])
    # the configured systemd's systemctl, not whatever /run/current-system points at
    systemctl = f"{script['systemd']}/bin/systemctl"
    assert f"MASTER) {systemctl} start --no-block gridmate-energy.service" in script["text"]
    assert (
        f"BACKUP|FAULT|STOP) {systemctl} stop --no-block gridmate-energy.service"
        in (script["text"])
    )
    assert (
        f'exec {systemctl} start --no-block "gridmate-energy-failover@$3.service"'
        in (script["text"])
    )
    assert "/run/current-system" not in script["text"]
    announce = got["announce"]
    sc = announce["serviceConfig"]
    assert sc["Type"] == "oneshot" and announce["wantedBy"] == []
    # The energy unit's user, state directory and credentials.
    assert sc["User"] == got["energy"]["serviceConfig"]["User"] == "gridmate-energy"
    assert sc["StateDirectory"] == "gridmate-energy"
    assert "smtp_password:/run/secrets/smtp" in sc["LoadCredential"]
    assert sc["LoadCredential"] == got["energy"]["serviceConfig"]["LoadCredential"]
    argv = sc["ExecStart"].split(" ")
    assert argv[:4] == [f"{got['pkg']}/bin/gridmate", "energy", "failover-notify", "--config"]
    assert argv[5:] == ["INSTANCE", "gridmate-energy", "%i"]


def test_failover_announcer_leaves_the_energy_units_directories_alone(nix_eval: Any) -> None:
    """systemd removes a unit's RuntimeDirectory= when that unit stops: the oneshot
    announcer must not declare /run/gridmate-energy, where the running energy
    service keeps its status file."""
    units = _host(
        nix_eval,
        FAILOVER,
        body="""lib.mapAttrs (_: u: u.text) (lib.filterAttrs
          (n: _: lib.hasPrefix "gridmate-energy" n) (h.units r))""",
    )
    assert sorted(units) == ["gridmate-energy-failover@.service", "gridmate-energy.service"]
    energy, announce = units["gridmate-energy.service"], units["gridmate-energy-failover@.service"]
    assert "\nRuntimeDirectory=gridmate-energy\n" in energy
    assert "\nCacheDirectory=gridmate-energy\n" in energy
    assert "\nStateDirectory=gridmate-energy\n" in announce
    for directory in ("RuntimeDirectory", "CacheDirectory"):
        assert f"\n{directory}=" not in announce, announce
    assert "MPLCONFIGDIR" not in announce


def _firewall(nix_eval: Any, *configs: str) -> dict[str, Any]:
    return _host(
        nix_eval,
        FAILOVER,
        *configs,
        body="""{
          inherit failed;
          inherit (c.networking.firewall) extraCommands extraInputRules;
        }""",
    )


def test_failover_opens_vrrp_from_the_peers_in_the_iptables_firewall(nix_eval: Any) -> None:
    got = _firewall(
        nix_eval,
        '{ services.gridmate.energy.failover.unicastPeers = lib.mkAfter [ "fd00::21" ]; }',
    )
    assert got["failed"] == [] and got["extraInputRules"] == ""
    assert got["extraCommands"].splitlines() == [
        "iptables -w -A nixos-fw -i enp1s0 -p 112 -s 192.168.1.21 -j nixos-fw-accept",
        "ip6tables -w -A nixos-fw -i enp1s0 -p 112 -s fd00::21 -j nixos-fw-accept",
    ]


def test_failover_opens_vrrp_from_the_peers_in_the_nftables_firewall(nix_eval: Any) -> None:
    got = _firewall(
        nix_eval,
        """{
          networking.nftables.enable = true;
          services.gridmate.energy.failover.unicastPeers = lib.mkAfter [ "fd00::21" ];
        }""",
    )
    # No extraCommands: the nftables firewall refuses them with an assertion.
    assert got["failed"] == [] and got["extraCommands"] == ""
    assert got["extraInputRules"].splitlines() == [
        'iifname "enp1s0" ip saddr 192.168.1.21 meta l4proto 112 accept',
        'iifname "enp1s0" ip6 saddr fd00::21 meta l4proto 112 accept',
    ]


def test_failover_with_firewalld_says_how_to_open_vrrp(nix_eval: Any) -> None:
    got = _host(
        nix_eval,
        FAILOVER,
        "{ services.firewalld.enable = true; }",
        body="""{
          inherit failed; inherit (c) warnings;
          inherit (c.networking.firewall) extraCommands extraInputRules;
        }""",
    )
    assert got["failed"] == [] and got["extraCommands"] == got["extraInputRules"] == ""
    [warning] = [w.replace("\n", " ") for w in got["warnings"]]
    assert "cannot open VRRP in firewalld" in warning and "192.168.1.21" in warning


def test_failover_without_a_shared_broker_warns_that_split_brain_goes_unseen(
    nix_eval: Any,
) -> None:
    without_broker = FAILOVER.replace(
        'services.gridmate.energy.settings.notify.mqtt.host = "192.168.1.10";', ""
    )
    assert without_broker != FAILOVER
    got = _host(nix_eval, without_broker, body="{ inherit failed; inherit (c) warnings; }")
    assert got["failed"] == []
    [warning] = [w.replace("\n", " ") for w in got["warnings"]]
    assert "settings.notify.mqtt is not" in warning and "split brain" in warning


def test_failover_firewall_opening_can_be_turned_off(nix_eval: Any) -> None:
    got = _firewall(nix_eval, "{ services.gridmate.energy.failover.openFirewall = false; }")
    assert got == {"failed": [], "extraCommands": "", "extraInputRules": ""}


def test_without_failover_the_energy_unit_starts_at_boot(nix_eval: Any) -> None:
    got = _host(
        nix_eval,
        body="""{
          wanted = c.systemd.services.gridmate-energy.wantedBy;
          keepalived = c.services.keepalived.enable;
          units = builtins.attrNames c.systemd.services;
        }""",
    )
    assert got["wanted"] == ["multi-user.target"] and got["keepalived"] is False
    assert "gridmate-energy-failover@" not in got["units"]


def test_failover_assertions(nix_eval: Any) -> None:
    failed = _failed(
        nix_eval,
        "{ services.gridmate.energy.failover.enable = true; }",
    )
    assert len(failed) == 3
    assert "failover.interface is not" in failed[0]
    assert "failover.virtualRouterId is not" in failed[1]
    assert "failover.unicastPeers is empty" in failed[2]


# ------------------------------------------- stand-ins against upstream NixOS
#
# These run only with a nixpkgs tree (the upstream tier): the stand-ins in
# tests/nixos/stand-in must declare what upstream declares, render what
# upstream renders, and refuse what upstream refuses.


def _walk(tree: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    for name, node in tree.items():
        if not isinstance(node, dict):
            continue
        if "type" in node and "hasDefault" in node:
            yield ".".join((*path, name)), node
            yield from _walk(node.get("sub", {}), (*path, name, "<name>"))
        else:
            yield from _walk(node, (*path, name))


def test_stand_ins_declare_options_as_upstream_does(upstream_eval: Any) -> None:
    got = upstream_eval(
        """
        let
          pick = o: {
            inherit (o) assertions warnings;
            systemd = { inherit (o.systemd) package globalEnvironment enableStrictShellChecks
                          services timers targets; };
            keepalived = o.services.keepalived;
            firewall = { inherit (o.networking.firewall) enable backend extraCommands
                           extraStopCommands extraInputRules; };
            nftables = { inherit (o.networking.nftables) enable; };
            firewalld = { inherit (o.services.firewalld) enable; };
          };
        in {
          upstream = h.describeOptions (pick (h.eval { modules = [ ]; }).options);
          standIn = h.describeOptions (pick (h.evalStandIn [ ]).options);
        }
        """
    )
    upstream = dict(_walk(got["upstream"]))
    stand_in = dict(_walk(got["standIn"]))
    assert len(stand_in) > 60  # the walk reached the submodules' options
    problems = []
    for path, option in stand_in.items():
        real = upstream.get(path)
        if real is None:
            problems.append(f"{path}: not declared upstream")
            continue
        for key in ("type", "hasDefault", "default"):
            if option.get(key) != real.get(key):
                problems.append(f"{path}: {key} {option.get(key)!r}, upstream {real.get(key)!r}")
    assert not problems, "\n".join(problems)


def _unit_texts_both_ways(
    upstream_eval: Any, hosts: list[str], prefix: str
) -> dict[str, dict[str, str]]:
    """The text of each unit named ``prefix``..., for a host made of gridmate's module and
    ``hosts``, rendered by upstream's files ("upstream") and by the stand-ins ("standIn")."""
    host_modules = " ".join(f"({host})" for host in hosts)
    return upstream_eval(
        f"""
        let
          modules = [ h.flake.nixosModules.default {host_modules} ];
          texts = units: lib.mapAttrs (_: u: u.text)
            (lib.filterAttrs (n: _: lib.hasPrefix "{prefix}" n) units);
        in {{
          upstream = texts (h.units (h.eval {{ inherit modules; }}));
          standIn = texts (h.standInUnits (h.evalStandIn modules));
        }}
        """
    )


def test_stand_ins_render_units_as_upstream_does(upstream_eval: Any) -> None:
    """Every gridmate unit of the documented host and of a failover host, rendered
    by the stand-ins and by upstream's systemd-lib.nix, is the same text."""
    got = _unit_texts_both_ways(upstream_eval, [HOST, FAILOVER], "gridmate-")
    assert sorted(got["upstream"]) == sorted(
        [
            "gridmate-energy-failover@.service",
            "gridmate-energy.service",
            "gridmate-report.service",
            "gridmate-report.timer",
            "gridmate-vehicles.service",
        ]
    )
    assert got["standIn"] == got["upstream"]


# Configurations NixOS refuses; the stand-ins must refuse each of them too.
REFUSED = {
    "unknown service type": 'systemd.services.x.serviceConfig.Type = "bogus";',
    "wantedBy not a unit name": 'systemd.services.x.wantedBy = [ "multi-user" ];',
    "a set as a unit value": "systemd.services.x.serviceConfig.ExecStart = { a = 1; };",
    "startLimitBurst as text": 'systemd.services.x.startLimitBurst = "5";',
    "VRRP router id out of range": (
        'services.keepalived.vrrpInstances.x = { interface = "eth0"; virtualRouterId = 300; };'
    ),
    "VRRP instance without interface": "services.keepalived.vrrpInstances.x.virtualRouterId = 5;",
    "null in TOML settings": "services.gridmate.vehicles.settings.mqtt.extra = null;",
    "Sanoid dataset with an unknown template": (
        'services.sanoid = { enable = true; datasets."pool/a".useTemplate = [ "nope" ]; };'
    ),
    "Sanoid snapshot count below zero": (
        'services.sanoid = { enable = true; datasets."pool/a".hourly = -1; };'
    ),
    "syncoid command without target": (
        'services.syncoid = { enable = true; commands."pool/a" = { }; };'
    ),
    "restic job with a list as repository": (
        'services.restic.backups.x = { repository = [ "/srv" ]; passwordFile = "/pw"; };'
    ),
    "unknown image pull policy": (
        'virtualisation.oci-containers.containers.x = { image = "a:1"; pull = "sometimes"; };'
    ),
    "container without an image": "virtualisation.oci-containers.containers.x.autoStart = true;",
    "MQTT ACL line with a line break": (
        'services.mosquitto.listeners = [ { users.u.acl = [ "read a\\nb" ]; } ];'
    ),
    "MQTT listener port out of range": "services.mosquitto.listeners = [ { port = 70000; } ];",
    "Grafana datasource without a type": (
        'services.grafana.provision.datasources.settings.datasources = [ { name = "x"; } ];'
    ),
    "Grafana datasource access mode unknown": (
        "services.grafana.provision.datasources.settings.datasources = "
        '[ { name = "x"; type = "postgres"; access = "sideways"; } ];'
    ),
    "PostgreSQL user without a name": "services.postgresql.ensureUsers = [ { } ];",
    "Caddy virtual host config as a set": 'services.caddy.virtualHosts."a".extraConfig = { };',
}


def _render_probe(config: str, standIn: bool) -> str:
    evaluate = "h.evalStandIn modules" if standIn else "h.eval { inherit modules; }"
    render = "h.standInUnits" if standIn else "h.units"
    return f"""
        let
          modules = [ h.flake.nixosModules.default ({{ {config} }}) ];
          r = {evaluate};
        in {{
          units = lib.mapAttrs (_: u: u.text) ({render} r);
          keepalived = lib.mapAttrs (_: i: {{ inherit (i) interface virtualRouterId; }})
            r.config.services.keepalived.vrrpInstances;
          settings = (r.config.services.gridmate.vehicles.settings.mqtt or {{ }});
          containers = lib.mapAttrs (_: c: {{ inherit (c) image pull; }})
            r.config.virtualisation.oci-containers.containers;
          mosquitto = r.config.services.mosquitto.listeners;
          datasources = r.config.services.grafana.provision.datasources.settings;
          pgUsers = map (u: u.name) r.config.services.postgresql.ensureUsers;
          caddy = lib.mapAttrs (_: v: v.extraConfig) r.config.services.caddy.virtualHosts;
        }}
        """


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_stand_ins_refuse_what_upstream_refuses(upstream_eval: Any, case: str) -> None:
    config = REFUSED[case]
    if "gridmate.vehicles" in config:
        config = f"services.gridmate.vehicles.enable = true; {config}"
    for stand_in in (False, True):
        err = upstream_eval(_render_probe(config, stand_in), expect_error=True)
        assert "error:" in err, (case, stand_in, err)


def test_stand_ins_accept_what_upstream_accepts(upstream_eval: Any) -> None:
    config = """
      systemd.services.x = {
        serviceConfig.ExecStart = pkgs.writeShellScript "x" "true";
        serviceConfig.Type = "notify";
        wantedBy = [ "multi-user.target" ];
        startLimitBurst = 5;
        preStart = "echo before";
        postStop = "echo after";
        environment.TZ = "UTC";
      };
      services.keepalived.vrrpInstances.x = { interface = "eth0"; virtualRouterId = 51; };
      services.sanoid = {
        enable = true;
        templates.t = { hourly = 2; autosnap = true; };
        datasets."pool/a".useTemplate = [ "t" ];
      };
      services.syncoid = {
        enable = true;
        commands."pool/a" = { target = "u@nas:tank/a"; sshKey = "/run/k"; };
      };
      services.restic.backups.x = {
        repository = "/srv/r"; passwordFile = "/pw"; paths = [ "/a" ];
      };
    """.replace("pkgs.", '(h.mkPkgs { system = "x86_64-linux"; tag = "p"; }).')
    upstream = upstream_eval(_render_probe(config, False))
    stand_in = upstream_eval(_render_probe(config, True))
    assert upstream["units"]["x.service"] == stand_in["units"]["x.service"]
    text = upstream["units"]["x.service"]
    assert "\nExecStart=/nix/store/" in text and "\nExecStartPre=/nix/store/" in text
    assert re.search(r"\nExecStopPost=/nix/store/[a-z0-9]{32}-unit-script-x-post-stop/", text)
    assert (
        upstream["keepalived"]
        == stand_in["keepalived"]
        == {"x": {"interface": "eth0", "virtualRouterId": 51}}
    )
    for units in (upstream["units"], stand_in["units"]):
        assert {"sanoid.service", "syncoid-pool-a.service", "restic-backups-x.service"} <= set(
            units
        )


def test_toml_settings_stand_in_matches_upstream_formats(upstream_eval: Any) -> None:
    got = upstream_eval(
        """
        let
          value = { mqtt.host = "broker"; port = 1883; on = true; list = [ 1 "a" ]; };
          real = (h.mkPkgs { system = "x86_64-linux"; tag = "t"; }).formats.toml { };
          standIn = (import (h.modules + "/../tests/nixos/stand-in/pkgs.nix") {
            inherit lib; system = "x86_64-linux"; tag = "t"; }).formats.toml { };
          describe = f: {
            type = f.type.description;
            isDerivation = lib.isDerivation (f.generate "x.toml" value);
            drvPath = (f.generate "x.toml" value).drvPath;
          };
        in { real = describe real; standIn = describe standIn; }
        """
    )
    assert got["real"]["isDerivation"] is True
    assert got["standIn"] == got["real"]


def test_keepalived_configuration_from_the_upstream_module(upstream_eval: Any) -> None:
    got = upstream_eval(
        f"""
        let r = h.eval {{ modules = [ h.flake.nixosModules.default ({HOST}) ({FAILOVER}) ]; }};
        in {{
          conf = h.keepalivedConf r;
          script = r.config.services.gridmate.energy.failover.notifyScript.outPath;
        }}
        """
    )
    conf = got["conf"]
    assert "enable_script_security" in conf
    assert "vrrp_instance gridmate-energy {" in conf
    assert "interface enp1s0" in conf and "virtual_router_id 51" in conf
    assert "priority 150" in conf and "state BACKUP" in conf
    assert re.search(r"unicast_peer \{\s+192\.168\.1\.21\s+\}", conf)
    assert f'notify "{got["script"]}" root' in conf
    assert re.search(r"\n\s*dont_track_primary\n", conf)


def _keepalived_log_after_master(conf: str, script: str, namespace: str, work: Path) -> str:
    """Run real keepalived on `conf` in `namespace` until its notify program saw
    MASTER (the peer never answers); return keepalived's log. The notify
    program `script` is replaced by a recorder that only root can change (as
    everything under /nix/store)."""
    import signal
    import time

    work.mkdir(parents=True)
    os.chmod(work, 0o755)
    os.chmod(work.parent, 0o755)
    record = work / "notified"
    recorder = work / "notify"
    recorder.write_text(f'#!/bin/sh\necho "$@" >> {record}\n')
    recorder.chmod(0o755)
    assert script in conf
    (work / "keepalived.conf").write_text(conf.replace(script, str(recorder)))
    log = work / "keepalived.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, "keepalived", "-n", "-l", "-D",
             "-f", str(work / "keepalived.conf"), "-p", str(work / "k.pid"),
             "-r", str(work / "v.pid")],
            stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while "MASTER" not in (record.read_text() if record.exists() else ""):
            if time.monotonic() > deadline or process.poll() is not None:
                break
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    notified = record.read_text() if record.exists() else ""
    return notified + "\n--- log\n" + log.read_text(errors="replace")


@pytest.mark.netns
def test_real_keepalived_runs_the_rendered_configuration(
    upstream_eval: Any, namespaces: tuple[str, str, str], tmp_path: Path
) -> None:
    """keepalived itself reads the configuration the modules produce, runs the
    notify program as root without a security warning, and passes it
    keepalived's arguments; without script security it does warn."""
    ns_a, _ns_b, interface = namespaces
    got = upstream_eval(
        f"""
        let r = h.eval {{ modules = [ h.flake.nixosModules.default ({HOST}) ({FAILOVER}) {{
          services.gridmate.energy.failover.interface = lib.mkForce "{interface}";
          services.gridmate.energy.failover.unicastPeers = lib.mkForce [ "10.231.0.2" ];
          services.gridmate.energy.failover.virtualIps = lib.mkForce [ ];
        }} ]; }};
        in {{
          conf = h.keepalivedConf r;
          script = r.config.services.gridmate.energy.failover.notifyScript.outPath;
        }}
        """
    )
    conf, script = got["conf"], got["script"]
    seen = _keepalived_log_after_master(conf, script, ns_a, tmp_path / "secure")
    notified = seen.split("\n--- log\n")[0].splitlines()
    # keepalived's own states and arguments: BACKUP at start, MASTER once the
    # peer stays silent (TYPE NAME STATE PRIORITY, as failover-notify expects)
    assert notified[:2] == [
        "INSTANCE gridmate-energy BACKUP 150",
        "INSTANCE gridmate-energy MASTER 150",
    ], seen
    assert "SECURITY VIOLATION" not in seen and "nsafe permissions" not in seen, seen

    insecure = conf.replace("enable_script_security", "")
    seen = _keepalived_log_after_master(insecure, script, ns_a, tmp_path / "insecure")
    assert "SECURITY VIOLATION" in seen, seen


def _pair_configuration(upstream_eval: Any, interface: str, backend: str, open_fw: bool) -> Any:
    nodes = {"a": ("150", "10.231.0.2"), "b": ("100", "10.231.0.1")}
    hosts = " ".join(
        f"""{name} = host {priority} "{peer}";""" for name, (priority, peer) in nodes.items()
    )
    return upstream_eval(
        f"""
        let
          host = priority: peer:
            let r = h.eval {{ modules = [ h.flake.nixosModules.default ({HOST}) ({FAILOVER}) {{
              networking.nftables.enable = {"true" if backend == "nftables" else "false"};
              services.gridmate.energy.failover = {{
                interface = lib.mkForce "{interface}";
                priority = lib.mkForce priority;
                unicastPeers = lib.mkForce [ peer ];
                virtualIps = lib.mkForce [ ];
                openFirewall = {"true" if open_fw else "false"};
              }};
            }} ]; }};
            in {{
              conf = h.keepalivedConf r;
              script = r.config.services.gridmate.energy.failover.notifyScript.outPath;
              firewall = h.firewallRules r;
            }};
        in {{ {hosts} }}
        """
    )


def _apply_firewall(namespace: str, firewall: dict[str, str], work: Path) -> None:
    if firewall["backend"] == "iptables":
        script = work / "firewall-start"
        script.write_text(firewall["script"])
        command = ["bash", "-e", str(script)]
    else:
        ruleset = work / "ruleset.nft"
        ruleset.write_text(firewall["ruleset"])
        command = ["nft", "-f", str(ruleset)]
    result = subprocess.run(
        ["ip", "netns", "exec", namespace, *command], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr


def _states_of_a_pair(
    hosts: dict[str, Any],
    namespaces: dict[str, str],
    work: Path,
    observe: float,
    then: Any = None,
) -> dict[str, list[str]]:
    """Both hosts' firewalls loaded, both keepalived daemons running: the states each
    host's notify program saw, once host a is MASTER and `observe` seconds more
    (with `then`: once host b is BACKUP, `then()` runs before those seconds)."""
    import signal
    import time

    processes = []
    records = {}
    try:
        for name, host in hosts.items():
            node = work / name
            node.mkdir(parents=True)
            os.chmod(node, 0o755)
            os.chmod(work, 0o755)
            _apply_firewall(namespaces[name], host["firewall"], node)
            records[name] = node / "notified"
            recorder = node / "notify"
            recorder.write_text(f'#!/bin/sh\necho "$3" >> {records[name]}\n')
            recorder.chmod(0o755)
            (node / "keepalived.conf").write_text(
                host["conf"].replace(host["script"], str(recorder))
            )
            log = (node / "keepalived.log").open("wb")
            keepalived = ["keepalived", "-n", "-l", "-D", "-f", str(node / "keepalived.conf"),
                          "-p", str(node / "k.pid"), "-r", str(node / "v.pid")]  # fmt: skip
            processes.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", namespaces[name], *keepalived],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

        def seen(name: str) -> list[str]:
            return records[name].read_text().split() if records[name].exists() else []

        deadline = time.monotonic() + 20
        while "MASTER" not in seen("a") and time.monotonic() < deadline:
            time.sleep(0.2)
        if then is not None:
            while "BACKUP" not in seen("b") and time.monotonic() < deadline:
                time.sleep(0.2)
            then()
        # Host b declares host a dead after three missed adverts (about 3.6 s).
        time.sleep(observe)
        return {name: seen(name) for name in hosts}
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.mark.netns
@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_the_nixos_firewall_lets_exactly_one_host_be_active(
    upstream_eval: Any, namespaces: tuple[str, str, str], tmp_path: Path, backend: str
) -> None:
    """Two hosts behind NixOS's real firewall (its own start script or ruleset, as
    the upstream modules render it), each running keepalived with the rendered
    configuration: with the VRRP opening exactly one is active; without it the
    firewall drops the adverts and both are."""
    ns_a, ns_b, interface = namespaces
    namespace = {"a": ns_a, "b": ns_b}

    hosts = _pair_configuration(upstream_eval, interface, backend, open_fw=True)
    states = _states_of_a_pair(hosts, namespace, tmp_path / "open", observe=6)
    assert states["a"][:2] == ["BACKUP", "MASTER"], states
    assert "MASTER" not in states["b"], states

    hosts = _pair_configuration(upstream_eval, interface, backend, open_fw=False)
    states = _states_of_a_pair(hosts, namespace, tmp_path / "closed", observe=6)
    assert "MASTER" in states["a"] and "MASTER" in states["b"], states


@pytest.mark.netns
def test_a_cut_link_between_the_hosts_leaves_neither_faulty(
    upstream_eval: Any, namespaces: tuple[str, str, str], tmp_path: Path
) -> None:
    """The direct link between the hosts goes down (its carrier on both ends): with
    the rendered configuration neither host enters FAULT (which would leave nobody
    in control); the active one stays MASTER and the standby becomes MASTER too, a
    split brain the lease on the shared broker settles (tests/test_energy_lease.py)."""
    ns_a, ns_b, interface = namespaces
    hosts = _pair_configuration(upstream_eval, interface, "iptables", open_fw=True)

    def cut() -> None:
        subprocess.run(["ip", "-n", ns_a, "link", "set", interface, "down"], check=True)

    states = _states_of_a_pair(hosts, {"a": ns_a, "b": ns_b}, tmp_path, observe=6, then=cut)
    assert states == {"a": ["BACKUP", "MASTER"], "b": ["BACKUP", "MASTER"]}, states


@pytest.mark.parametrize("test", (*VM_TESTS, "backup"))
def test_vm_test_header_lists_every_driver_method_it_uses(test: str) -> None:
    """Each VM test's header lists the test-driver methods its script calls on each
    node, with the signatures read from upstream's driver; a new call must be
    checked there."""
    path = ROOT / "nix" / "tests" / f"{test}.nix"
    if not path.exists():
        pytest.skip(f"nix/tests/{test}.nix is not part of this source tree")
    text = path.read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    nodes = set(re.findall(r"\bnodes\.([a-z_]+) =", body))
    assert nodes, "the test declares no node?"
    used = {
        (node, method)
        for node, method in re.findall(r"\b([a-z_]+)\.([a-z_]+)\(", body)
        if node in nodes
    }
    used |= {("", name) for name in ("subtest", "start_all") if re.search(rf"\b{name}\(", body)}
    listed = {
        (node or "", method)
        for node, method in re.findall(r"#   (?:([a-z_]+)\.)?([a-z_]+)\(", header)
    }
    # the single-node tests list machine's methods, named with or without `machine.`
    listed |= {("machine", method) for node, method in listed if node == ""}
    assert used, "the test script calls no driver method?"
    assert used <= listed, f"not listed in the header: {sorted(used - listed)}"


def test_backup_vm_test_nodes_evaluate(nix_eval: Any) -> None:
    """The backup VM test's nodes with gridmate's modules, every non-gridmate option
    accepted as is: misspelt or mistyped services.gridmate options and failing
    assertions show here, without a VM (the test itself has never run)."""
    got = nix_eval(
        """
        let
          # (pkgs.path, for nixpkgs' snake-oil ssh keys, is never read here)
          pkgs = h.mkPkgs { system = "x86_64-linux"; tag = "vm"; };
          t = import (h.modules + "/../nix/tests/backup.nix") { inherit pkgs lib; };
          node = n: (h.eval { modules = [
            { freeformType = lib.types.attrsOf lib.types.anything; }
            h.flake.nixosModules.default
            t.nodes.${n}
          ]; }).config;
          c = node "host";
        in {
          inherit (t) name;
          nodes = builtins.attrNames t.nodes;
          script = builtins.isString t.testScript;
          failed = map (a: a.message) (builtins.filter (a: !a.assertion) c.assertions);
          inherit (c) warnings;
          preseed = lib.mapAttrs (_: u: { inherit (u) before requiredBy; })
            (lib.filterAttrs (n: _: lib.hasPrefix "gridmate-preseed-" n) c.systemd.services);
          jobs = builtins.attrNames c.services.restic.backups;
          syncoid = lib.mapAttrs (_: d: d.target) c.services.syncoid.commands;
          settings = c.services.gridmate.backup.finalSettings;
        }
        """
    )
    assert got["name"] == "gridmate-backup" and got["script"]
    assert got["nodes"] == ["host", "nas"]
    assert got["failed"] == [] and got["warnings"] == []
    assert got["preseed"] == {
        "gridmate-preseed-dumps": {
            "before": ["gridmate-preseed-teslamate.service"],
            "requiredBy": ["gridmate-preseed-teslamate.service"],
        },
        "gridmate-preseed-teslamate": {
            "before": ["teslamate.service"],
            "requiredBy": ["teslamate.service"],
        },
        "gridmate-preseed-vm-state": {
            "before": ["state-reader.service"],
            "requiredBy": ["state-reader.service"],
        },
    }
    assert got["jobs"] == ["gridmate-maintenance", "gridmate-state", "gridmate-teslamate"]
    assert got["syncoid"] == {"pool/dumps": "root@nas:tank/replicas/dumps"}
    targets = got["settings"]["targets"]
    assert targets["dumps"]["replica"] == "root@nas:tank/replicas/dumps"
    assert targets["dumps"]["path"] == "/var/backup/gridmate-teslamate"
    assert targets["teslamate"]["dump_directory"] == "/var/backup/gridmate-teslamate"


# ------------------------------------------------------------------ backups
#
# services.gridmate.backup (modules/backup.nix) on the documented host: restic
# jobs with their hooks, Sanoid and syncoid, the preseed units before the
# services they protect, metrics and alert rules for Prometheus.

BACKUP = """{
  services.postgresql.enable = true;
  services.prometheus.enable = true;
  services.prometheus.exporters.node.enable = true;
  services.gridmate.backup = {
    enable = true;
    restic = {
      enable = true;
      repository = "sftp:restic@nas.lan:/srv/restic/gridmate";
    };
    resticPasswordFile = "/run/secrets/gridmate/restic-password";
    resticEnvironmentFile = "/run/secrets/gridmate/restic-environment";
    smtpPasswordFile = "/run/secrets/gridmate/smtp-password";
    settings.notify = {
      smtp_host = "smtp.example.com";
      username = "gridmate@example.com";
      sender = "gridmate@example.com";
      recipients.critical = [ "you@example.com" ];
    };
    teslamate = {
      enable = true;
      units = [ "podman-teslamate.service" ];
    };
    replication = {
      enable = true;
      host = "syncoid@nas.lan";
      targetParent = "tank/replicas/gridmate";
      sshKeyFile = "/run/secrets/gridmate/syncoid-key";
      raw = true;
    };
    preseed.enable = true;
    preseed.targets.postgresql = {
      kind = "dataset";
      dataset = "rpool/services/postgresql";
      units = [ "postgresql.service" ];
    };
  };
}"""

SETTINGS_FILE = r"/nix/store/[a-z0-9]{32}-gridmate-backup\.toml"


def _backup(nix_eval: Any, *configs: str, body: str = "c") -> Any:
    return _host(nix_eval, BACKUP, *configs, body=body)


def test_backup_host_evaluates_cleanly(nix_eval: Any) -> None:
    got = _backup(
        nix_eval,
        body="""{
          inherit failed; inherit (c) warnings;
          units = builtins.attrNames (lib.filterAttrs (n: _:
            lib.hasPrefix "gridmate-preseed-" n || lib.hasPrefix "restic-" n
            || lib.hasPrefix "syncoid-" n || n == "sanoid.service") (h.units r));
        }""",
    )
    assert got["failed"] == [] and got["warnings"] == []
    assert got["units"] == [
        "gridmate-preseed-gridmate-energy.service",
        "gridmate-preseed-gridmate-report.service",
        "gridmate-preseed-gridmate-vehicles.service",
        "gridmate-preseed-postgresql.service",
        "gridmate-preseed-teslamate.service",
        "restic-backups-gridmate-maintenance.service",
        "restic-backups-gridmate-maintenance.timer",
        "restic-backups-gridmate-state.service",
        "restic-backups-gridmate-state.timer",
        "restic-backups-gridmate-teslamate.service",
        "restic-backups-gridmate-teslamate.timer",
        "sanoid.service",
        "syncoid-rpool-services-postgresql.service",
    ]


def test_backup_preseed_units_come_before_and_are_required_by_their_services(
    nix_eval: Any,
) -> None:
    got = _backup(
        nix_eval,
        body="""{
          units = lib.mapAttrs (_: u: {
            inherit (u) before requiredBy after wants requires restartIfChanged;
            inherit (u.serviceConfig) Type RemainAfterExit TimeoutStartSec ExecStart
              StateDirectory LoadCredential;
            user = u.serviceConfig.User or null;
            dynamic = u.serviceConfig.DynamicUser or false;
            path = map (p: p.name) u.path;
          }) (lib.filterAttrs (n: _: lib.hasPrefix "gridmate-preseed-" n) c.systemd.services);
          pkg = c.services.gridmate.package.outPath;
        }""",
    )
    units = got["units"]
    protects = {
        "teslamate": ["podman-teslamate.service"],
        "postgresql": ["postgresql.service"],
        "gridmate-vehicles": ["gridmate-vehicles.service"],
        "gridmate-energy": ["gridmate-energy.service"],
        "gridmate-report": ["gridmate-report.service"],
    }
    assert sorted(units) == sorted(f"gridmate-preseed-{t}" for t in protects)
    for target, services in protects.items():
        unit = units[f"gridmate-preseed-{target}"]
        assert unit["before"] == unit["requiredBy"] == services, target
        assert (unit["Type"], unit["RemainAfterExit"], unit["TimeoutStartSec"]) == (
            "oneshot",
            True,
            1800,
        )
        # Root (ZFS rename and rollback, file owners), never restarted by a switch.
        assert unit["user"] is None and unit["dynamic"] is False
        assert unit["restartIfChanged"] is False
        argv = unit["ExecStart"].split(" ")
        assert argv[:5] == [f"{got['pkg']}/bin/gridmate", "preseed", "--target", target, "--config"]
        assert re.fullmatch(SETTINGS_FILE, argv[5]) and len(argv) == 6
        assert unit["StateDirectory"] == "gridmate-backup"
        assert [c.split(":")[0] for c in unit["LoadCredential"]] == [
            "restic_environment",
            "restic_password",
            "smtp_password",
        ]
        for needed in ("zfs-import.target", "zfs-mount.service", "network-online.target"):
            assert needed in unit["after"], (target, needed)
    # The tools each kind needs, and no others (no ZFS on a host without datasets).
    assert units["gridmate-preseed-postgresql"]["path"][:4] == [
        "zfs",
        "sanoid",
        "openssh",
        "restic",
    ]
    # the host's PostgreSQL (its package name carries the version) and restic
    first_two = units["gridmate-preseed-teslamate"]["path"][:2]
    assert first_two[0].startswith("postgresql") and first_two[1] == "restic"
    assert units["gridmate-preseed-gridmate-energy"]["path"][:1] == ["restic"]
    for unit in units.values():
        assert "coreutils" in unit["path"]  # NixOS's default path follows
    assert "zfs" not in units["gridmate-preseed-teslamate"]["path"]
    # The database is restored into a running PostgreSQL, once NixOS created its roles.
    database = units["gridmate-preseed-teslamate"]
    assert {"postgresql.service", "postgresql.target"} <= set(database["after"])
    assert database["requires"] == ["postgresql.service"]
    # The data directory's dataset is restored before PostgreSQL starts.
    data = units["gridmate-preseed-postgresql"]
    assert "postgresql.service" not in data["after"] and data["requires"] == []


def test_backup_renders_settings_gridmate_loads(nix_eval: Any, tmp_path: Path) -> None:
    from gridmate.backup.settings import BackupSettings

    got = _backup(
        nix_eval,
        body="""{
          settings = c.services.gridmate.backup.finalSettings;
          credentials = c.systemd.services.gridmate-preseed-teslamate.serviceConfig.LoadCredential;
        }""",
    )
    settings = got["settings"]
    assert settings["state_directory"] == "/var/lib/gridmate-backup"
    assert settings["textfile_directory"] == "/var/lib/prometheus-node-exporter-text"
    assert settings["restic"] == {"repository": "sftp:restic@nas.lan:/srv/restic/gridmate"}
    assert settings["zfs"] == {
        "ssh_key": "/run/secrets/gridmate/syncoid-key",
        "recv_options": "u",
        "send_options": "w",
    }
    assert settings["preseed"] == {"methods": ["syncoid", "local"], "on_failure": "refuse"}
    targets = settings["targets"]
    assert targets["postgresql"] == {
        "kind": "dataset",
        "dataset": "rpool/services/postgresql",
        "replica": "syncoid@nas.lan:tank/replicas/gridmate/postgresql",
    }
    assert targets["gridmate-energy"] == {
        "kind": "directory",
        "path": "/var/lib/private/gridmate-energy",
        "restic_tag": "gridmate",
        "methods": ["restic"],
    }
    assert targets["teslamate"]["kind"] == "database"
    assert targets["teslamate"]["dump_directory"] == "/var/backup/gridmate-teslamate"
    assert targets["teslamate"]["database"] == {
        "host": "/run/postgresql",
        "port": 5432,
        "user": "postgres",
        "name": "teslamate",
        "owner": "teslamate",
    }
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    for entry in got["credentials"]:
        (credentials / entry.partition(":")[0]).write_text("secret-value")
    os.environ["CREDENTIALS_DIRECTORY"] = str(credentials)
    try:
        loaded = BackupSettings(**settings)
    finally:
        del os.environ["CREDENTIALS_DIRECTORY"]
    assert loaded.restic.configured
    assert loaded.on_failure_for(loaded.targets["postgresql"]) == "refuse"
    assert loaded.methods_for(loaded.targets["teslamate"]) == ("local", "restic")
    assert loaded.methods_for(loaded.targets["postgresql"]) == ("syncoid", "local")
    assert loaded.restic_tag_for("gridmate-vehicles") == "gridmate"


def test_backup_restic_jobs(nix_eval: Any) -> None:
    got = _backup(
        nix_eval,
        body="""{
          jobs = lib.mapAttrs (_: j: {
            inherit (j) paths extraBackupArgs pruneOpts checkOpts runCheck repository
              passwordFile environmentFile backupPrepareCommand backupCleanupCommand
              timerConfig;
          }) c.services.restic.backups;
          services = lib.mapAttrs (_: u: {
            inherit (u) after;
            LoadCredential = u.serviceConfig.LoadCredential or [ ];
            path = map (p: p.name) u.path;
          }) (lib.filterAttrs (n: _: lib.hasPrefix "restic-backups-" n) c.systemd.services);
          pkg = c.services.gridmate.package.outPath;
        }""",
    )
    jobs, pkg = got["jobs"], got["pkg"]
    assert sorted(jobs) == ["gridmate-maintenance", "gridmate-state", "gridmate-teslamate"]
    for job in jobs.values():
        assert job["repository"] == "sftp:restic@nas.lan:/srv/restic/gridmate"
        assert job["passwordFile"] == "/run/secrets/gridmate/restic-password"
        assert job["environmentFile"] == "/run/secrets/gridmate/restic-environment"

    teslamate = jobs["gridmate-teslamate"]
    assert teslamate["paths"] == ["/var/backup/gridmate-teslamate"]
    assert teslamate["extraBackupArgs"] == ["--tag teslamate", "--tag telemetry"]
    prepare = teslamate["backupPrepareCommand"].split(" ")
    assert prepare[:5] == [f"{pkg}/bin/gridmate", "backup", "dump", "--target", "teslamate"]
    cleanup = teslamate["backupCleanupCommand"].split(" ")
    assert cleanup[:5] == [f"{pkg}/bin/gridmate", "backup", "record", "--job", "teslamate"]
    assert cleanup[5] == "--config" and re.fullmatch(SETTINGS_FILE, cleanup[6])

    state = jobs["gridmate-state"]
    assert state["paths"] == [
        "/var/lib/private/gridmate-vehicles",
        "/var/lib/private/gridmate-energy",
        "/var/lib/private/gridmate-report",
    ]
    assert state["extraBackupArgs"] == ["--tag gridmate"]
    assert state["backupPrepareCommand"] is None
    assert state["backupCleanupCommand"].split(" ")[1:5] == [
        "backup",
        "record",
        "--job",
        "gridmate",
    ]
    for name in ("gridmate-teslamate", "gridmate-state"):
        assert jobs[name]["pruneOpts"] == [] and jobs[name]["runCheck"] is False
        assert jobs[name]["timerConfig"] == {
            "OnCalendar": "*-*-* 03:00:00",
            "Persistent": True,
            "RandomizedDelaySec": "30min",
        }

    maintenance = jobs["gridmate-maintenance"]
    assert maintenance["paths"] == [] and maintenance["runCheck"] is True
    assert maintenance["pruneOpts"] == ["--keep-daily 7", "--keep-weekly 5", "--keep-monthly 12"]
    assert maintenance["checkOpts"] == ["--read-data-subset=5%"]
    assert maintenance["timerConfig"] == {"OnCalendar": "Sun *-*-* 05:00:00", "Persistent": True}
    assert maintenance["backupCleanupCommand"] is None

    services = got["services"]
    # One after the other when started together; the maintenance job last.
    assert (
        "restic-backups-gridmate-teslamate.service"
        in services["restic-backups-gridmate-state"]["after"]
    )
    assert {
        "restic-backups-gridmate-teslamate.service",
        "restic-backups-gridmate-state.service",
    } <= set(services["restic-backups-gridmate-maintenance"]["after"])
    # The hooks can mail a failed run, and dump with the server's own pg_dump.
    for name in ("gridmate-teslamate", "gridmate-state"):
        unit = services[f"restic-backups-{name}"]
        assert unit["LoadCredential"] == ["smtp_password:/run/secrets/gridmate/smtp-password"]
    assert any(
        p.startswith("postgresql") for p in services["restic-backups-gridmate-teslamate"]["path"]
    )
    assert "postgresql" not in services["restic-backups-gridmate-state"]["path"]


def test_home_assistant_broker_password_reaches_the_report_and_the_backup_hooks(
    nix_eval: Any,
) -> None:
    enabled = """{
      services.gridmate.report.mqttPasswordFile = "/run/secrets/ha-mqtt";
      services.gridmate.report.settings.ha_device.enable = true;
      services.gridmate.backup.mqttPasswordFile = "/run/secrets/ha-mqtt";
      services.gridmate.backup.settings.ha_device.enable = true;
    }"""
    body = """{
      inherit failed; inherit (c) warnings;
      report = c.systemd.services.gridmate-report.serviceConfig.LoadCredential;
      restic = c.systemd.services.restic-backups-gridmate-state.serviceConfig.LoadCredential;
      syncoid = (lib.head (lib.attrValues (lib.filterAttrs (n: _: lib.hasPrefix "syncoid-" n)
        c.systemd.services))).serviceConfig.LoadCredential;
      preseed = c.systemd.services.gridmate-preseed-postgresql.serviceConfig.LoadCredential;
    }"""
    got = _backup(nix_eval, enabled, body=body)
    assert got["failed"] == [] and got["warnings"] == []
    for unit in ("report", "restic", "syncoid", "preseed"):
        assert "mqtt_password:/run/secrets/ha-mqtt" in got[unit], unit
    # A password for a broker nothing publishes to is pointed out.
    unused = """{
      services.gridmate.report.mqttPasswordFile = "/run/secrets/ha-mqtt";
      services.gridmate.backup.mqttPasswordFile = "/run/secrets/ha-mqtt";
    }"""
    warnings = _backup(nix_eval, unused, body="c.warnings")
    assert len(warnings) == 2
    assert all("settings.ha_device.enable is not" in w.replace("\n", " ") for w in warnings)


def test_apprise_urls_reach_every_component_that_notifies(nix_eval: Any) -> None:
    urls = "/run/secrets/apprise-urls"
    got = _backup(
        nix_eval,
        f"""{{
          services.gridmate.vehicles.appriseUrlsFile = "{urls}";
          services.gridmate.energy.appriseUrlsFile = "{urls}";
          services.gridmate.report.appriseUrlsFile = "{urls}";
          services.gridmate.backup.appriseUrlsFile = "{urls}";
        }}""",
        body="""{
          inherit failed; inherit (c) warnings;
          units = lib.mapAttrs (_: u: u.serviceConfig.LoadCredential or [ ])
            (lib.filterAttrs (n: _: builtins.elem n [ "gridmate-vehicles" "gridmate-energy"
              "gridmate-report" "gridmate-preseed-postgresql" "restic-backups-gridmate-state" ])
              c.systemd.services);
          rendered = c.services.gridmate.backup.finalSettings.notify;
        }""",
    )
    assert got["failed"] == [] and got["warnings"] == []
    assert len(got["units"]) == 5
    for unit, credentials in got["units"].items():
        assert f"apprise_urls:{urls}" in credentials, unit
    assert "apprise_urls" not in got["rendered"] and "apprise_urls_file" not in got["rendered"]
    inline = _backup(
        nix_eval,
        '{ services.gridmate.report.settings.notify.apprise_urls = "json://x/token"; }',
        body="failed",
    )
    assert any("settings.notify.apprise_urls holds a secret inline" in m for m in inline)


def test_backup_hooks_land_in_restics_start_and_stop_commands(nix_eval: Any) -> None:
    """The prepare hook runs before the backup (ExecStartPre=), the cleanup hook in
    ExecStopPost=, which systemd runs after a failed backup too."""
    got = _backup(
        nix_eval,
        body="""{
          texts = lib.mapAttrs (_: u: u.text) (lib.filterAttrs
            (n: _: lib.hasPrefix "restic-backups-gridmate-" n) (h.units r));
          unit = {
            inherit (c.systemd.services.restic-backups-gridmate-teslamate) preStart postStop;
          };
        }""",
    )
    teslamate = got["texts"]["restic-backups-gridmate-teslamate.service"]
    assert re.search(r"\nExecStartPre=/nix/store/\S+-pre-start", teslamate)
    assert re.search(r"\nExecStopPost=/nix/store/\S+-post-stop", teslamate)
    assert "--tag teslamate --tag telemetry" in teslamate
    assert "backupPrepareCommand" in got["unit"]["preStart"]
    assert "backupCleanupCommand" in got["unit"]["postStop"]
    assert (
        "\nOnCalendar=Sun *-*-* 05:00:00\n"
        in (got["texts"]["restic-backups-gridmate-maintenance.timer"])
    )
    maintenance = got["texts"]["restic-backups-gridmate-maintenance.service"]
    assert re.search(r"\nExecStart=\S+/bin/restic forget --prune --keep-daily 7 ", maintenance)
    assert re.search(r"\nExecStart=\S+/bin/restic check --read-data-subset=5%\n", maintenance)


def _toml(value: dict[str, Any], table: str = "") -> str:
    """A TOML document of nested tables of strings, numbers, booleans and lists."""
    lines, tables = [], []
    for key, item in value.items():
        if isinstance(item, dict):
            tables.append((key, item))
        else:
            lines.append(f"{json.dumps(key)} = {json.dumps(item)}")
    text = (f"[{table}]\n" if table and lines else "") + "".join(f"{line}\n" for line in lines)
    for key, item in tables:
        name = f"{table}.{json.dumps(key)}" if table else json.dumps(key)
        text += _toml(item, name)
    return text


@pytest.mark.services
def test_backup_hooks_run_with_the_rendered_settings(
    nix_eval: Any, tmp_path: Path, postgres_dsn: str
) -> None:
    """The module's prepare and cleanup hooks, run as restic's unit runs them (the
    store's gridmate replaced by this checkout's, the settings file by the same
    settings as TOML): the dump lands in the dump directory, a failed run
    ($SERVICE_RESULT=exit-code) records no success, a successful one does."""
    import sys
    import urllib.parse

    dsn = urllib.parse.urlparse(postgres_dsn)
    host, port = dsn.hostname or "127.0.0.1", dsn.port or 5432
    user, database = dsn.username or "postgres", dsn.path.lstrip("/")
    seeded = subprocess.run(
        ["psql", "-h", host, "-p", str(port), "-U", user, "-d", database,
         "-v", "ON_ERROR_STOP=1", "-c",
         "CREATE TABLE IF NOT EXISTS cars (id int PRIMARY KEY, name text); "
         "INSERT INTO cars VALUES (1, 'M3') ON CONFLICT DO NOTHING"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert seeded.returncode == 0, seeded.stderr
    got = _backup(
        nix_eval,
        f"""{{
          services.gridmate.backup.teslamate.dumpDirectory = "{tmp_path}/dumps";
          services.gridmate.backup.teslamate.database = {{
            host = "{host}"; port = {port}; user = "{user}"; name = "{database}"; owner = "{user}";
          }};
          services.gridmate.backup.settings = {{
            state_directory = "{tmp_path}/state";
            textfile_directory = "{tmp_path}/textfile";
            notify = lib.mkForce {{ }};
          }};
        }}""",
        body="""{
          settings = c.services.gridmate.backup.finalSettings;
          job = c.services.restic.backups.gridmate-teslamate;
        }""",
    )
    config = tmp_path / "backup.toml"
    config.write_text(_toml(got["settings"]))
    environment = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": os.pathsep.join(sys.path),
        "HOME": str(tmp_path),
    }

    def run_hook(command: str, **extra: str) -> subprocess.CompletedProcess[str]:
        argv = command.split(" ")
        assert argv[0].endswith("/bin/gridmate") and argv[-2] == "--config"
        argv = [sys.executable, "-m", "gridmate", *argv[1:-1], str(config)]
        return subprocess.run(
            argv, env={**environment, **extra}, capture_output=True, text=True, timeout=120
        )

    (tmp_path / "dumps").mkdir()
    dumped = run_hook(got["job"]["backupPrepareCommand"])
    assert dumped.returncode == 0, dumped.stderr
    dump = tmp_path / "dumps" / f"{database}.dump"
    assert dump.read_bytes().startswith(b"PGDMP")  # pg_dump's custom format

    metrics = tmp_path / "textfile" / "gridmate_backup_freshness.prom"
    failed = run_hook(got["job"]["backupCleanupCommand"], SERVICE_RESULT="exit-code")
    assert failed.returncode == 0, failed.stderr
    text = metrics.read_text()
    assert 'gridmate_backup_last_run_success{job="teslamate"} 0.0' in text
    assert 'gridmate_backup_last_success_timestamp_seconds{job="teslamate"}' not in text

    succeeded = run_hook(got["job"]["backupCleanupCommand"], SERVICE_RESULT="success")
    assert succeeded.returncode == 0, succeeded.stderr
    text = metrics.read_text()
    assert 'gridmate_backup_last_run_success{job="teslamate"} 1.0' in text
    assert 'gridmate_backup_last_success_timestamp_seconds{job="teslamate"}' in text


def test_backup_sanoid_and_syncoid(nix_eval: Any) -> None:
    got = _backup(
        nix_eval,
        body="""{
          sanoid = {
            inherit (c.services.sanoid) enable;
            template = c.services.sanoid.templates.gridmate;
            datasets = lib.mapAttrs (_: d: d.use_template) c.services.sanoid.datasets;
          };
          syncoid = {
            inherit (c.services.syncoid) enable interval;
            commands = lib.mapAttrs (_: d: {
              inherit (d) source target sendOptions recvOptions sshKey;
              serviceConfig = d.service.serviceConfig;
            }) c.services.syncoid.commands;
          };
          text = (h.units r)."syncoid-rpool-services-postgresql.service".text;
          pkg = c.services.gridmate.package.outPath;
          staticUser = r.options.services.syncoid ? user;
        }""",
    )
    sanoid, syncoid = got["sanoid"], got["syncoid"]
    assert sanoid["enable"] is True
    assert sanoid["datasets"] == {"rpool/services/postgresql": ["gridmate"]}
    assert {k: sanoid["template"][k] for k in ("hourly", "daily", "monthly", "autosnap")} == {
        "hourly": 48,
        "daily": 30,
        "monthly": 6,
        "autosnap": True,
    }
    assert syncoid["enable"] is True and syncoid["interval"] == "hourly"
    command = syncoid["commands"]["rpool/services/postgresql"]
    assert command["source"] == "rpool/services/postgresql"
    assert command["target"] == "syncoid@nas.lan:tank/replicas/gridmate/postgresql"
    # raw sends for encrypted datasets; no mount on receive (not delegable on Linux)
    assert (command["sendOptions"], command["recvOptions"]) == ("w", "u")
    text = got["text"]
    # The key as a credential, which systemd mounts inside syncoid's RootDirectory=:
    # the module's own with nixos-25.11's static-user syncoid.nix, syncoid.nix's
    # in its DynamicUser form.
    if got["staticUser"]:
        assert command["sshKey"] == "%d/ssh_key"
        assert command["serviceConfig"]["LoadCredential"] == [
            "smtp_password:/run/secrets/gridmate/smtp-password",
            "ssh_key:/run/secrets/gridmate/syncoid-key",
        ]
        assert (
            " --sshkey %d/ssh_key '--sshoption=BatchMode=yes' --sendoptions w --recvoptions u "
            in text
        )
        assert "\nLoadCredential=ssh_key:/run/secrets/gridmate/syncoid-key\n" in text
    else:
        assert command["sshKey"] == "/run/secrets/gridmate/syncoid-key"
        assert command["serviceConfig"]["LoadCredential"] == [
            "smtp_password:/run/secrets/gridmate/smtp-password"
        ]
        assert (
            " --sshkey '${CREDENTIALS_DIRECTORY}/sshKey' '--sshoption=BatchMode=yes' "
            "--sendoptions w --recvoptions u " in text
        )
        assert "\nLoadCredential=sshKey:/run/secrets/gridmate/syncoid-key\n" in text
    assert "\nLoadCredential=smtp_password:/run/secrets/gridmate/smtp-password\n" in text
    assert " --no-privilege-elevation rpool/services/postgresql syncoid@nas.lan:" in text
    [record] = command["serviceConfig"]["ExecStopPost"]
    argv = record.split(" ")
    assert argv[0] == f"+{got['pkg']}/bin/gridmate"
    assert argv[1:7] == [
        "backup",
        "record",
        "--kind",
        "replication",
        "--job",
        "rpool/services/postgresql",
    ]
    assert "\nRootDirectory=/run/syncoid/rpool-services-postgresql\n" in text
    # after upstream's own (zfs unallow) commands
    assert text.rstrip().endswith(f"ExecStopPost={record}") or f"\nExecStopPost={record}\n" in text


def test_backup_nas_ssh_port_and_options_reach_syncoid_and_preseed(nix_eval: Any) -> None:
    """replication.sshPort and sshOptions: the same for the replication units and for
    preseed's settings, which gridmate accepts."""
    from gridmate.backup.settings import BackupSettings

    got = _backup(
        nix_eval,
        """{
          services.gridmate.backup.replication = {
            sshPort = 2222;
            sshOptions = [
              "UserKnownHostsFile=/etc/gridmate/nas_known_hosts"
              "StrictHostKeyChecking=yes"
            ];
          };
        }""",
        body="""{
          extraArgs = c.services.syncoid.commands."rpool/services/postgresql".extraArgs;
          text = (h.units r)."syncoid-rpool-services-postgresql.service".text;
          zfs = c.services.gridmate.backup.finalSettings.zfs;
        }""",
    )
    assert got["extraArgs"] == [
        "--sshoption=BatchMode=yes",
        "--sshport=2222",
        "--sshoption=UserKnownHostsFile=/etc/gridmate/nas_known_hosts",
        "--sshoption=StrictHostKeyChecking=yes",
    ]
    assert (
        " '--sshoption=BatchMode=yes' '--sshport=2222' "
        "'--sshoption=UserKnownHostsFile=/etc/gridmate/nas_known_hosts' "
        "'--sshoption=StrictHostKeyChecking=yes' --sendoptions w " in got["text"]
    )
    assert got["zfs"] == {
        "ssh_key": "/run/secrets/gridmate/syncoid-key",
        "ssh_port": 2222,
        "ssh_options": [
            "UserKnownHostsFile=/etc/gridmate/nas_known_hosts",
            "StrictHostKeyChecking=yes",
        ],
        "recv_options": "u",
        "send_options": "w",
    }
    settings = BackupSettings.model_validate({"zfs": got["zfs"]})
    assert settings.zfs.ssh_port == 2222
    assert settings.zfs.ssh_options[1] == "StrictHostKeyChecking=yes"


def test_backup_metrics_reach_prometheus(nix_eval: Any) -> None:
    body = """{
      inherit (c.systemd.tmpfiles) rules;
      node = { inherit (c.services.prometheus.exporters.node) enabledCollectors extraFlags; };
      ruleFiles = map toString c.services.prometheus.ruleFiles;
    }"""
    got = _backup(nix_eval, body=body)
    assert got["rules"] == [
        "d /var/lib/gridmate-backup 0700 root root -",
        "d /var/lib/prometheus-node-exporter-text 0755 root root -",
        "d /var/backup/gridmate-teslamate 0700 root root -",
    ]
    assert got["node"] == {
        "enabledCollectors": ["textfile"],
        "extraFlags": ["--collector.textfile.directory=/var/lib/prometheus-node-exporter-text"],
    }
    # the rules come with gridmate's one rule file (services.gridmate.monitoring)
    assert got["ruleFiles"] == []
    elsewhere = _backup(
        nix_eval,
        """{
          services.prometheus.enable = lib.mkForce false;
          services.prometheus.exporters.node.enable = lib.mkForce false;
          services.gridmate.backup.textfileDirectory = "/srv/metrics";
        }""",
        body=body,
    )
    assert elsewhere["node"] == {"enabledCollectors": [], "extraFlags": []}
    assert elsewhere["ruleFiles"] == []
    assert "d /srv/metrics 0755 root root -" in elsewhere["rules"]


def test_backup_assertions_say_what_to_set(nix_eval: Any) -> None:
    def failed(config: str) -> list[str]:
        return [m.replace("\n", " ") for m in _failed(nix_eval, BACKUP, config)]

    [message] = failed("{ services.gridmate.backup.restic.repository = lib.mkForce null; }")
    assert "restic.enable is set but no repository is given" in message
    assert "services.gridmate.backup.restic.repository" in message and "repositoryFile" in message
    [message] = failed('{ services.gridmate.backup.restic.repositoryFile = "/run/secrets/r"; }')
    assert "both repository options are set" in message
    [message] = failed("{ services.gridmate.backup.resticPasswordFile = lib.mkForce null; }")
    assert "services.gridmate.backup.resticPasswordFile is not. Set it to" in message
    [message] = failed("{ services.gridmate.backup.restic.enable = lib.mkForce false; }")
    assert "teslamate.enable backs TeslaMate's database up with restic" in message
    assert "Enable it and set its repository and passwordFile" in message

    # syncoid without a target, or without a key
    [message] = failed("{ services.gridmate.backup.replication.host = lib.mkForce null; }")
    assert "replication.enable is set but syncoid has no target" in message
    assert "replication.host" in message and "replication.targetParent" in message
    [message] = failed("{ services.gridmate.backup.replication.sshKeyFile = lib.mkForce null; }")
    assert "replication.sshKeyFile is not" in message

    # an ssh option syncoid would hand to a shell
    [message] = failed(
        '{ services.gridmate.backup.replication.sshOptions = [ "ProxyCommand=nc %h; rm" ]; }'
    )
    assert "replication.sshOptions: ProxyCommand=nc %h; rm: write each as Name=value" in message

    # preseed of a target with no method that can work
    [message] = failed(
        """{ services.gridmate.backup.preseed.targets.media = {
          kind = "directory"; path = "/srv/media"; units = [ "jellyfin.service" ];
        }; }"""
    )
    assert "preseed.targets.media (kind directory) has no restore method that can work here" in (
        message
    )
    assert "syncoid: syncoid restores datasets only" in message
    assert "local: local restores datasets and databases only" in message
    assert "a directory only has restic" in message
    [message] = failed(
        """{
          services.gridmate.backup.replication.enable = lib.mkForce false;
          services.gridmate.backup.preseed.targets.postgresql.methods = [ "syncoid" ];
        }"""
    )
    assert "preseed.targets.postgresql (kind dataset) has no restore method" in message
    assert "syncoid: it has no replica" in message
    [message] = failed("{ services.gridmate.backup.preseed.targets.postgresql.methods = [ ]; }")
    assert "preseed.targets.postgresql has no restore method: its methods list is empty" in message
    [message] = failed(
        """{ services.gridmate.backup.preseed.targets.media = {
          kind = "directory"; path = "/srv/media"; methods = [ "restic" ]; units = [ ];
        }; }"""
    )
    assert "preseed.targets.media protects no service" in message
    [message] = failed(
        """{ services.gridmate.backup.preseed.targets.media = {
          kind = "directory"; methods = [ "restic" ]; units = [ "x.service" ];
        }; }"""
    )
    assert "preseed.targets.media is of kind directory but its path is not set" in message
    # a secret written inline in the settings
    [message] = failed('{ services.gridmate.backup.settings.restic.password = "hunter2"; }')
    assert "settings.restic.password holds a secret inline" in message
    assert "services.gridmate.backup.resticPasswordFile" in message


def test_backup_teslamate_units_follow_the_container(nix_eval: Any) -> None:
    """The database's preseed guards TeslaMate's container unit
    (virtualisation.oci-containers, podman by default) or TeslaMate's native unit,
    when this host has them."""

    def default_units(config: str) -> Any:
        return nix_eval(
            f"""
            let r = h.eval {{ modules = [
              {{ freeformType = lib.types.attrsOf lib.types.anything; }}
              h.flake.nixosModules.default ({HOST}) ({BACKUP}) ({config})
            ]; }};
            in r.options.services.gridmate.backup.teslamate.units.default
            """
        )

    container = (
        'virtualisation.oci-containers.containers.teslamate.image = "teslamate/teslamate:2.2.0";'
    )
    assert default_units("{ }") == []
    assert default_units("{ " + container + " }") == ["podman-teslamate.service"]
    assert default_units(
        "{ " + container + ' virtualisation.oci-containers.backend = "docker"; }'
    ) == ["docker-teslamate.service"]
    assert default_units(
        "{ "
        + container
        + ' virtualisation.oci-containers.containers.teslamate.serviceName = "tm"; }'
    ) == ["tm.service"]
    assert default_units("{ services.teslamate.enable = true; }") == ["teslamate.service"]


BACKUP_UPSTREAM = ("restic", "sanoid", "syncoid")


def _upstream_backup_module(upstream_eval: Any, module: str) -> None:
    if not upstream_eval(f"h.hasUpstream.{module}"):
        path = f"nixos/modules/services/backup/{module}.nix"
        pytest.skip(f"the nixpkgs tree has no {path} yet; its stand-in stands in for it")


@pytest.mark.parametrize("module", BACKUP_UPSTREAM)
def test_backup_stand_ins_declare_options_as_upstream_does(upstream_eval: Any, module: str) -> None:
    """tests/nixos/stand-in/<module>.nix declares what the real file declares.

    syncoid.nix exists in two forms: with a static `user`/`group` (what
    ops-modules.md reports for nixos-25.11, and what the stand-in mirrors) and with
    DynamicUser= (NixOS/nixpkgs 07468529, which the partial tree may hold). Against
    the DynamicUser form exactly its known differences are allowed: no `user` and
    `group`, `interval` a string only, `destroy` among the target permissions.
    modules/backup.nix works with both (test_backup_sanoid_and_syncoid)."""
    _upstream_backup_module(upstream_eval, module)
    # restic's runCheck default reads the job by its name, also in the option
    # tree's placeholder submodule: give it a job of that name.
    probe = '{ services.restic.backups."‹name›".repository = "/srv/r"; }'
    got = upstream_eval(
        f"""{{
          upstream = h.describeOptions
            (h.eval {{ modules = [ {probe} ]; }}).options.services.{module};
          standIn = h.describeOptions (h.evalStandIn [ ]).options.services.{module};
        }}"""
    )
    upstream = dict(_walk(got["upstream"]))
    stand_in = dict(_walk(got["standIn"]))
    assert len(stand_in) > 5
    problems, missing = [], set()
    for path, option in stand_in.items():
        real = upstream.get(path)
        if real is None:
            missing.add(path)
            continue
        for key in ("type", "hasDefault", "default"):
            if option.get(key) != real.get(key):
                problems.append(f"{path}: {key} {option.get(key)!r}, upstream {real.get(key)!r}")
    if module == "syncoid" and "user" not in upstream:
        assert missing == {"user", "group"}, missing
        missing = set()
        assert problems == [
            "interval: type 'string or list of string', upstream 'string'",
            "localTargetAllow: default ['change-key', 'compression', 'create', 'mount', "
            "'mountpoint', 'receive', 'rollback'], upstream ['change-key', 'compression', "
            "'create', 'destroy', 'mount', 'mountpoint', 'receive', 'rollback']",
        ], problems
        problems = []
    assert not missing, f"not declared upstream: {sorted(missing)}"
    assert not problems, "\n".join(problems)


def test_backup_units_from_the_upstream_modules(upstream_eval: Any) -> None:
    """The documented backup host's restic, Sanoid and syncoid units as the real
    modules render them (where the tree has them): the hooks in ExecStartPre= and
    ExecStopPost=, the replication record after syncoid's own stop commands."""
    present = upstream_eval("h.hasUpstream")
    if not any(present.values()):
        pytest.skip("the nixpkgs tree has none of restic.nix, sanoid.nix, syncoid.nix yet")
    got = upstream_eval(
        f"""
        let r = h.eval {{ modules = [ h.flake.nixosModules.default ({HOST}) ({BACKUP}) ]; }};
        in {{
          texts = lib.mapAttrs (_: u: u.text) (lib.filterAttrs (n: _:
            lib.hasPrefix "restic-backups-gridmate-" n || lib.hasPrefix "syncoid-" n
            || n == "sanoid.service") (h.units r));
          failed = map (a: a.message) (builtins.filter (a: !a.assertion) r.config.assertions);
        }}
        """
    )
    assert got["failed"] == []
    texts = got["texts"]
    if present["restic"]:
        teslamate = texts["restic-backups-gridmate-teslamate.service"]
        assert re.search(r"\nExecStartPre=/nix/store/\S+-pre-start", teslamate)
        assert re.search(r"\nExecStopPost=/nix/store/\S+-post-stop", teslamate)
        assert "backup --tag teslamate --tag telemetry " in teslamate
        assert "\nLoadCredential=smtp_password:/run/secrets/gridmate/smtp-password\n" in teslamate
        maintenance = texts["restic-backups-gridmate-maintenance.service"]
        assert re.search(r"\nExecStart=\S+/bin/restic check --read-data-subset=5%", maintenance)
    if present["sanoid"]:
        assert "--configdir" in texts["sanoid.service"]
    if present["syncoid"]:
        syncoid = texts["syncoid-rpool-services-postgresql.service"]
        stops = re.findall(r"\nExecStopPost=(.*)", syncoid)
        [record] = [s for s in stops if " backup record --kind replication " in s]
        assert record.startswith("+/nix/store/") and len(stops) > 1  # besides zfs unallow
        assert "--recvoptions u --no-privilege-elevation" in syncoid


def test_backup_preseed_policy_and_order_options(nix_eval: Any) -> None:
    """The all-methods-failed policy and the automatic order, for all targets and per
    target; restic stays out of the automatic order unless put there."""
    got = _backup(
        nix_eval,
        """{
          services.gridmate.backup.preseed.onFailure = "start-empty";
          services.gridmate.backup.preseed.methods = [ "local" "syncoid" ];
          services.gridmate.backup.preseed.targets.postgresql.onFailure = "refuse";
          services.gridmate.backup.preseed.targets.scratch = {
            kind = "dataset"; dataset = "rpool/scratch"; units = [ "scratch.service" ];
            methods = [ "syncoid" "local" "restic" ];
          };
        }""",
        body="""{
          inherit failed;
          settings = c.services.gridmate.backup.finalSettings;
          default = c.services.gridmate.backup.preseed.targets.postgresql.methods;
          defaultOrder = (h.eval { modules = [ h.modules ]; }).config
            .services.gridmate.backup.preseed.methods;
        }""",
    )
    assert got["failed"] == []
    assert got["defaultOrder"] == ["syncoid", "local"]
    assert got["settings"]["preseed"] == {
        "methods": ["local", "syncoid"],
        "on_failure": "start-empty",
    }
    targets = got["settings"]["targets"]
    assert targets["postgresql"]["on_failure"] == "refuse"
    assert "methods" not in targets["postgresql"] and got["default"] is None
    assert targets["scratch"]["methods"] == ["syncoid", "local", "restic"]
    assert "on_failure" not in targets["scratch"]


def test_backup_without_preseed_keeps_the_dump_target(nix_eval: Any) -> None:
    """The dump hook reads the teslamate target's connection: it stays in the settings
    when preseed is off, while no preseed unit and no state-directory target exist."""
    got = _backup(
        nix_eval,
        "{ services.gridmate.backup.preseed.enable = lib.mkForce false; }",
        body="""{
          inherit failed;
          targets = builtins.attrNames c.services.gridmate.backup.finalSettings.targets;
          units = builtins.filter (lib.hasPrefix "gridmate-preseed-")
            (builtins.attrNames c.systemd.services);
        }""",
    )
    assert got["failed"] == []
    assert got["targets"] == ["postgresql", "teslamate"]
    assert got["units"] == []


def test_backup_lets_root_dump_as_postgres_over_the_socket(nix_eval: Any) -> None:
    """NixOS's peer authentication refuses root as `postgres`: the module adds root to
    the `postgres` ident map that postgresql.nix's own `local all postgres peer
    map=postgres` line uses, gives another role a line and map of its own ahead of the
    module's `local all all peer`, and leaves both files alone when told to or when the
    database is reached over TCP."""
    body = "{ inherit (c.services.postgresql) identMap authentication; }"
    got = _backup(nix_eval, body=body)
    assert {"postgres root postgres", "postgres postgres postgres"} <= set(
        got["identMap"].splitlines()
    )
    assert "root" not in got["authentication"] and "gridmate" not in got["authentication"]

    got = _backup(
        nix_eval, '{ services.gridmate.backup.teslamate.database.user = "tm_backup"; }', body=body
    )
    assert {"gridmate-backup root tm_backup", "gridmate-backup tm_backup tm_backup"} <= set(
        got["identMap"].splitlines()
    )
    assert "postgres root postgres" not in got["identMap"]
    hba = [
        line.split()
        for line in got["authentication"].splitlines()
        if line and not line.startswith("#")
    ]
    own = hba.index(["local", "all", "tm_backup", "peer", "map=gridmate-backup"])
    assert own < hba.index(["local", "all", "all", "peer"])

    for config in (
        "{ services.gridmate.backup.teslamate.peerMap = false; }",
        '{ services.gridmate.backup.teslamate.database.host = "db.lan"; }',
        "{ services.postgresql.enable = lib.mkForce false; }",
    ):
        got = _backup(nix_eval, config, body=body)
        assert "root" not in got["identMap"] and "gridmate" not in got["identMap"], config
        assert "gridmate" not in got["authentication"], config


@pytest.mark.services
def test_backup_peer_map_admits_root_to_a_real_postgresql(nix_eval: Any) -> None:
    """pg_hba.conf and pg_ident.conf as the PostgreSQL module writes them on the backup
    host, whose own configuration lets `nobody` in as `postgres` too (the `postgres`
    map, as NixOS's manual shows), loaded by a real PostgreSQL server: root (the dump
    and the restore), `postgres` (postgresql-setup) and `nobody` get in as `postgres`
    over the socket, `daemon` does not."""
    import pwd
    import signal
    import tempfile
    import time

    # Debian keeps the server's programs out of PATH, under /usr/lib/postgresql/<major>/bin.
    search = os.pathsep.join(
        [os.environ.get("PATH", ""), *map(str, sorted(Path("/usr/lib/postgresql").glob("*/bin")))]
    )
    binaries = {name: shutil.which(name, path=search) for name in ("initdb", "postgres", "psql")}
    missing = [name for name, path in binaries.items() if path is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found (Debian package postgresql)")
    got = _backup(
        nix_eval,
        '{ services.postgresql.identMap = "postgres nobody postgres\\n"; }',
        body="{ inherit (c.services.postgresql) identMap authentication; }",
    )

    def as_user(name: str) -> dict[str, Any]:
        """subprocess arguments that run the program as that system user."""
        if name == "root":
            return {}
        entry = pwd.getpwnam(name)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    # The server runs as `postgres`, which cannot enter pytest's 0700 tmp_path.
    base = Path(tempfile.mkdtemp(prefix="gridmate-peer-"))
    server = None
    try:
        base.chmod(0o755)
        (base / "pg_hba.conf").write_text(got["authentication"])
        (base / "pg_ident.conf").write_text(got["identMap"])
        shutil.chown(base, "postgres", "postgres")
        data = base / "data"
        initdb = subprocess.run(
            [str(binaries["initdb"]), "-D", str(data), "-U", "postgres"],
            capture_output=True, text=True, check=False, cwd="/", **as_user("postgres"),
        )  # fmt: skip
        assert initdb.returncode == 0, initdb.stderr
        server = subprocess.Popen(
            [str(binaries["postgres"]), "-D", str(data), "-k", str(base),
             "-c", "listen_addresses=", "-c", f"hba_file={base}/pg_hba.conf",
             "-c", f"ident_file={base}/pg_ident.conf"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd="/",
            **as_user("postgres"),
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not (base / ".s.PGSQL.5432").exists():
            assert server.poll() is None, server.communicate()[1]
            assert time.monotonic() < deadline, "PostgreSQL did not open its socket"
            time.sleep(0.2)

        def connect(user: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(binaries["psql"]), "-h", str(base), "-U", "postgres", "-d", "postgres",
                 "-tAc", "SELECT current_user"],
                capture_output=True, text=True, check=False, cwd="/", **as_user(user),
            )  # fmt: skip

        for user in ("root", "postgres", "nobody"):
            admitted = connect(user)
            assert (admitted.returncode, admitted.stdout.strip()) == (0, "postgres"), (
                user,
                admitted.stderr,
            )
        refused = connect("daemon")
        assert refused.returncode != 0
        assert 'Peer authentication failed for user "postgres"' in refused.stderr
    finally:
        if server is not None:
            server.send_signal(signal.SIGINT)  # fast shutdown, as NixOS's unit stops it
            server.communicate(timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def test_backup_secret_paths_stay_out_of_the_store(nix_eval: Any) -> None:
    """Path literals for the repository file, the password and the ssh key are passed by
    name: nothing of them is copied into the world-readable store."""
    got = _backup(
        nix_eval,
        """{
          services.gridmate.backup.restic.repository = lib.mkForce null;
          services.gridmate.backup.restic.repositoryFile = /run/secrets/gridmate/restic-repo;
          services.gridmate.backup.resticPasswordFile = lib.mkForce /run/secrets/gridmate/pw;
          services.gridmate.backup.replication.sshKeyFile = lib.mkForce /run/secrets/gridmate/key;
        }""",
        body="""{
          inherit failed;
          jobs = lib.mapAttrs (_: j: { inherit (j) repositoryFile passwordFile; })
            c.services.restic.backups;
          settings = { inherit (c.services.gridmate.backup.finalSettings) restic zfs; };
          env = c.systemd.services.restic-backups-gridmate-state.environment.RESTIC_REPOSITORY_FILE;
        }""",
    )
    assert got["failed"] == []
    for job in got["jobs"].values():
        assert job == {
            "repositoryFile": "/run/secrets/gridmate/restic-repo",
            "passwordFile": "/run/secrets/gridmate/pw",
        }
    assert got["settings"]["restic"] == {"repository_file": "/run/secrets/gridmate/restic-repo"}
    assert got["settings"]["zfs"]["ssh_key"] == "/run/secrets/gridmate/key"
    assert got["env"] == "/run/secrets/gridmate/restic-repo"


@pytest.mark.parametrize("module", ["restic", "sanoid"])
def test_backup_stand_ins_render_units_as_upstream_does(upstream_eval: Any, module: str) -> None:
    """The documented backup host's restic and Sanoid units, rendered from the stand-in
    and from the real module, are the same text. (syncoid's stand-in keeps only the
    unit keys gridmate relies on; test_backup_units_from_the_upstream_modules checks
    the real one.)"""
    _upstream_backup_module(upstream_eval, module)
    prefix = "restic-backups-" if module == "restic" else "sanoid."
    got = _unit_texts_both_ways(upstream_eval, [HOST, BACKUP], prefix)
    assert got["upstream"], "no unit rendered"
    assert got["standIn"] == got["upstream"]


@pytest.mark.services
def test_backup_preseed_unit_restores_the_database_with_the_rendered_settings(
    nix_eval: Any, tmp_path: Path, postgres_dsn: str
) -> None:
    """gridmate-preseed-teslamate's ExecStart, run with the module's settings (the
    store's gridmate replaced by this checkout's) against real PostgreSQL: the dump
    the prepare hook wrote is loaded into the empty database, and the next start finds
    the database complete and leaves it alone."""
    import sys
    import urllib.parse
    import uuid

    dsn = urllib.parse.urlparse(postgres_dsn)
    host, port = dsn.hostname or "127.0.0.1", dsn.port or 5432
    user, source = dsn.username or "postgres", dsn.path.lstrip("/")
    target = f"gm_bknix_{uuid.uuid4().hex[:8]}"
    psql = ["psql", "-h", host, "-p", str(port), "-U", user, "-v", "ON_ERROR_STOP=1", "-tA"]

    def sql(database: str, statement: str) -> str:
        done = subprocess.run(
            [*psql, "-d", database, "-c", statement], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    sql(source, "CREATE TABLE IF NOT EXISTS cars (id int PRIMARY KEY, name text)")
    sql(source, "INSERT INTO cars VALUES (7, 'Model Y') ON CONFLICT DO NOTHING")
    sql("postgres", f"CREATE DATABASE {target}")
    try:

        def rendered(database: str) -> Any:
            return _backup(
                nix_eval,
                f"""{{
                  services.gridmate.backup.teslamate.dumpDirectory = "{tmp_path}/dumps";
                  services.gridmate.backup.teslamate.database = {{
                    host = "{host}"; port = {port}; user = "{user}";
                    name = "{database}"; owner = "{user}";
                  }};
                  services.gridmate.backup.settings = {{
                    state_directory = "{tmp_path}/state";
                    textfile_directory = "{tmp_path}/textfile";
                    notify = lib.mkForce {{ }};
                  }};
                }}""",
                body="""{
                  settings = c.services.gridmate.backup.finalSettings;
                  prepare = c.services.restic.backups.gridmate-teslamate.backupPrepareCommand;
                  preseed = c.systemd.services.gridmate-preseed-teslamate.serviceConfig.ExecStart;
                }""",
            )

        def run(command: str, config: Path) -> subprocess.CompletedProcess[str]:
            argv = command.split(" ")
            assert argv[0].endswith("/bin/gridmate") and argv[-2] == "--config"
            return subprocess.run(
                [sys.executable, "-m", "gridmate", *argv[1:-1], str(config)],
                env={"PATH": os.environ["PATH"], "PYTHONPATH": os.pathsep.join(sys.path)},
                capture_output=True,
                text=True,
                timeout=300,
            )

        # The backup of the old host: its database dumped by the prepare hook.
        old = rendered(source)
        old_config = tmp_path / "old.toml"
        old_config.write_text(_toml(old["settings"]))
        (tmp_path / "dumps").mkdir()
        dumped = run(old["prepare"], old_config)
        assert dumped.returncode == 0, dumped.stderr
        (tmp_path / "dumps" / f"{source}.dump").rename(tmp_path / "dumps" / f"{target}.dump")

        # The rebuilt host: an empty database, the preseed unit's command.
        new = rendered(target)
        assert new["preseed"].split(" ")[1:4] == ["preseed", "--target", "teslamate"]
        new_config = tmp_path / "new.toml"
        new_config.write_text(_toml(new["settings"]))
        restored = run(new["preseed"], new_config)
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert sql(target, "SELECT name FROM cars WHERE id = 7") == "Model Y"
        metrics = (tmp_path / "textfile" / "gridmate_preseed_teslamate.prom").read_text()
        assert 'gridmate_preseed_result{result="restored",target="teslamate"} 1.0' in metrics
        assert 'gridmate_preseed_method_success{method="local",target="teslamate"} 1.0' in metrics

        again = run(new["preseed"], new_config)
        assert again.returncode == 0, again.stderr
        metrics = (tmp_path / "textfile" / "gridmate_preseed_teslamate.prom").read_text()
        assert 'gridmate_preseed_result{result="already-complete",target="teslamate"} 1.0' in (
            metrics
        )
    finally:
        subprocess.run(
            [*psql, "-d", "postgres", "-c", f"DROP DATABASE IF EXISTS {target} WITH (FORCE)"],
            capture_output=True,
            check=False,
        )


# ------------------------------------------------------------ TeslaMate stack

TESLAMATE = """{
  services.gridmate.teslamate = {
    enable = true;
    encryptionKeyFile = "/run/secrets/tm/key";
    database.passwordFile = "/run/secrets/tm/db";
    mqtt.users.teslamate.passwordFile = "/run/secrets/tm/mqtt";
    mqtt.users.gridmate.passwordFile = "/run/secrets/tm/mqtt-gridmate";
    mqtt.users.homeassistant.passwordFile = "/run/secrets/tm/mqtt-ha";
    grafana.databasePasswordFile = "/run/secrets/tm/grafana-db";
    virtualHost = "tm.example.com";
    caddy.enable = true;
    caddy.forwardAuth.upstream = "127.0.0.1:9091";
  };
  services.postgresql.enable = true;
  services.mosquitto.enable = true;
  services.grafana.enable = true;
  services.caddy.enable = true;
}"""

# The vehicles hub on the same host, with only what TeslaMate does not give it.
TESLAMATE_VEHICLES = """{
  services.gridmate.vehicles = {
    enable = true;
    settings.mqtt.username = "gridmate";
    mqttPasswordFile = "/run/secrets/tm/mqtt-gridmate";
  };
}"""


def _teslamate(nix_eval: Any, *configs: str, body: str = "c") -> Any:
    modules = " ".join(f"({m})" for m in (TESLAMATE, *configs))
    return nix_eval(
        f"""
        let
          r = h.eval {{ modules = [ h.flake.nixosModules.default {modules} ]; }};
          c = r.config;
          failed = map (a: a.message) (builtins.filter (a: !a.assertion) c.assertions);
        in {body}
        """
    )


def test_teslamate_container_is_pinned_and_gets_its_secrets_from_a_runtime_file(
    nix_eval: Any,
) -> None:
    got = _teslamate(
        nix_eval,
        body="""{
          inherit failed; inherit (c) warnings;
          container = { inherit (c.virtualisation.oci-containers.containers.teslamate)
            image imageFile pull environment environmentFiles extraOptions; };
          unit = { inherit (c.systemd.services.podman-teslamate) after requires wants; };
          sc = c.systemd.services.podman-teslamate.serviceConfig;
          text = (h.units r)."podman-teslamate.service".text;
          script = c.systemd.services.podman-teslamate.script;
        }""",
    )
    assert got["failed"] == [] and got["warnings"] == []
    container = got["container"]
    assert re.fullmatch(r"teslamate/teslamate:4\.3\.0@sha256:[0-9a-f]{64}", container["image"])
    assert container["pull"] == "missing" and container["imageFile"] is None
    env = container["environment"]
    assert {k: env[k] for k in ("DATABASE_HOST", "DATABASE_USER", "MQTT_USERNAME", "PORT")} == {
        "DATABASE_HOST": "127.0.0.1",
        "DATABASE_USER": "teslamate",
        "MQTT_USERNAME": "teslamate",
        "PORT": "4000",
    }
    assert env["HTTP_BINDING_ADDRESS"] == "127.0.0.1" and env["VIRTUAL_HOST"] == "tm.example.com"
    # no secret in the (world-readable) environment or unit
    assert not {"ENCRYPTION_KEY", "DATABASE_PASS", "MQTT_PASSWORD"} & set(env)
    assert container["environmentFiles"] == ["/run/teslamate/teslamate.env"]
    assert "--network=host" in container["extraOptions"]
    assert "--cap-drop=ALL" in container["extraOptions"]
    sc = got["sc"]
    assert sc["LoadCredential"] == [
        "teslamate_db_password:/run/secrets/tm/db",
        "teslamate_encryption_key:/run/secrets/tm/key",
        "teslamate_mqtt_password:/run/secrets/tm/mqtt",
    ]
    assert sc["RuntimeDirectory"] == "teslamate" and sc["RuntimeDirectoryMode"] == "0700"
    [write_env] = [e for e in sc["ExecStartPre"] if "write-env" in e]
    assert write_env.endswith(
        " /run/teslamate/teslamate.env ENCRYPTION_KEY=teslamate_encryption_key "
        "DATABASE_PASS=teslamate_db_password MQTT_PASSWORD=teslamate_mqtt_password"
    )
    stop_post = sc["ExecStopPost"] if isinstance(sc["ExecStopPost"], list) else [sc["ExecStopPost"]]
    assert any("remove-env" in e for e in stop_post)
    assert "postgresql.target" in got["unit"]["after"] and got["unit"]["requires"] == [
        "postgresql.target"
    ]
    assert "mosquitto.service" in got["unit"]["after"]
    script = got["script"]
    assert "--env-file /run/teslamate/teslamate.env" in script
    assert "--pull missing" in script and container["image"] in script
    text = got["text"]
    assert re.search(r"\nExecStopPost=/nix/store/\S+-gridmate-teslamate-remove-env\n", text)


def test_teslamate_from_a_host_built_image(nix_eval: Any) -> None:
    got = _teslamate(
        nix_eval,
        """{
          services.gridmate.teslamate.image = lib.mkForce "teslamate-sim:latest";
          services.gridmate.teslamate.imageFile = h.package "teslamate-sim-image";
        }""",
        body="""{
          inherit failed;
          inherit (c.virtualisation.oci-containers.containers.teslamate) pull image;
          wants = c.systemd.services.podman-teslamate.wants;
        }""",
    )
    assert got["failed"] == []
    assert got["pull"] == "never" and got["image"] == "teslamate-sim:latest"
    assert "network-online.target" not in got["wants"]


def test_teslamate_database_roles_and_passwords(nix_eval: Any) -> None:
    got = _teslamate(
        nix_eval,
        body="""{
          inherit (c.services.postgresql) ensureDatabases;
          users = map (u: u.name) c.services.postgresql.ensureUsers;
          setup = { inherit (c.systemd.services.postgresql-setup) script serviceConfig; };
        }""",
    )
    assert got["ensureDatabases"] == ["teslamate"]
    assert got["users"] == ["teslamate", "teslamate_grafana"]
    setup = got["setup"]
    assert setup["serviceConfig"]["LoadCredential"] == [
        "teslamate_db_password:/run/secrets/tm/db",
        "teslamate_grafana_db_password:/run/secrets/tm/grafana-db",
    ]
    script = setup["script"]
    assert "CREATE EXTENSION IF NOT EXISTS cube" in script
    assert "CREATE EXTENSION IF NOT EXISTS earthdistance" in script
    assert 'ALTER DATABASE "teslamate" OWNER TO "teslamate"' in script
    assert 'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "teslamate_grafana"' in script
    assert "private" not in script  # the tokens' schema stays closed to Grafana
    # passwords come from the credentials, through psql's \getenv, never from argv
    assert script.count("-set-role-password.sql") == 2
    assert '"$CREDENTIALS_DIRECTORY/teslamate_db_password"' in script
    assert "/run/secrets" not in script
    assert "pg_is_in_recovery()" in script


def test_teslamate_grafana_datasource_reads_its_password_from_a_file(nix_eval: Any) -> None:
    got = _teslamate(
        nix_eval,
        '{ services.gridmate.teslamate.grafana.dashboards = "/srv/teslamate/grafana/dashboards"; }',
        body="""{
          provision = c.services.grafana.provision;
          credentials = c.systemd.services.grafana.serviceConfig.LoadCredential;
        }""",
    )
    provision = _without_nulls(got["provision"])
    assert provision["enable"] is True
    [teslamate] = [
        d for d in provision["datasources"]["settings"]["datasources"] if d["name"] == "TeslaMate"
    ]
    assert teslamate["type"] == "postgres" and teslamate["user"] == "teslamate_grafana"
    assert teslamate["secureJsonData"]["password"] == (
        "$__file{/run/credentials/grafana.service/teslamate_grafana_db_password}"
    )
    assert got["credentials"] == ["teslamate_grafana_db_password:/run/secrets/tm/grafana-db"]
    providers = {p["name"]: p for p in provision["dashboards"]["settings"]["providers"]}
    assert providers["TeslaMate"]["options"]["path"] == "/srv/teslamate/grafana/dashboards"
    assert providers["TeslaMate"]["options"]["foldersFromFilesStructure"] is True
    assert providers["gridmate"]["options"]["path"].endswith("-dashboards")


def test_teslamate_caddy_virtual_host_with_forward_auth(nix_eval: Any) -> None:
    config = _teslamate(nix_eval, body='c.services.caddy.virtualHosts."tm.example.com".extraConfig')
    assert "forward_auth 127.0.0.1:9091 {" in config
    assert "uri /api/authz/forward-auth" in config
    assert "copy_headers Remote-User Remote-Groups Remote-Email Remote-Name" in config
    assert config.index("forward_auth") < config.index("reverse_proxy 127.0.0.1:4000")


def test_teslamate_mosquitto_users_and_acls(nix_eval: Any) -> None:
    [listener] = _teslamate(nix_eval, body="c.services.mosquitto.listeners")
    assert (listener["address"], listener["port"]) == ("127.0.0.1", 1883)
    users = {name: (u["passwordFile"], u["acl"]) for name, u in listener["users"].items()}
    assert users == {
        "teslamate": ("/run/secrets/tm/mqtt", ["readwrite teslamate/#"]),
        "gridmate": (
            "/run/secrets/tm/mqtt-gridmate",
            ["read teslamate/#", "readwrite gridmate/#", "readwrite homeassistant/#"],
        ),
        "homeassistant": (
            "/run/secrets/tm/mqtt-ha",
            ["read teslamate/#", "read gridmate/#", "readwrite homeassistant/#"],
        ),
    }
    # a user without a password file is left out; the listener can be the user's own
    [listener] = _teslamate(
        nix_eval,
        "{ services.gridmate.teslamate.mqtt.users.homeassistant.passwordFile = lib.mkForce null; }",
        body="c.services.mosquitto.listeners",
    )
    assert sorted(listener["users"]) == ["gridmate", "teslamate"]
    assert (
        _teslamate(
            nix_eval,
            "{ services.gridmate.teslamate.mqtt.manageListener = false; }",
            body="c.services.mosquitto.listeners",
        )
        == []
    )


def test_teslamate_wires_the_vehicles_hub_unless_overridden(nix_eval: Any) -> None:
    got = _teslamate(
        nix_eval,
        TESLAMATE_VEHICLES,
        '{ services.gridmate.teslamate.mqtt.namespace = "home"; }',
        body="""{
          inherit failed;
          settings = c.services.gridmate.vehicles.renderedSettings;
          credentials = c.systemd.services.gridmate-vehicles.serviceConfig.LoadCredential;
        }""",
    )
    assert got["failed"] == []
    settings = got["settings"]
    assert settings["teslamate"]["enable"] is True
    assert settings["teslamate"]["namespace"] == "home"
    assert settings["teslamate"]["mqtt"] == {
        "host": "127.0.0.1",
        "port": 1883,
        "username": "gridmate",
    }
    assert (
        settings["tesla"]["teslamate"]["dsn"] == "postgresql://teslamate@127.0.0.1:5432/teslamate"
    )
    assert "kafka" not in settings
    assert got["credentials"] == [
        "mqtt_password:/run/secrets/tm/mqtt-gridmate",
        "teslamate_db_password:/run/secrets/tm/db",
        "teslamate_encryption_key:/run/secrets/tm/key",
        "teslamate_mqtt_password:/run/secrets/tm/mqtt-gridmate",
    ]
    overridden = _teslamate(
        nix_eval,
        TESLAMATE_VEHICLES,
        """{
          services.gridmate.vehicles.settings.teslamate.mqtt.host = "broker.lan";
          services.gridmate.vehicles.teslamateEncryptionKeyFile = "/run/secrets/other-key";
        }""",
        body="""{
          host = c.services.gridmate.vehicles.renderedSettings.teslamate.mqtt.host;
          credentials = c.systemd.services.gridmate-vehicles.serviceConfig.LoadCredential;
        }""",
    )
    assert overridden["host"] == "broker.lan"
    assert "teslamate_encryption_key:/run/secrets/other-key" in overridden["credentials"]
    unwired = _teslamate(
        nix_eval,
        TESLAMATE_VEHICLES,
        """{
          services.gridmate.teslamate.wireVehicles = false;
          services.gridmate.vehicles.settings.kafka.namespace = "tesla";
          services.gridmate.vehicles.settings.kafka.bootstrap_servers = "kafka.lan:9092";
        }""",
        body='c.services.gridmate.vehicles.renderedSettings.teslamate or "none"',
    )
    assert unwired == "none"


# Deliberate mistakes, each refused with a message that says what to set.
TESLAMATE_MISTAKES = {
    "unpinned image": (
        '{ services.gridmate.teslamate.image = lib.mkForce "teslamate/teslamate:latest"; }',
        ["is not pinned", "@sha256:<multi-arch index digest>", "imageFile"],
    ),
    "no PostgreSQL": (
        "{ services.postgresql.enable = lib.mkForce false; }",
        ["services.postgresql.enable is false"],
    ),
    "PostgreSQL 16 before 16.7": (
        '{ services.postgresql.package = h.postgresql "16.4"; }',
        ["refuses PostgreSQL 16.4", "pkgs.postgresql_17"],
    ),
    "PostgreSQL 17 before 17.3": (
        '{ services.postgresql.package = h.postgresql "17.2"; }',
        ["refuses PostgreSQL 17.2"],
    ),
    "no Mosquitto": (
        "{ services.mosquitto.enable = lib.mkForce false; }",
        ["services.mosquitto.enable is false"],
    ),
    "no MQTT password for TeslaMate": (
        "{ services.gridmate.teslamate.mqtt.users.teslamate.passwordFile = lib.mkForce null; }",
        ["mqtt.users.teslamate.passwordFile is not set"],
    ),
    "Grafana without the read-only role's password": (
        "{ services.gridmate.teslamate.grafana.databasePasswordFile = lib.mkForce null; }",
        ["grafana.databasePasswordFile is not", "teslamate_grafana"],
    ),
    "the vehicles hub wired without a password for its MQTT user": (
        TESLAMATE_VEHICLES[:-1]
        + " services.gridmate.teslamate.mqtt.users.gridmate.passwordFile = lib.mkForce null; }",
        ['the MQTT user "gridmate"', "mqtt.users.gridmate.passwordFile"],
    ),
    "Caddy without a host name": (
        "{ services.gridmate.teslamate.virtualHost = lib.mkForce null; }",
        ["caddy.enable is set but services.gridmate.teslamate.virtualHost is not"],
    ),
}


@pytest.mark.parametrize("mistake", sorted(TESLAMATE_MISTAKES))
def test_teslamate_mistakes_are_refused_with_what_to_set(nix_eval: Any, mistake: str) -> None:
    config, phrases = TESLAMATE_MISTAKES[mistake]
    failed = _teslamate(nix_eval, config, body="failed")
    assert len(failed) == 1, failed
    message = " ".join(failed[0].split())
    for phrase in phrases:
        assert phrase in message, (phrase, message)


def test_teslamate_accepts_the_postgresql_releases_it_supports(nix_eval: Any) -> None:
    for version in ("16.7", "16.10", "17.3", "17.6", "18.1"):
        config = f'{{ services.postgresql.package = h.postgresql "{version}"; }}'
        assert _teslamate(nix_eval, config, body="failed") == [], version


def test_teslamate_warns_about_secrets_in_the_store_and_an_open_virtual_host(
    nix_eval: Any, tmp_path: Path
) -> None:
    key = tmp_path / "key"
    key.write_text("in-the-store\n")
    warnings = _teslamate(
        nix_eval,
        f"""{{
          services.gridmate.teslamate.encryptionKeyFile = lib.mkForce "${{{tmp_path}/key}}";
          services.gridmate.teslamate.caddy.forwardAuth = lib.mkForce null;
        }}""",
        body="c.warnings",
    )
    assert len(warnings) == 2, warnings
    text = " ".join(" ".join(warnings).split())
    assert "encryptionKeyFile (/nix/store/" in text and "is in the Nix store" in text
    assert "without services.gridmate.teslamate.caddy.forwardAuth" in text


SERVICE_OPTIONS = {
    "oci-containers": "virtualisation.oci-containers",
    "mosquitto": "services.mosquitto",
    "postgresql": "services.postgresql",
    "grafana": "services.grafana",
    "prometheus": "services.prometheus",
    "caddy": "services.caddy",
}


@pytest.mark.parametrize("service", sorted(SERVICE_OPTIONS))
def test_service_stand_ins_declare_options_as_upstream_does(
    upstream_eval: Any, service: str
) -> None:
    """Each option a service stand-in declares has the type and default of the real module."""
    tree = _upstream_tree()
    assert tree is not None
    why = _real_services(tree)[service]
    if why is not None:
        pytest.skip(f"the stand-in for {service} is not compared: {why}")
    path = SERVICE_OPTIONS[service]
    got = upstream_eval(
        f"""
        let
          at = o: lib.attrByPath (lib.splitString "." "{path}") {{ }} o;
        in {{
          upstream = h.describeOptions (at (h.eval {{ modules = [ ]; }}).options);
          standIn = h.describeOptions (at (h.evalStandIn [ ]).options);
        }}
        """
    )
    upstream = dict(_walk(got["upstream"]))
    stand_in = dict(_walk(got["standIn"]))
    assert stand_in, "the walk found no options in the stand-in"
    problems = []
    for option_path, option in stand_in.items():
        real = upstream.get(option_path)
        if real is None:
            problems.append(f"{option_path}: not declared upstream")
            continue
        for key in ("type", "hasDefault", "default"):
            if option.get(key) != real.get(key):
                problems.append(
                    f"{option_path}: {key} {option.get(key)!r}, upstream {real.get(key)!r}"
                )
    assert not problems, "\n".join(problems)


def test_teslamate_unit_renders_as_with_upstream_oci_containers(upstream_eval: Any) -> None:
    """podman-teslamate.service from the oci-containers stand-in is upstream's, byte for byte."""
    tree = _upstream_tree()
    assert tree is not None
    why = _real_services(tree)["oci-containers"]
    if why is not None:
        pytest.skip(f"no upstream oci-containers module: {why}")
    got = upstream_eval(
        f"""
        let
          modules = [ h.flake.nixosModules.default ({TESLAMATE}) ];
          pick = units: units."podman-teslamate.service".text;
          scripts = r: {{
            inherit (r.config.systemd.services.podman-teslamate) script preStop postStop;
          }};
          up = h.eval {{ inherit modules; }};
          standIn = h.evalStandIn modules;
        in {{
          upstream = pick (h.units up) ;
          standIn = pick (h.standInUnits standIn);
          upstreamScripts = scripts up;
          standInScripts = scripts standIn;
        }}
        """
    )
    assert got["standInScripts"] == got["upstreamScripts"]
    assert got["standIn"] == got["upstream"]


def test_postgresql_units_render_as_with_upstream_postgresql(upstream_eval: Any) -> None:
    """postgresql-setup.service (with what TeslaMate and the backup add to it) and
    postgresql.target from the postgresql stand-in are upstream's, byte for byte."""
    tree = _upstream_tree()
    assert tree is not None
    why = _real_services(tree)["postgresql"]
    if why is not None:
        pytest.skip(f"no upstream postgresql module: {why}")
    got = upstream_eval(
        f"""
        let
          modules = [ h.flake.nixosModules.default ({TESLAMATE}) ({BACKUP}) ];
          pick = render: r: let units = render r; in {{
            setup = units."postgresql-setup.service".text;
            target = units."postgresql.target".text;
            script = r.config.systemd.services.postgresql-setup.script;
            inherit (r.config.services.postgresql) identMap authentication;
          }};
        in {{
          upstream = pick h.units (h.eval {{ inherit modules; }});
          standIn = pick h.standInUnits (h.evalStandIn modules);
        }}
        """
    )
    upstream, stand_in = got["upstream"], got["standIn"]
    assert "\nBindsTo=postgresql.service postgresql-setup.service\n" in upstream["target"]
    assert "LoadCredential=teslamate_db_password:" in upstream["setup"]
    for key in ("script", "setup", "target", "identMap", "authentication"):
        assert stand_in[key] == upstream[key], key


def _acl_file(listener: dict[str, Any]) -> str:
    """The ACL file nixpkgs' mosquitto.nix writes for a listener (its makeACLFile)."""
    lines = list(listener["acl"])
    for name, user in listener["users"].items():
        lines += [f"user {name}", *(f"topic {entry}" for entry in user["acl"])]
    return "\n".join(lines)


@pytest.mark.services
async def test_teslamate_acls_hold_in_a_real_mosquitto(stand_in_eval: Any, tmp_path: Path) -> None:
    """Each user may write only what the module allows; gridmate's topics are its own."""
    import aiomqtt

    from gridmate.sim.brokers import mosquitto_broker, write_mosquitto_password_file

    [listener] = _teslamate(stand_in_eval, body="c.services.mosquitto.listeners")
    acl = tmp_path / "acl.conf"
    acl.write_text(_acl_file(listener))
    users = ("teslamate", "gridmate", "homeassistant")
    passwords = write_mosquitto_password_file(tmp_path / "passwd", {u: f"pw-{u}" for u in users})

    async with mosquitto_broker(password_file=passwords, extra_config=[f"acl_file {acl}"]) as (
        host,
        port,
    ):

        def client(user: str) -> aiomqtt.Client:
            return aiomqtt.Client(host, port, username=user, password=f"pw-{user}")

        async def delivered(writer: str, topic: str) -> bool:
            """Whether `writer`'s message on `topic` reaches a reader allowed to see it.

            The reader is gridmate, which may read all of it. The writer then
            publishes on a topic it may write; Mosquitto keeps one client's messages
            in order, so when that marker arrives first, the message before it was
            dropped."""
            marker = {"teslamate": "teslamate/m", "gridmate": "gridmate/m"}.get(
                writer, "homeassistant/m"
            )
            async with client("gridmate") as watcher, client(writer) as publisher:
                await watcher.subscribe(topic, qos=1)
                await watcher.subscribe(marker, qos=1)
                await publisher.publish(topic, b"probe", qos=1)
                await publisher.publish(marker, b"marker", qos=1)
                async for message in watcher.messages:
                    return str(message.topic) == topic

            raise AssertionError("no message arrived")

        assert await delivered("teslamate", "teslamate/cars/1/state")
        assert not await delivered("gridmate", "teslamate/cars/1/state")
        assert not await delivered("homeassistant", "teslamate/cars/1/state")
        assert await delivered("gridmate", "gridmate/vehicles/5YJ3/state")
        assert not await delivered("homeassistant", "gridmate/vehicles/5YJ3/set")
        assert not await delivered("teslamate", "gridmate/vehicles/5YJ3/set")
        assert await delivered("homeassistant", "homeassistant/status")
        assert await delivered("gridmate", "homeassistant/sensor/x/config")


# ------------------------------------------------------------ monitoring


def test_alert_rules_are_added_by_one_option_when_prometheus_runs(nix_eval: Any) -> None:
    body = "map toString c.services.prometheus.ruleFiles"
    assert _host(nix_eval, "{ services.prometheus.enable = true; }", body=body) == []
    [rules] = _host(
        nix_eval,
        "{ services.prometheus.enable = true; services.gridmate.monitoring.alertRules = true; }",
        body=body,
    )
    assert rules == str(ROOT / "nix" / "monitoring" / "alerts.yml")
    # no Prometheus on this host: nothing to add it to
    assert _host(nix_eval, "{ services.gridmate.monitoring.alertRules = true; }", body=body) == []


def test_grafana_gets_gridmates_dashboard_and_a_datasource(nix_eval: Any) -> None:
    got = _host(
        nix_eval,
        "{ services.grafana.enable = true; services.prometheus.enable = true; }",
        body="{ inherit failed; provision = c.services.grafana.provision; }",
    )
    assert got["failed"] == []
    provision = _without_nulls(got["provision"])
    [provider] = provision["dashboards"]["settings"]["providers"]
    assert provider["name"] == provider["folder"] == "gridmate"
    assert re.fullmatch(r"/nix/store/[a-z0-9]{32}-dashboards", provider["options"]["path"])
    [datasource] = provision["datasources"]["settings"]["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://127.0.0.1:9090"
    off = _host(
        nix_eval,
        """{
          services.grafana.enable = true;
          services.gridmate.monitoring.grafanaDashboard = false;
        }""",
        body="c.services.grafana.provision.dashboards.settings",
    )
    assert off is None
    failed = _failed(nix_eval, "{ services.gridmate.monitoring.grafanaDashboard = true; }")
    assert len(failed) == 1 and "services.grafana.enable is not" in failed[0]


def _scram_matches(verifier: str, password: str) -> bool:
    """Whether a PostgreSQL SCRAM-SHA-256 verifier is one of ``password`` (RFC 5802)."""
    import base64
    import hashlib
    import hmac

    iterations_salt, keys = verifier.removeprefix("SCRAM-SHA-256$").split("$")
    iterations, salt = iterations_salt.split(":")
    stored_key = base64.b64decode(keys.split(":")[0])
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(salt), int(iterations)
    )
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    return hmac.compare_digest(hashlib.sha256(client_key).digest(), stored_key)


@pytest.mark.services
def test_teslamate_database_setup_runs_against_postgresql(nix_eval: Any, tmp_path: Path) -> None:
    """postgresql-setup's script as its unit runs it (`set -e`): the PostgreSQL module's
    ensure steps, then what the TeslaMate module appends, run as the superuser against
    the real PostgreSQL: owner, extensions, passwords, and a Grafana role that reads
    `public` (tables TeslaMate creates later included) but not `private`, where the
    tokens are."""
    import uuid

    psql = shutil.which("psql")
    if psql is None:
        pytest.fail("psql is not installed (Debian package postgresql-client; ./dev setup)")
    admin_dsn = os.environ.get(
        "GRIDMATE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    name = f"gm_tm_{uuid.uuid4().hex[:8]}"
    reader = f"{name}_grafana"
    setup = _teslamate(
        nix_eval,
        f"""{{
          services.gridmate.teslamate.database = {{ name = "{name}"; user = "{name}"; }};
          services.gridmate.teslamate.grafana.databaseUser = "{reader}";
        }}""",
        body="{ inherit (c.systemd.services.postgresql-setup) script environment; }",
    )
    assert setup["environment"]["PGPORT"] == "5432"
    # the host's psql as the superuser, in place of the store path the unit would use;
    # the module's own steps run `psql` from PATH with the PG* variables below
    admin = urllib.parse.urlsplit(admin_dsn)
    local_psql = f"{psql} -h {admin.hostname} -U {admin.username or 'postgres'}"
    script = re.sub(r"/nix/store/\S+/bin/psql", local_psql, setup["script"])
    sql_file = ROOT / "nix" / "teslamate" / "set-role-password.sql"
    script = re.sub(r"/nix/store/[a-z0-9]{32}-set-role-password\.sql", str(sql_file), script)
    # nixos/lib/systemd-lib.nix's makeJobScript
    script = f"set -e\n\n{script}"
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "teslamate_db_password").write_text("owner's pass'word\n")
    (credentials / "teslamate_grafana_db_password").write_text("reader-password\n")
    environment = {
        **os.environ,
        "CREDENTIALS_DIRECTORY": str(credentials),
        "PGHOST": admin.hostname or "127.0.0.1",
        "PGPORT": str(admin.port or 5432),
        "PGUSER": admin.username or "postgres",
    }

    def sql(statement: str, database: str = "postgres") -> str:
        dsn = admin_dsn.rsplit("/", 1)[0] + f"/{database}"
        return subprocess.run(
            [psql, dsn, "--no-psqlrc", "--quiet", "-v", "ON_ERROR_STOP=1", "-tAc", statement],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    try:
        result = subprocess.run(
            ["bash", "-c", script], env=environment, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
        assert "pass'word" not in result.stdout + result.stderr
        assert sql(f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{name}'") == (
            name
        )
        assert sql("SELECT string_agg(extname, ',' ORDER BY extname) FROM pg_extension", name) == (
            "cube,earthdistance,plpgsql"
        )
        verifier = sql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{name}'")
        assert _scram_matches(verifier, "owner's pass'word")
        verifier = sql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{reader}'")
        assert _scram_matches(verifier, "reader-password")
        # TeslaMate's migrations run later, as its own role
        sql(
            f'SET ROLE "{name}"; CREATE TABLE public.positions (id int); '
            "INSERT INTO public.positions VALUES (1); CREATE SCHEMA private; "
            "CREATE TABLE private.tokens (access bytea)",
            name,
        )
        assert sql(f'SET ROLE "{reader}"; SELECT count(*) FROM public.positions', name) == "1"
        with pytest.raises(subprocess.CalledProcessError) as denied:
            sql(f'SET ROLE "{reader}"; SELECT count(*) FROM private.tokens', name)
        assert "permission denied" in denied.value.stderr
        with pytest.raises(subprocess.CalledProcessError):
            sql(f'SET ROLE "{reader}"; INSERT INTO public.positions VALUES (2)', name)
        # every start of postgresql-setup runs it again
        again = subprocess.run(
            ["bash", "-c", script], env=environment, capture_output=True, text=True, check=False
        )
        assert again.returncode == 0, again.stderr
    finally:
        sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        sql(f'DROP ROLE IF EXISTS "{name}"')
        sql(f'DROP ROLE IF EXISTS "{reader}"')


@pytest.mark.services
def test_teslamate_caddy_configuration_is_accepted_by_caddy(
    stand_in_eval: Any, tmp_path: Path
) -> None:
    """The virtual host, as caddy/default.nix wraps it (`<host> { ... }`), adapted by the
    real Caddy: every request goes through forward_auth before reaching TeslaMate."""
    caddy = shutil.which("caddy")
    if caddy is None:
        pytest.fail("caddy is not installed (Debian package caddy; ./dev setup)")
    host = _teslamate(
        stand_in_eval,
        body='{ inherit (c.services.caddy.virtualHosts."tm.example.com") hostName extraConfig; }',
    )
    caddyfile = tmp_path / "Caddyfile"
    caddyfile.write_text(f"{host['hostName']} {{\n{host['extraConfig']}\n}}\n")
    result = subprocess.run(
        [caddy, "adapt", "--config", str(caddyfile), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    [server] = config["apps"]["http"]["servers"].values()
    [route] = server["routes"]
    assert route["match"] == [{"host": ["tm.example.com"]}]
    handlers = json.dumps(route["handle"])
    # forward_auth becomes a reverse_proxy to the authenticator that copies the
    # headers on a 2xx answer; it comes before the proxy to TeslaMate
    assert '"dial": "127.0.0.1:9091"' in handlers and "/api/authz/forward-auth" in handlers
    assert "Remote-User" in handlers
    assert handlers.index("127.0.0.1:9091") < handlers.index('"dial": "127.0.0.1:4000"')
