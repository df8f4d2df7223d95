"""Vehicles hub: Tesla vehicles as seen through Fleet Telemetry."""
