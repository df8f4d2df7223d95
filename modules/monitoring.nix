# services.gridmate.monitoring: the Prometheus alert rules and the Grafana
# dashboard shipped with gridmate (nix/monitoring/), for a host that runs
# Prometheus or Grafana. Scrape jobs for the daemons come from each
# component's module (services.gridmate.prometheus.scrape).
{
  config,
  lib,
  ...
}:
let
  gridmateLib = import ./lib.nix { inherit lib; };
  cfg = config.services.gridmate.monitoring;
  prefix = "services.gridmate.monitoring";
  localPrometheus = gridmateLib.hasLocal config "prometheus";
in
{
  imports = [ ./common.nix ];

  options.services.gridmate.monitoring = {
    alertRules = lib.mkOption {
      type = lib.types.bool;
      default = false;
      example = true;
      description = ''
        Whether to add gridmate's alert rules (nix/monitoring/alerts.yml) to
        {option}`services.prometheus.ruleFiles` when {option}`services.prometheus.enable`
        is set on this host: each gridmate daemon down, unhealthy or crash-looping,
        TeslaMate's unit down or crash-looping, the MQTT broker down, a Tesla token
        expiring or failing, the notifier queue stuck, a car without a trusted source,
        Fleet Telemetry consumer lag, energy control failing during a peak, and backup,
        replication and first-boot restore problems. The systemd rules need
        node_exporter's systemd collector
        (`services.prometheus.exporters.node.enabledCollectors = [ "systemd" ]`), the
        backup rules its textfile collector (docs/backup.md). docs/monitoring.md lists
        every rule.
      '';
    };

    rulesFile = lib.mkOption {
      type = lib.types.path;
      readOnly = true;
      default = ../nix/monitoring/alerts.yml;
      defaultText = lib.literalMD "gridmate's nix/monitoring/alerts.yml";
      description = "gridmate's alert rules, for a Prometheus on another host.";
    };

    grafanaDashboard = lib.mkOption {
      type = lib.types.bool;
      default = config.services.grafana.enable or false;
      defaultText = lib.literalExpression "config.services.grafana.enable";
      description = ''
        Whether to provision gridmate's Grafana dashboard (vehicles throughput, lag and
        delivery latency; energy phase, reserve, writes and API budget; notifier queue;
        TeslaMate health) into the folder "gridmate". It asks for a Prometheus datasource
        when opened; with {option}`services.prometheus.enable` on this host a datasource
        "gridmate Prometheus" pointing at it is provisioned too.
      '';
    };
  };

  config = lib.mkMerge [
    (lib.mkIf (cfg.alertRules && localPrometheus) {
      services.prometheus.ruleFiles = [ cfg.rulesFile ];
    })
    (lib.mkIf cfg.grafanaDashboard {
      assertions = [
        {
          assertion = config.services.grafana.enable;
          message = ''
            ${prefix}.grafanaDashboard is set but services.grafana.enable is not. Enable
            Grafana on this host, or set ${prefix}.grafanaDashboard = false.
          '';
        }
      ];
      services.grafana.provision = {
        enable = true;
        dashboards.settings.providers = [
          {
            name = "gridmate";
            folder = "gridmate";
            options.path = ../nix/monitoring/dashboards;
          }
        ];
        datasources.settings.datasources = lib.optional localPrometheus {
          name = "gridmate Prometheus";
          uid = "gridmate-prometheus";
          type = "prometheus";
          url = "http://127.0.0.1:${toString config.services.prometheus.port}";
        };
      };
    })
  ];
}
