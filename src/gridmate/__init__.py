"""gridmate: a self-hosted Tesla home-energy and telemetry hub."""

__version__ = "0.1.0"
