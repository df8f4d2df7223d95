# Mirrors (nixpkgs, nixos-25.11 era) the options of services.keepalived that
# gridmate sets: nixos/modules/services/networking/keepalived/default.nix,
# vrrp-instance-options.nix and virtual-ip-options.nix.
{ lib, ... }:
let
  inherit (lib) types mkOption;

  enableOption = mkOption {
    type = types.bool;
    default = false;
  };

  vrrpInstance = types.submodule {
    options = {
      interface = mkOption { type = types.str; };
      state = mkOption {
        type = types.enum [
          "MASTER"
          "BACKUP"
        ];
        default = "BACKUP";
      };
      virtualRouterId = mkOption { type = types.ints.between 1 255; };
      priority = mkOption {
        type = types.int;
        default = 100;
      };
      noPreempt = mkOption {
        type = types.bool;
        default = false;
      };
      unicastPeers = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      virtualIps = mkOption {
        type = types.listOf (
          types.submodule {
            options.addr = mkOption { type = types.str; };
          }
        );
        default = [ ];
      };
      extraConfig = mkOption {
        type = types.lines;
        default = "";
      };
    };
  };
in
{
  options.services.keepalived = {
    enable = enableOption;
    enableScriptSecurity = enableOption;
    openFirewall = enableOption;
    extraConfig = mkOption {
      type = types.lines;
      default = "";
    };
    vrrpInstances = mkOption {
      type = types.attrsOf vrrpInstance;
      default = { };
    };
  };
}
