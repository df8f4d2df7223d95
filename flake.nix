{
  description = "gridmate: self-hosted Tesla home-energy and telemetry hub for NixOS homelabs";

  # The pinned revision and where its hash was taken from: docs/nixpkgs-pin.md.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;

      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];

      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # Defaults services.gridmate.package to this flake's package, so the
      # modules need no overlay (see nix/package-default.nix).
      packageDefault = import ./nix/package-default.nix self;

      # Each example host of docs/nixos.md, evaluated as a complete NixOS system.
      exampleChecks =
        system: pkgs:
        import ./nix/examples/checks.nix {
          inherit lib pkgs system;
          inherit (nixpkgs.lib) nixosSystem;
          gridmateModule = self.nixosModules.default;
          examples = import ./nix/examples;
        };

      withPackageDefault = module: {
        _file = "gridmate/flake.nix#nixosModules";
        imports = [
          packageDefault
          module
        ];
      };
    in
    {
      packages = forAllSystems (pkgs: {
        default = self.packages.${pkgs.stdenv.hostPlatform.system}.gridmate;
        gridmate = pkgs.callPackage ./nix/package.nix { };
      });

      # Adds `gridmate` to pkgs (built against the importing system's
      # nixpkgs) and to every python3xPackages set, for Python environments
      # that import gridmate as a library.
      overlays.default = final: prev: {
        gridmate = final.callPackage ./nix/package.nix { };
        pythonPackagesExtensions = prev.pythonPackagesExtensions ++ [
          (pyFinal: _pyPrev: {
            gridmate = pyFinal.toPythonModule (
              final.gridmate.override { python3Packages = pyFinal; }
            );
          })
        ];
      };

      nixosModules = {
        default = withPackageDefault ./modules;
        vehicles = withPackageDefault ./modules/vehicles.nix;
        energy = withPackageDefault ./modules/energy.nix;
        report = withPackageDefault ./modules/report.nix;
        backup = withPackageDefault ./modules/backup.nix;
        teslamate = withPackageDefault ./modules/teslamate.nix;
        monitoring = withPackageDefault ./modules/monitoring.nix;
      };

      checks = forAllSystems (
        pkgs:
        let
          system = pkgs.stdenv.hostPlatform.system;
          nixFiles = lib.fileset.toSource {
            root = ./.;
            fileset = lib.fileset.fileFilter (file: file.hasExt "nix") ./.;
          };
        in
        {
          # Builds the package and runs its pytest suite (checkPhase).
          package = self.packages.${system}.default;

          formatting =
            pkgs.runCommand "gridmate-nixfmt-check"
              {
                nativeBuildInputs = [ pkgs.nixfmt ];
              }
              ''
                cd ${nixFiles}
                find . -name '*.nix' -print0 | xargs -0 nixfmt --check
                touch $out
              '';
        }
        // exampleChecks system pkgs
        // lib.optionalAttrs (system == "x86_64-linux") (import ./nix/tests { inherit pkgs self; })
      );

      devShells = forAllSystems (
        pkgs:
        let
          gridmate = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
          python = pkgs.python3.withPackages (
            ps:
            gridmate.passthru.pythonDependencies ps
            ++ gridmate.passthru.pythonCheckDependencies ps
            ++ [ ps.mypy ]
          );
        in
        {
          default = pkgs.mkShell {
            packages = [
              python
              pkgs.protobuf
              pkgs.ruff
              pkgs.mosquitto
              pkgs.postgresql
              pkgs.nixfmt
            ]
            ++ gridmate.passthru.demoTools;
            shellHook = ''
              export PYTHONPATH="$PWD/src''${PYTHONPATH:+:$PYTHONPATH}"
            '';
          };
        }
      );

      # `nix fmt`: nixfmt (RFC 166 style) over the whole tree, via treefmt.
      formatter = forAllSystems (pkgs: pkgs.nixfmt-tree);

      apps = forAllSystems (pkgs: {
        default = {
          type = "app";
          program = toString (
            pkgs.writeShellScript "gridmate-demo" ''
              exec ${lib.getExe self.packages.${pkgs.stdenv.hostPlatform.system}.default} demo "$@"
            ''
          );
          meta.description = "Run gridmate's demo: every component against built-in simulators";
        };
      });
    };
}
