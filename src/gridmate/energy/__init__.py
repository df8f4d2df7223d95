"""Time-of-use energy management: Powerwall reserve, thermostats and EV charging."""
