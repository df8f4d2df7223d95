# gridmate as a Nix package: `pkgs.callPackage ./nix/package.nix { }`.
#
# Every Python dependency comes from nixpkgs' python3Packages, so no lock
# file tooling (uv2nix, poetry2nix) is needed. The protobuf Python code is
# generated at build time from proto/*.proto with nixpkgs' protoc, the same
# protobuf release that python3Packages.protobuf is built against (protoc
# must never be newer than the protobuf runtime).
{
  lib,
  python3Packages,
  protobuf,
  mosquitto,
  # Kafka-protocol broker used by `gridmate demo`; nixpkgs only has it in
  # recent revisions (pkgs/by-name/ta/tansu), so it is optional: callPackage
  # passes pkgs.tansu when it exists and null otherwise.
  tansu ? null,
}:
let
  root = ../.;

  noBytecode = lib.fileset.fileFilter (file: !(file.hasExt "pyc")) root;

  # nix/package-files.txt lists the source set; ./dev test runs the check
  # phase's tests on a copy of exactly these files.
  listedFiles = builtins.filter (line: line != "" && !lib.hasPrefix "#" line) (
    lib.splitString "\n" (builtins.readFile ./package-files.txt)
  );

  sourceFiles = lib.fileset.intersection noBytecode (
    lib.fileset.unions (map (name: lib.fileset.maybeMissing (root + "/${name}")) listedFiles)
  );

  src = lib.fileset.toSource {
    inherit root;
    fileset = sourceFiles;
  };

  version =
    let
      found = builtins.match ".*__version__ = \"([^\"]+)\".*" (
        builtins.readFile ../src/gridmate/__init__.py
      );
    in
    if found == null then
      throw "gridmate: no __version__ = \"...\" line in src/gridmate/__init__.py"
    else
      builtins.head found;

  # Functions of a Python package set, so the dev shell and the overlay can
  # reuse them with another interpreter's set. No `with ps;`: the `protobuf`
  # argument above (the C++ protoc) would shadow ps.protobuf.
  pythonDependencies = ps: [
    ps.aiohttp
    ps.aiokafka
    ps.aiomqtt
    ps.aiosmtpd
    ps.aiosmtplib
    ps.apprise
    ps.asyncpg
    ps.cryptography
    ps.holidays
    ps.httpx
    ps.matplotlib
    ps.prometheus-client
    ps.protobuf
    ps.pydantic
    ps.pydantic-settings
    ps.sdnotify
  ];

  pythonCheckDependencies = ps: [
    ps.pytest
    ps.pytest-asyncio
    ps.hypothesis
  ];

  # Brokers `gridmate demo` starts by itself; appended to PATH, so a
  # system-wide install still takes precedence.
  demoTools = [ mosquitto ] ++ lib.optional (tansu != null) tansu;
in
python3Packages.buildPythonApplication {
  pname = "gridmate";
  inherit version src;
  pyproject = true;

  build-system = [ python3Packages.hatchling ];

  dependencies = pythonDependencies python3Packages;

  # protoc for preBuild.
  nativeBuildInputs = [ protobuf ];

  preBuild = ''
    if [ ! -e scripts/gen-proto ]; then
      echo "gridmate: scripts/gen-proto is missing; it generates the protobuf code from proto/*.proto" >&2
      exit 1
    fi
    chmod +x scripts/gen-proto
    patchShebangs scripts/gen-proto
    scripts/gen-proto --protoc "$(command -v protoc)"
  '';

  makeWrapperArgs = [
    "--suffix"
    "PATH"
    ":"
    (lib.makeBinPath demoTools)
  ];

  nativeCheckInputs = pythonCheckDependencies python3Packages;

  # Tests marked `services` need real PostgreSQL/Mosquitto/Kafka/SMTP servers
  # and `netns` needs root; neither is available in the build sandbox.
  checkPhase = ''
    runHook preCheck
    export HOME="$(mktemp -d)"
    export PYTHONPATH="$out/${python3Packages.python.sitePackages}''${PYTHONPATH:+:$PYTHONPATH}"
    pytest -m "not services and not netns" -p no:cacheprovider
    runHook postCheck
  '';

  pythonImportsCheck = [
    "gridmate"
    "gridmate.cli"
  ];

  passthru = {
    inherit pythonDependencies pythonCheckDependencies demoTools;
  };

  meta = {
    description = "Self-hosted Tesla home-energy and telemetry hub: Fleet Telemetry and TeslaMate to Home Assistant, time-of-use Powerwall and thermostat control";
    license = lib.licenses.mit;
    mainProgram = "gridmate";
    platforms = lib.platforms.linux;
  };
}
