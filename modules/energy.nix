# services.gridmate.energy: time-of-use control of the Powerwall and thermostats
#
# This is the groundwork module: it declares `enable` and `package` only.
# The energy component's owner adds, when the component lands:
#   - `settings` (type `(gridmateLib.settingsFormat pkgs).type`, rendered
#     with `gridmateLib.mkSettingsFile`; never secrets),
#   - one `*File` option per secret, passed as `credentials` (LoadCredential=),
#   - `systemd.services.gridmate-energy = gridmateLib.mkService { ... }`
#     in place of the warning below.
{ config, lib, ... }:
let
  gridmateLib = import ./lib.nix { inherit lib; };
  cfg = config.services.gridmate.energy;
in
{
  imports = [ ./common.nix ];

  options.services.gridmate.energy = {
    enable = lib.mkEnableOption "gridmate's energy component (time-of-use control of the Powerwall and thermostats), run as the systemd service gridmate-energy.service";

    package = gridmateLib.mkPackageOption config "energy";
  };

  config = lib.mkIf cfg.enable {
    warnings = [
      ''
        services.gridmate.energy.enable is set, but this gridmate revision does not ship
        the energy component yet, so no gridmate-energy service is started. Update gridmate
        or remove the option.
      ''
    ];
  };
}
