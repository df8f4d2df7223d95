"""Home Assistant's MQTT conventions, shared by every gridmate component that talks to it.

* :mod:`.discovery`: device-based discovery documents (origin, availability, components).
* :mod:`.commands`: command topics and the validation of what arrives on them.
* :mod:`.link`: one broker connection with availability (``online``, last will
  ``offline``), re-announcement when Home Assistant comes online (its birth message),
  acknowledged publishing, and command delivery that ignores retained commands.
* :mod:`.settings`: the device links (configuration and support URLs) every component
  offers.
* :mod:`.view`: what Home Assistant would display, read back from the broker (tests, demo).
"""
