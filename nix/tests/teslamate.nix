# One machine with services.gridmate.teslamate and the vehicles hub wired to it.
# VM tests have no network, so the container image is built here from gridmate's
# TeslaMate simulator (./teslamate-sim.py): it reads TeslaMate's environment,
# creates TeslaMate's tables with the database password the module set, and
# publishes a car through the ACL'd broker as the MQTT user teslamate. The hub
# then shows the car to Home Assistant, and the env file with the secrets is
# gone once the container stops.
#
# This test has never run: it was written where no VM test can run. Its machine
# is evaluated by tests/test_nix.py (test_vm_test_machine_evaluates).
#
# nix/tests/default.nix calls this with pkgs.testers.runNixOSTest and adds
# gridmate's NixOS modules to every node.
#
# The test script uses these parts of NixOS's test driver, checked against
# nixos/lib/test-driver/src/test_driver/machine/__init__.py (NixOS/nixpkgs
# b09f2c739a3e49b80049c1fd80bd8a393cc7fbc1) and driver.py (e92a8275e21b71ff3b6b6a9f033afcd235fe6b11),
# the nixos-25.11-era layout; failures raise RequestedAssertionFailed:
#   machine                 the single node (nodes.machine), bound by that name
#   subtest(name)           context manager; logs the failed step and re-raises
#   machine.start(allow_reboot=False)            boots without waiting
#   machine.wait_for_unit(unit, user=None, timeout=900)
#   machine.wait_for_open_port(port, addr="localhost", timeout=900)
#   machine.wait_until_succeeds(command, timeout=900) -> str   one try a second
#   machine.succeed(*commands, timeout=None) -> str
#   machine.fail(*commands, timeout=None) -> str
{ pkgs, ... }:
let
  vin = "5YJ3E1EA7KF000001";
  haPassword = "vm-test-homeassistant-password";
  subscribe =
    topic:
    "${pkgs.mosquitto}/bin/mosquitto_sub -h 127.0.0.1 -p 1883 -u homeassistant -P ${haPassword} -C 1 -W 10 -t '${topic}'";
  secrets = {
    encryption-key = "vm-test-encryption-key";
    db-password = "vm-test-db-password";
    mqtt-teslamate = "vm-test-teslamate-password";
    mqtt-gridmate = "vm-test-gridmate-password";
    mqtt-homeassistant = haPassword;
  };
  secret = name: "/etc/teslamate-secrets/${name}";
in
{
  name = "gridmate-teslamate";

  nodes.machine =
    { config, ... }:
    let
      # Python with the very gridmate package under test, in an image of its own.
      python = pkgs.python3.withPackages (ps: [
        (ps.toPythonModule config.services.gridmate.package)
      ]);
      image = pkgs.dockerTools.buildLayeredImage {
        name = "teslamate-sim";
        tag = "vm-test";
        contents = [ python ];
        config.Cmd = [
          "${python}/bin/python"
          "${./teslamate-sim.py}"
        ];
      };
    in
    {
      virtualisation.memorySize = 3072;
      virtualisation.diskSize = 4096;

      services.gridmate.teslamate = {
        enable = true;
        image = "teslamate-sim:vm-test";
        imageFile = image;
        encryptionKeyFile = secret "encryption-key";
        database.passwordFile = secret "db-password";
        mqtt.users = {
          teslamate.passwordFile = secret "mqtt-teslamate";
          gridmate.passwordFile = secret "mqtt-gridmate";
          homeassistant.passwordFile = secret "mqtt-homeassistant";
        };
      };

      services.gridmate.vehicles = {
        enable = true;
        settings.mqtt.username = "gridmate";
        mqttPasswordFile = secret "mqtt-gridmate";
      };

      services.postgresql.enable = true;
      services.mosquitto.enable = true;

      # Root-only files outside the store, as sops-nix would place them.
      environment.etc = pkgs.lib.mapAttrs' (
        name: text:
        pkgs.lib.nameValuePair "teslamate-secrets/${name}" {
          inherit text;
          mode = "0400";
        }
      ) secrets;

      environment.systemPackages = [
        pkgs.mosquitto
        pkgs.jq
      ];
    };

  testScript = ''
    import json

    machine.start()
    machine.wait_for_unit("postgresql.target")
    machine.wait_for_unit("mosquitto.service")
    machine.wait_for_open_port(1883)

    with subtest("TeslaMate's container starts with its secrets in a private env file"):
        machine.wait_for_unit("podman-teslamate.service")
        machine.succeed("test \"$(stat -c %a /run/teslamate)\" = 700")
        machine.succeed("test \"$(stat -c %a /run/teslamate/teslamate.env)\" = 600")
        machine.succeed("grep -qx 'DATABASE_PASS=${secrets.db-password}' /run/teslamate/teslamate.env")
        # nothing secret in the unit or the container's command line
        machine.fail("systemctl cat podman-teslamate.service | grep -e '${secrets.db-password}' -e '${secrets.encryption-key}'")
        machine.wait_until_succeeds("journalctl -u podman-teslamate.service | grep 'teslamate-sim: publishing'", timeout=300)

    with subtest("the database, its extensions and the read-only role"):
        machine.succeed("sudo -u postgres psql -d teslamate -tAc \"SELECT 1 FROM pg_extension WHERE extname = 'earthdistance'\" | grep -x 1")
        owner = machine.succeed("sudo -u postgres psql -tAc \"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'teslamate'\"").strip()
        assert owner == "teslamate", owner
        # no password in the server's log
        machine.fail("journalctl -u postgresql.service -u postgresql-setup.service | grep -e '${secrets.db-password}'")

    with subtest("the simulator publishes through the ACL'd broker, the hub shows the car"):
        machine.wait_until_succeeds("${subscribe "teslamate/cars/1/battery_level"} | grep -x 71", timeout=120)
        discovery = json.loads(
            machine.wait_until_succeeds(
                "${subscribe "homeassistant/device/gridmate_${vin}/config"}", timeout=180
            )
        )
        assert "${vin}" in json.dumps(discovery["dev"]), discovery["dev"]
        machine.wait_until_succeeds(
            "${subscribe "gridmate/${vin}/state"} | jq -e '.battery_level == 71'", timeout=180
        )

    with subtest("Home Assistant cannot write TeslaMate's or gridmate's topics"):
        for topic in ("teslamate/cars/1/battery_level", "gridmate/${vin}/state"):
            machine.succeed(
                "${pkgs.mosquitto}/bin/mosquitto_pub -h 127.0.0.1 -u homeassistant"
                f" -P ${haPassword} -q 1 -r -t {topic} -m 5"
            )
        machine.succeed("${subscribe "teslamate/cars/1/battery_level"} | grep -x 71")

    with subtest("the env file is gone once TeslaMate stops"):
        machine.succeed("systemctl stop podman-teslamate.service")
        machine.fail("test -e /run/teslamate/teslamate.env")
  '';
}
