# Mirrors (nixpkgs, nixos-25.11 era) what gridmate sets of
#   nixos/modules/services/web-servers/caddy/default.nix and vhost-options.nix
#     enable, virtualHosts.<name>.{hostName, serverAliases, extraConfig}
# The upstream tier loads the real files instead when the nixpkgs tree has them.
{ lib, ... }:
let
  inherit (lib) types mkOption;
in
{
  options.services.caddy = {
    enable = mkOption {
      type = types.bool;
      default = false;
    };
    virtualHosts = mkOption {
      type = types.attrsOf (
        types.submodule (
          { name, ... }:
          {
            options = {
              hostName = mkOption {
                type = types.str;
                default = name;
              };
              serverAliases = mkOption {
                type = types.listOf types.str;
                default = [ ];
              };
              extraConfig = mkOption {
                type = types.lines;
                default = "";
              };
            };
          }
        )
      );
      default = { };
    };
  };
}
