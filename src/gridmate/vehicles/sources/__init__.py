"""The vehicle data sources besides Fleet Telemetry, and the arbitration between all.

``manager`` judges every source for every car and picks each car's data source;
``teslamate`` (MQTT, with ``teslamate_cars`` reading its PostgreSQL and
``teslamate_metrics`` exporting its health) and ``polling`` (Tesla's Fleet API, the
last resort) deliver values; ``settings`` holds their configuration. Fleet
Telemetry's own edge is :mod:`gridmate.vehicles.telemetry`.
"""
