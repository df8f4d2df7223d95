"""Two energy managers, one writer: ``notify`` is keepalived's notify program (role
file, journal, notifications) and ``lease`` the write gate each Powerwall write
passes (the keepalived role and a lease on the MQTT broker against split brain)."""
