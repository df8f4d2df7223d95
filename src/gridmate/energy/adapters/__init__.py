"""Wire formats at the edges: Powerwall (Fleet API and local gateway), thermostats, weather."""
