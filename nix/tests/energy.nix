# One machine running gridmate's simulators of the Tesla cloud, the Powerwall
# gateway, a Honeywell thermostat and the weather services as a unit, the
# energy manager against them through a simulated peak in real time, and then
# the daily report reading the energy service's journal.
#
# The clock is set to 15:57 (America/Phoenix) on a summer Wednesday, and the
# tariff has a five-minute peak at 16:00, so the whole peak (precool, battery
# takes the house, restore, read-back) takes about ten minutes.
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
{ pkgs, lib, ... }:
let
  day = "2026-07-15";
  sims = "/run/gridmate-simulators";
  placeholder = "http://127.0.0.1:9";
in
{
  name = "gridmate-energy";

  nodes.machine =
    { config, ... }:
    let
      python = pkgs.python3.withPackages (ps: [
        (ps.toPythonModule config.services.gridmate.package)
      ]);
    in
    {
      virtualisation.memorySize = 2048;

      time.timeZone = "America/Phoenix";
      # The test sets the clock itself.
      services.timesyncd.enable = lib.mkForce false;

      # gridmate's simulators as a unit. They write the energy service's
      # environment file (their URLs) and the refresh tokens they issued.
      systemd.services.gridmate-simulators = {
        description = "gridmate's simulators of the energy service's cloud and devices";
        serviceConfig = {
          Type = "notify";
          NotifyAccess = "main";
          ExecStart = "${python}/bin/python ${./energy-simulators.py} --out ${sims}";
          RuntimeDirectory = "gridmate-simulators";
          RuntimeDirectoryMode = "0700";
        };
      };

      services.gridmate.energy = {
        enable = true;
        settings = {
          cycle_seconds = 5.0;
          tariff = {
            preset = "original";
            time_zone = "America/Phoenix";
            schedules = [
              {
                effective_from = "2026-01-01";
                name = "VM test: a five-minute peak every day";
                seasons = [
                  {
                    name = "all year";
                    start = "01-01";
                    end = "12-31";
                    windows = [
                      {
                        period = "peak";
                        start = "16:00";
                        end = "16:05";
                        days = "every_day";
                      }
                    ];
                  }
                ];
              }
            ];
          };
          # The URLs are placeholders: the simulators listen on free ports
          # and pass them in the environment file below.
          tesla = {
            token_source = "oauth";
            base_url = placeholder;
            oauth = {
              client_id = "gridmate-sim-client";
              token_url = "${placeholder}/oauth2/v3/token";
            };
          };
          powerwall = {
            site_id = 1689251431;
            cloud_read_seconds = 60.0;
            gateway.url = placeholder;
          };
          thermostats = [
            {
              id = "living";
              kind = "honeywell";
              device_id = "LCC-00D02DB89E33";
              location_id = "123456";
            }
          ];
          honeywell = {
            base_url = placeholder;
            api_key = "sim-consumer-key";
          };
          weather = {
            latitude = 33.45;
            longitude = -112.07;
            user_agent = "gridmate-vm-test/1 (root@localhost)";
            nws_url = placeholder;
            open_meteo_url = placeholder;
          };
        };
        teslaRefreshTokenFile = "${sims}/tesla_refresh_token";
        honeywellRefreshTokenFile = "${sims}/honeywell_refresh_token";
        # Root-only files outside the store, as sops-nix would place them.
        honeywellClientSecretFile = "/etc/gridmate-secrets/honeywell-client-secret";
        powerwallGatewayPasswordFile = "/etc/gridmate-secrets/gateway-password";
      };
      environment.etc = {
        "gridmate-secrets/honeywell-client-secret" = {
          text = "sim-consumer-secret";
          mode = "0400";
        };
        "gridmate-secrets/gateway-password" = {
          text = "ABCDE";
          mode = "0400";
        };
      };

      systemd.services.gridmate-energy = {
        # Started by the test script once the clock is set and the
        # simulators are up.
        wantedBy = lib.mkForce [ ];
        requires = [ "gridmate-simulators.service" ];
        after = [ "gridmate-simulators.service" ];
        serviceConfig.EnvironmentFile = "${sims}/energy.env";
      };

      services.gridmate.report.enable = true;
      # The test runs the report itself, after moving the clock to the next day.
      systemd.timers.gridmate-report.wantedBy = lib.mkForce [ ];

      environment.systemPackages = [ pkgs.jq ];
    };

  testScript = ''
    import json

    journal = "/var/lib/gridmate-energy/energy/journal/${day}.jsonl"


    def journal_has(jq_filter: str) -> str:
        return f"jq -s -e 'any(.[]; {jq_filter})' {journal}"


    machine.start()
    machine.wait_for_unit("multi-user.target")
    machine.succeed("timedatectl set-time '${day} 15:57:00'")

    with subtest("the simulators run as a unit and hand over URLs and tokens"):
        machine.succeed("systemctl start gridmate-simulators.service")
        machine.succeed("test -s ${sims}/energy.env -a -s ${sims}/tesla_refresh_token")

    with subtest("the energy service starts against them, sandboxed"):
        machine.succeed("systemctl start gridmate-energy.service")
        machine.wait_for_unit("gridmate-energy.service")
        security = machine.succeed("systemd-analyze security --no-pager gridmate-energy.service")
        print(security)
        assert any(
            word in security.splitlines()[-1] for word in ("OK", "SAFE", "PERFECT")
        ), security.splitlines()[-1]
        machine.fail("systemctl show -P Environment gridmate-energy.service | grep -i token")

    with subtest("precooling before the peak"):
        machine.wait_until_succeeds(
            journal_has('.kind == "decision" and .what == "precool" and .detail.decided'),
            timeout=120,
        )

    with subtest("the peak: the battery takes the house"):
        machine.wait_until_succeeds(journal_has('.kind == "peak" and .event == "start"'), timeout=300)
        machine.wait_until_succeeds(
            "jq -e '.site.backup_reserve_percent == 0 and .site.operation_mode == \"self_consumption\"'"
            " ${sims}/status.json",
            timeout=120,
        )

    with subtest("after the peak everything is restored and read back"):
        machine.wait_until_succeeds(journal_has('.kind == "peak" and .event == "end"'), timeout=420)
        machine.wait_until_succeeds(
            journal_has('.kind == "decision" and .what == "restored" and .detail.complete'),
            timeout=300,
        )
        status = json.loads(machine.succeed("cat ${sims}/status.json"))
        print(status)
        assert status["site"]["backup_reserve_percent"] == 30, status
        assert status["site"]["operation_mode"] == "autonomous", status
        assert status["thermostat"]["setpoint_status"] == "NoHold", status

    with subtest("the service stops cleanly"):
        machine.succeed("systemctl stop gridmate-energy.service")
        result = machine.succeed("systemctl show -P Result gridmate-energy.service").strip()
        assert result == "success", result

    with subtest("the daily report reads the energy journal under the shared identity"):
        machine.succeed("timedatectl set-time '2026-07-16 00:20:00'")
        machine.succeed("systemctl start gridmate-report.service")
        metrics = json.loads(
            machine.succeed("cat /var/lib/gridmate-report/metrics/${day}.json")
        )
        print(json.dumps(metrics, indent=2)[:3000])
        assert metrics, "the metrics file is empty"
        # the energy service's state stays private: the directory 0700, the journal 0600
        machine.succeed("stat -c %a /var/lib/private/gridmate-energy | grep -x 700")
        machine.succeed(f"stat -c %a {journal} | grep -x 600")
  '';
}
