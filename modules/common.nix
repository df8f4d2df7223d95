# Options shared by all gridmate components. Every component module imports
# this file; the module system loads it once however many import it.
{ lib, pkgs, ... }:
{
  options.services.gridmate = {
    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.callPackage ../nix/package.nix { };
      defaultText = lib.literalMD ''
        gridmate's flake package for this system (`packages.<system>.default`,
        built against the nixpkgs pinned in gridmate's flake.lock) when the
        module comes from the flake's `nixosModules`; otherwise
        `pkgs.callPackage ./nix/package.nix { }` built from this system's nixpkgs.
      '';
      example = lib.literalExpression "pkgs.gridmate";
      description = ''
        The gridmate package that every enabled gridmate component runs,
        unless the component's own `package` option is set.

        To build gridmate against your system's nixpkgs instead of the
        flake's pinned one (one Python closure on the machine instead of
        two), add gridmate's `overlays.default` to {option}`nixpkgs.overlays`
        and set this to `pkgs.gridmate`.
      '';
    };

    prometheus.scrape = lib.mkOption {
      type = lib.types.bool;
      default = true;
      example = false;
      description = ''
        Whether to add a scrape job for each enabled gridmate daemon
        (`gridmate-vehicles`, `gridmate-energy`) to
        {option}`services.prometheus.scrapeConfigs` when
        {option}`services.prometheus.enable` is set on this host. The target
        is the daemon's `settings.metrics.listen_address` and
        `settings.metrics.port`; a daemon with `settings.metrics.enable = false`
        gets no job. The daily report is a timer job without a metrics
        endpoint; its figures are in its metrics files.
      '';
    };
  };
}
