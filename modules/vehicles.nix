# services.gridmate.vehicles: Tesla Fleet Telemetry and TeslaMate vehicle data, published to Home Assistant over MQTT
#
# This is the groundwork module: it declares `enable` and `package` only.
# The vehicles component's owner adds, when the component lands:
#   - `settings` (type `(gridmateLib.settingsFormat pkgs).type`, rendered
#     with `gridmateLib.mkSettingsFile`; never secrets),
#   - one `*File` option per secret, passed as `credentials` (LoadCredential=),
#   - `systemd.services.gridmate-vehicles = gridmateLib.mkService { ... }`
#     in place of the warning below.
{ config, lib, ... }:
let
  gridmateLib = import ./lib.nix { inherit lib; };
  cfg = config.services.gridmate.vehicles;
in
{
  imports = [ ./common.nix ];

  options.services.gridmate.vehicles = {
    enable = lib.mkEnableOption "gridmate's vehicles component (Tesla Fleet Telemetry and TeslaMate vehicle data, published to Home Assistant over MQTT), run as the systemd service gridmate-vehicles.service";

    package = gridmateLib.mkPackageOption config "vehicles";
  };

  config = lib.mkIf cfg.enable {
    warnings = [
      ''
        services.gridmate.vehicles.enable is set, but this gridmate revision does not ship
        the vehicles component yet, so no gridmate-vehicles service is started. Update gridmate
        or remove the option.
      ''
    ];
  };
}
