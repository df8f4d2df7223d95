# `checks.<system>.example-<name>` (flake.nix): each example host evaluated
# as a complete NixOS system. A check forces the system's derivation, so
# every option, type, assertion and warning is evaluated against the pinned
# nixpkgs, and builds nothing else: it needs no KVM and no system closure.
{
  lib,
  pkgs,
  system,
  nixosSystem,
  gridmateModule,
  examples,
}:
lib.mapAttrs' (
  name: example:
  let
    host = nixosSystem {
      modules = [
        { nixpkgs.hostPlatform = system; }
        gridmateModule
        ./machine.nix
        example
      ];
    };
    # NixOS only prints warnings; a documented example must have none.
    warnings = host.config.warnings;
  in
  lib.nameValuePair "example-${name}" (
    if warnings != [ ] then
      throw "gridmate example ${name} has warnings: ${lib.concatStringsSep "; " warnings}"
    else
      pkgs.runCommand "gridmate-example-${name}" {
        toplevel = builtins.unsafeDiscardStringContext host.config.system.build.toplevel.drvPath;
      } ''echo "$toplevel" > "$out"''
  )
) examples
