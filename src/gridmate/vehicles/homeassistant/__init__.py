"""The vehicles hub in Home Assistant: one device per car.

``discovery`` builds the discovery and state documents from the catalogue,
``publisher`` decides which of them the state needs and when, ``link`` is the hub's
broker connection and ``controls`` carries out the car commands Home Assistant
sends. The machinery both components share lives in :mod:`gridmate.homeassistant`.
"""
