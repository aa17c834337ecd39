"""The default network as tests use it: read from the embedded config/default.toml, the one source of truth."""

from streamer.config import load

#: (id, lat, lon, alt m) of the default seven-receiver network at 145.5 MHz.
NETWORK = tuple((rx.id, rx.lat, rx.lon, rx.alt_m) for rx in load().receivers)
