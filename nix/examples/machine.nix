# What an example host needs besides gridmate to be a complete NixOS system
# for `nix flake check` (evaluated, never booted).
{
  boot.loader.grub.enable = false;
  fileSystems."/" = {
    device = "none";
    fsType = "tmpfs";
  };
  system.stateVersion = "25.11";
}
