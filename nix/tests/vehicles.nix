# One machine with Kafka (KRaft), Mosquitto, PostgreSQL and gridmate's
# vehicles hub: a Fleet Telemetry record produced to Kafka, as protobuf and
# as protojson, shows up as Home Assistant discovery and state on MQTT.
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
  namespace = "tesla";
  vin = "5YJ3F7EB000000001";
  mqttPassword = "vm-test-gridmate-password";
  testerPassword = "vm-test-tester-password";
  kafka = pkgs.apacheKafka;

  produce = "produce-telemetry --bootstrap 127.0.0.1:9092 --namespace ${namespace} --vin ${vin}";
  subscribe =
    topic:
    "${pkgs.mosquitto}/bin/mosquitto_sub -h 127.0.0.1 -p 1883 -u tester -P ${testerPassword} -C 1 -W 10 -t '${topic}'";
in
{
  name = "gridmate-vehicles";

  nodes.machine =
    { config, ... }:
    {
      virtualisation.memorySize = 3072;
      virtualisation.diskSize = 2048;

      services.apache-kafka = {
        enable = true;
        package = kafka;
        clusterId = "gRiDmAtEvMtEsTcLuStEr0";
        formatLogDirs = true;
        settings = {
          "node.id" = 1;
          "process.roles" = [
            "broker"
            "controller"
          ];
          listeners = [
            "PLAINTEXT://127.0.0.1:9092"
            "CONTROLLER://127.0.0.1:9093"
          ];
          "advertised.listeners" = [ "PLAINTEXT://127.0.0.1:9092" ];
          "listener.security.protocol.map" = [
            "PLAINTEXT:PLAINTEXT"
            "CONTROLLER:PLAINTEXT"
          ];
          "controller.quorum.voters" = [ "1@127.0.0.1:9093" ];
          "controller.listener.names" = [ "CONTROLLER" ];
          "offsets.topic.replication.factor" = 1;
          "transaction.state.log.replication.factor" = 1;
          "transaction.state.log.min.isr" = 1;
          "log.dirs" = [ "/var/lib/apache-kafka" ];
        };
      };

      services.mosquitto = {
        enable = true;
        # Acknowledgements leave at once (see docs/vehicles.md, Latency).
        settings.set_tcp_nodelay = true;
        listeners = [
          {
            address = "127.0.0.1";
            port = 1883;
            users = {
              gridmate = {
                passwordFile = pkgs.writeText "gridmate-mqtt-password" mqttPassword;
                acl = [ "readwrite #" ];
              };
              tester = {
                password = testerPassword;
                acl = [ "readwrite #" ];
              };
            };
          }
        ];
      };

      # TeslaMate's database would live here; gridmate orders itself after it.
      services.postgresql.enable = true;

      services.gridmate.vehicles = {
        enable = true;
        settings = {
          kafka.bootstrap_servers = "127.0.0.1:9092";
          kafka.namespace = namespace;
          mqtt.host = "127.0.0.1";
          mqtt.username = "gridmate";
          vehicles.${vin} = "VM Test Car";
        };
        # A root-only file outside the store, as sops-nix would place it.
        mqttPasswordFile = "/etc/gridmate-secrets/mqtt-password";
      };
      environment.etc."gridmate-secrets/mqtt-password" = {
        text = mqttPassword;
        mode = "0400";
      };

      environment.systemPackages =
        let
          # Python with the very gridmate package under test, for the script
          # that produces records with gridmate's generated protobuf code.
          python = pkgs.python3.withPackages (ps: [
            (ps.toPythonModule config.services.gridmate.package)
          ]);
        in
        [
          pkgs.mosquitto
          pkgs.jq
          (pkgs.writeShellScriptBin "produce-telemetry" ''
            exec ${python}/bin/python ${./produce-telemetry.py} "$@"
          '')
        ];
    };

  testScript = ''
    import json

    machine.start()
    machine.wait_for_unit("apache-kafka.service")
    machine.wait_for_open_port(9092)
    machine.wait_for_unit("mosquitto.service")
    machine.wait_for_open_port(1883)

    with subtest("fleet-telemetry's topics exist"):
        for suffix in ("V", "connectivity", "alerts", "errors"):
            machine.wait_until_succeeds(
                "${kafka}/bin/kafka-topics.sh --bootstrap-server 127.0.0.1:9092 --create"
                f" --if-not-exists --topic ${namespace}_{suffix}"
                " --partitions 1 --replication-factor 1",
                timeout=180,
            )

    with subtest("the unit is ready, ordered after the local brokers, and sandboxed"):
        machine.wait_for_unit("gridmate-vehicles.service")
        after = machine.succeed("systemctl show -P After gridmate-vehicles.service")
        for unit in ("apache-kafka.service", "mosquitto.service", "postgresql.service"):
            assert unit in after, f"{unit} not in After=: {after}"
        for prop, value in (("Type", "notify"), ("NotifyAccess", "main"), ("DynamicUser", "yes")):
            shown = machine.succeed(f"systemctl show -P {prop} gridmate-vehicles.service").strip()
            assert shown == value, f"{prop}={shown}"
        # the password reached the service as a credential, not through the environment
        machine.succeed("systemctl show -P LoadCredential gridmate-vehicles.service | grep mqtt_password")
        machine.fail("systemctl show -P Environment gridmate-vehicles.service | grep -i password")
        security = machine.succeed("systemd-analyze security --no-pager gridmate-vehicles.service")
        print(security)
        assert any(
            word in security.splitlines()[-1] for word in ("OK", "SAFE", "PERFECT")
        ), security.splitlines()[-1]

    with subtest("a protobuf record becomes discovery and state on MQTT"):
        machine.succeed(
            "${produce} --signal BatteryLevel=63.5 --signal VehicleName=Car --signal Gear=P"
        )
        discovery = json.loads(
            machine.wait_until_succeeds(
                "${subscribe "homeassistant/device/gridmate_${vin}/config"}", timeout=120
            )
        )
        print(json.dumps(discovery, indent=2)[:2000])
        assert "${vin}" in json.dumps(discovery["dev"]), discovery["dev"]
        assert discovery.get("cmps"), "the discovery message lists no entities"
        machine.wait_until_succeeds(
            "${subscribe "gridmate/${vin}/state"} | jq -e '.battery_level == 63.5'", timeout=120
        )

    with subtest("a protojson record (transmit_decoded_records) is accepted too"):
        machine.succeed("${produce} --json --signal BatteryLevel=58")
        machine.wait_until_succeeds(
            "${subscribe "gridmate/${vin}/state"} | jq -e '.battery_level == 58'", timeout=120
        )

    with subtest("gridmate is online and stops cleanly"):
        machine.succeed("${subscribe "gridmate/status"} | grep -x online")
        machine.succeed("systemctl stop gridmate-vehicles.service")
        machine.succeed("${subscribe "gridmate/status"} | grep -x offline")
        result = machine.succeed("systemctl show -P Result gridmate-vehicles.service").strip()
        assert result == "success", result
  '';
}
