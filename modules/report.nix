# services.gridmate.report: periodic energy and charging reports sent by e-mail
#
# This is the groundwork module: it declares `enable` and `package` only.
# The report component's owner adds, when the component lands:
#   - `settings` (type `(gridmateLib.settingsFormat pkgs).type`, rendered
#     with `gridmateLib.mkSettingsFile`; never secrets),
#   - one `*File` option per secret, passed as `credentials` (LoadCredential=),
#   - `systemd.services.gridmate-report = gridmateLib.mkService { ... }`
#     in place of the warning below.
{ config, lib, ... }:
let
  gridmateLib = import ./lib.nix { inherit lib; };
  cfg = config.services.gridmate.report;
in
{
  imports = [ ./common.nix ];

  options.services.gridmate.report = {
    enable = lib.mkEnableOption "gridmate's report component (periodic energy and charging reports sent by e-mail), run as the systemd service gridmate-report.service";

    package = gridmateLib.mkPackageOption config "report";
  };

  config = lib.mkIf cfg.enable {
    warnings = [
      ''
        services.gridmate.report.enable is set, but this gridmate revision does not ship
        the report component yet, so no gridmate-report service is started. Update gridmate
        or remove the option.
      ''
    ];
  };
}
