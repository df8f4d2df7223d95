# Back up, lose the data, reboot: the services start on restored data.
#
# Modelled on nixpkgs' own nixos/tests/sanoid.nix: two nodes with an empty
# disk each (virtualisation.emptyDiskImages), the ZFS pools created by the
# test script, syncoid over ssh with nixpkgs' snake-oil key. `host` is a
# TeslaMate-shaped host: PostgreSQL with a `teslamate` database, its dumps on
# the dataset pool/dumps (snapshotted by Sanoid, replicated to `nas` by
# syncoid), a local restic repository, and two services that need their data:
#   teslamate.service     stands in for TeslaMate (its container needs an
#                         image from the network): it starts only when the
#                         database holds its cars
#   state-reader.service  a DynamicUser service with its state under
#                         /var/lib/private, as gridmate's daemons keep theirs
#                         (the daemons themselves need Kafka or the cloud
#                         simulators: vm-vehicles and vm-energy run them)
# Restore before first start covers every method: the dump dataset comes back
# from the NAS (syncoid), the database from the dump on it (local), the state
# directory from restic.
#
# On the first boot the pool does not exist yet, so the services are held
# back by vm-services.target's condition (an imported pool) until the script
# has created the pool, seeded the data and taken the first backups.
#
# THIS TEST HAS NEVER RUN: it was written where no KVM and no nixpkgs were
# available. tests/test_nix.py evaluates its nodes with gridmate's modules
# (stand-ins and upstream tiers), which catches option and assertion errors,
# not runtime ones.
#
# nix/tests/default.nix calls this with pkgs.testers.runNixOSTest and adds
# gridmate's NixOS modules to every node.
#
# The test script uses these parts of NixOS's test driver, checked against
# nixos/lib/test-driver/src/test_driver/machine/__init__.py (NixOS/nixpkgs
# b09f2c739a3e49b80049c1fd80bd8a393cc7fbc1) and driver.py (e92a8275e21b71ff3b6b6a9f033afcd235fe6b11),
# the nixos-25.11-era layout; failures raise RequestedAssertionFailed:
#   host, nas               the nodes (nodes.host, nodes.nas), bound by those names
#   start_all()             starts every node without waiting
#   subtest(name)           context manager; logs the failed step and re-raises
#   host.start(allow_reboot=False)               boots without waiting
#   host.shutdown()                              clean poweroff, waits for the VM to stop
#   host.wait_for_unit(unit, user=None, timeout=900)
#   host.wait_until_succeeds(command, timeout=900) -> str   one try a second
#   host.succeed(*commands, timeout=None) -> str
#   host.fail(*commands, timeout=None) -> str
#   nas.wait_for_unit(unit, user=None, timeout=900)
#   nas.succeed(*commands, timeout=None) -> str
{ pkgs, lib, ... }:
let
  keys = import "${pkgs.path}/nixos/tests/ssh-keys.nix" pkgs;
  resticPassword = "vm-test-restic-password";
  token = "vm-test-refresh-token-7f3a";
  dumps = "/var/backup/gridmate-teslamate";
  textfile = "/var/lib/prometheus-node-exporter-text";
  psql = "${pkgs.util-linux}/bin/runuser -u postgres -- psql -v ON_ERROR_STOP=1 -tA";

  # TeslaMate-shaped data: cars, and positions with TeslaMate's earthdistance
  # index (the restore must rebuild it).
  seed = pkgs.writeText "teslamate-seed.sql" ''
    CREATE EXTENSION IF NOT EXISTS cube;
    CREATE EXTENSION IF NOT EXISTS earthdistance;
    SET ROLE teslamate;
    CREATE TABLE cars (id bigserial PRIMARY KEY, vin text NOT NULL, name text);
    CREATE TABLE positions (
      id bigserial PRIMARY KEY,
      car_id bigint REFERENCES cars (id),
      date timestamp NOT NULL,
      latitude numeric(8, 6) NOT NULL,
      longitude numeric(9, 6) NOT NULL
    );
    CREATE INDEX positions_earth ON positions
      USING gist (ll_to_earth(latitude::float8, longitude::float8));
    INSERT INTO cars (vin, name) VALUES ('5YJ3F7EB000000001', 'VM Test Car');
    INSERT INTO positions (car_id, date, latitude, longitude)
      SELECT 1, now() - make_interval(mins => n), 33.45 + n / 10000.0, -112.07
      FROM generate_series(1, 500) AS n;
  '';
in
{
  name = "gridmate-backup";

  nodes.nas = {
    virtualisation.emptyDiskImages = [ 2048 ];
    boot.supportedFilesystems = [ "zfs" ];
    networking.hostId = "6e617301";
    services.openssh.enable = true;
    users.users.root.openssh.authorizedKeys.keys = [ keys.snakeOilPublicKey ];
  };

  nodes.host =
    { config, ... }:
    {
      virtualisation.emptyDiskImages = [ 2048 ];
      virtualisation.memorySize = 2048;
      boot.supportedFilesystems = [ "zfs" ];
      networking.hostId = "686f7374";
      # Created by the script; imported at every later boot.
      boot.zfs.extraPools = [ "pool" ];

      # The NAS's host key is new in every run.
      programs.ssh.extraConfig = ''
        Host nas
          StrictHostKeyChecking no
          UserKnownHostsFile /dev/null
      '';

      # Root-only files outside the Nix store, as sops-nix would place them.
      environment.etc."gridmate/restic-password" = {
        text = resticPassword;
        mode = "0400";
      };
      environment.etc."gridmate/syncoid-key" = {
        # a file (pkgs.writeText) in nixpkgs' ssh-keys.nix; the mode makes a copy
        source = keys.snakeOilPrivateKey;
        mode = "0400";
      };

      services.postgresql = {
        enable = true;
        ensureDatabases = [ "teslamate" ];
        ensureUsers = [
          {
            name = "teslamate";
            ensureDBOwnership = true;
          }
        ];
      };

      services.gridmate.backup = {
        enable = true;
        restic = {
          enable = true;
          # A local repository: it is not part of what the script destroys.
          repository = "/var/lib/restic-repository";
          initialize = true;
          stateDirectories = [ "/var/lib/private/vm-state" ];
        };
        resticPasswordFile = "/etc/gridmate/restic-password";
        teslamate = {
          enable = true;
          units = [ "teslamate.service" ];
        };
        replication = {
          enable = true;
          host = "root@nas";
          targetParent = "tank/replicas";
          sshKeyFile = "/etc/gridmate/syncoid-key";
        };
        preseed = {
          enable = true;
          targets.dumps = {
            kind = "dataset";
            dataset = "pool/dumps";
            path = dumps;
            # The database's preseed loads the dump from this dataset.
            units = [ "gridmate-preseed-teslamate.service" ];
          };
          targets.vm-state = {
            kind = "directory";
            path = "/var/lib/private/vm-state";
            resticTag = "gridmate";
            methods = [ "restic" ];
            units = [ "state-reader.service" ];
          };
        };
      };

      # The services, started once the pool exists.
      systemd.targets.vm-services = {
        wantedBy = [ "multi-user.target" ];
        wants = [
          "teslamate.service"
          "state-reader.service"
        ];
        after = [ "zfs-import.target" ];
        unitConfig.ConditionPathExists = "/proc/spl/kstat/zfs/pool/state";
      };

      systemd.services.teslamate = {
        description = "TeslaMate stand-in: needs its cars in the database";
        after = [ "postgresql.target" ];
        requires = [ "postgresql.service" ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          User = "postgres";
        };
        script = ''
          cars=$(${config.services.postgresql.package}/bin/psql -tA -d teslamate -c 'SELECT count(*) FROM cars')
          test "$cars" -ge 1
        '';
      };

      systemd.services.state-reader = {
        description = "A DynamicUser service that needs its state";
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          DynamicUser = true;
          StateDirectory = "vm-state";
        };
        script = ''
          test "$(cat "$STATE_DIRECTORY/refresh-token")" = ${lib.escapeShellArg token}
        '';
      };

      environment.systemPackages = [ pkgs.jq ];
    };

  testScript = ''
    def metric(name):
        return host.succeed(f"cat ${textfile}/{name}")

    start_all()

    with subtest("the pools, created as nixpkgs' sanoid test does"):
        nas.wait_for_unit("multi-user.target")
        nas.succeed(
            "zpool create -m none tank /dev/vdb",
            "zfs create -p tank/replicas",
        )
        host.wait_for_unit("multi-user.target")
        host.wait_for_unit("postgresql.target")
        # no pool yet: the services are held back, nothing was restored
        host.fail("systemctl is-active teslamate.service")
        host.succeed(
            "zpool create -m none pool /dev/vdb",
            "zfs create -o mountpoint=${dumps} pool/dumps",
        )

    with subtest("TeslaMate's data and the service state"):
        host.succeed("${psql} -d teslamate -f ${seed}")
        host.succeed(
            "install -d -m 0700 /var/lib/private/vm-state",
            "echo ${token} > /var/lib/private/vm-state/refresh-token",
        )

    with subtest("back up: restic (dump, state), Sanoid, syncoid to the NAS"):
        host.succeed("systemctl start restic-backups-gridmate-teslamate.service")
        host.succeed("test -s ${dumps}/teslamate.dump")
        host.succeed("systemctl start restic-backups-gridmate-state.service")
        host.succeed("systemctl start --wait sanoid.service")
        # syncoid runs as a plain (Type=simple) service: wait for it to finish
        host.succeed("systemctl start --wait syncoid-pool-dumps.service")
        nas.succeed("zfs list tank/replicas/dumps")
        host.succeed("systemctl start restic-backups-gridmate-maintenance.service")
        # restic-<job>: the restic module's wrapper with the job's environment
        snapshots = host.succeed(
            "restic-gridmate-state snapshots --json | jq -r '.[].tags | join(\",\")' | sort"
        ).split()
        assert snapshots == ["gridmate", "teslamate,telemetry"], snapshots

    with subtest("only successful runs record a success time"):
        freshness = metric("gridmate_backup_freshness.prom")
        for job in ("teslamate", "gridmate"):
            assert f'gridmate_backup_last_run_success{{job="{job}"}} 1.0' in freshness, freshness
            assert f'gridmate_backup_last_success_timestamp_seconds{{job="{job}"}}' in freshness
        assert 'gridmate_replication_last_success_timestamp_seconds{job="pool/dumps"}' in freshness
        # A run that fails (the repository's password is wrong) records the failure only.
        host.succeed("mv /etc/gridmate/restic-password /etc/gridmate/restic-password.good")
        host.succeed("echo wrong > /etc/gridmate/restic-password")
        host.fail("systemctl start restic-backups-gridmate-state.service")
        host.succeed("mv /etc/gridmate/restic-password.good /etc/gridmate/restic-password")
        freshness = metric("gridmate_backup_freshness.prom")
        assert 'gridmate_backup_last_run_success{job="gridmate"} 0.0' in freshness, freshness
        assert 'gridmate_backup_last_success_timestamp_seconds{job="gridmate"}' in freshness

    with subtest("the services start on the data they have: nothing is restored"):
        host.succeed("systemctl start vm-services.target")
        host.wait_for_unit("teslamate.service")
        host.wait_for_unit("state-reader.service")
        for target in ("dumps", "teslamate", "vm-state"):
            text = metric(f"gridmate_preseed_{target}.prom")
            assert f'gridmate_preseed_result{{result="left-untouched",target="{target}"}} 1.0' in text, text

    with subtest("lose the data: dataset, database, state directory"):
        host.succeed(
            "systemctl stop teslamate.service state-reader.service",
            "zfs destroy -r pool/dumps",
            "runuser -u postgres -- dropdb teslamate",
            "rm -rf /var/lib/private/vm-state",
        )

    with subtest("reboot: each service waits for its restore, then starts on restored data"):
        host.shutdown()
        host.start()
        host.wait_for_unit("teslamate.service")
        host.wait_for_unit("state-reader.service")
        assert host.succeed("${psql} -d teslamate -c 'SELECT count(*) FROM positions'").strip() == "500"
        host.succeed("${psql} -d teslamate -c \"SELECT 1 FROM pg_indexes WHERE indexname = 'positions_earth'\" | grep -qx 1")
        host.succeed("grep -qx ${token} /var/lib/private/vm-state/refresh-token")
        # the markers that disappear with the data
        host.succeed("zfs get -H -o value gridmate:preseed pool/dumps | grep -q '^complete'")
        host.succeed(
            "${psql} -d postgres -c \"SELECT shobj_description(oid, 'pg_database') FROM pg_database"
            " WHERE datname = 'teslamate'\" | grep -q '^gridmate-preseed complete'"
        )
        methods = {"dumps": "syncoid", "teslamate": "local", "vm-state": "restic"}
        for target, method in methods.items():
            text = metric(f"gridmate_preseed_{target}.prom")
            assert f'gridmate_preseed_result{{result="restored",target="{target}"}} 1.0' in text, text
            assert f'gridmate_preseed_method_success{{method="{method}",target="{target}"}} 1.0' in text, text

    with subtest("a running host never restores twice"):
        host.succeed("systemctl restart gridmate-preseed-teslamate.service")
        text = metric("gridmate_preseed_teslamate.prom")
        assert 'gridmate_preseed_result{result="already-complete",target="teslamate"} 1.0' in text, text
  '';
}
