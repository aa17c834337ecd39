"""``heimdall map``: a live web map of the daemon's output, served by a separate process that subscribes to the
daemon's PUB socket (so the daemon does no work for it).

What it owns:

- ``MapState``: the latest picture built from the topics ``loc``, ``status``, ``truth`` and ``emission``
  (docs/protocol.md): each receiver (position from the config, ``up`` from ``status``, heard or not and its
  in-channel power in dBm from the latest primary ``loc``), the latest position per estimator with its 68 % and
  95 % ellipses as polygons, a bounded track of recent primary positions, the simulator's truth (of its first
  transmitter, on a band daemon), and the latest emission event per channel. Messages it cannot use are
  counted, never raised.
- ``ellipse_polygon``: an ellipse (semi-axes in m, azimuth of the major axis in degrees clockwise from north)
  around a position as a closed ring of (lat, lon) degrees, through ``streamer.core.geodesy``.
- ``build_app``: the aiohttp application: ``/`` the page, ``/static/…`` the page's files (Leaflet vendored in
  ``map_static/leaflet``, so it works offline), ``/state`` the picture as JSON, ``/events`` the same as
  server-sent events, one per change, and ``/geojson`` the latest localizations as a GeoJSON FeatureCollection
  (``streamer.tools.geoformats``: the Features ``heimdall listen --geojson`` prints), filtered by
  ``?estimator=NAME`` and cut to the newest ``?limit=N``.

The HTTP side binds 127.0.0.1 by default; the subscription speaks CURVE when given a key pair and the daemon's
public key (docs/security.md). docs/map.md is the user's page.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib.resources
import json
import logging
import math
import sys
import time
from typing import Any

import numpy as np

from streamer.core.errors import HeimdallError
from streamer.core.geodesy import Origin, enu_to_geodetic
from streamer.tools.geoformats import (
    BadLocalizationError,
    feature_collection,
    localization_feature,
    select_ellipse,
)
from streamer.tools.listen import DEFAULT_ENDPOINT, UndecodableMessage, decode_message

log = logging.getLogger(__name__)

MAP_INSTALL = "pip install -e '.[map]'"
DEFAULT_HTTP = "127.0.0.1:8765"
DEFAULT_TILES = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
TOPICS = ("loc", "status", "truth", "emission")
#: points on each ellipse ring; 72 keeps a 100 km ellipse within a few metres of the true curve
ELLIPSE_POINTS = 72
#: server-sent events are sent at most this often (s): a burst of messages becomes one update
EVENT_INTERVAL_S = 0.2
#: a comment line on a quiet event stream this often (s), so that proxies and the browser keep it open
KEEPALIVE_S = 15.0
#: RFC 7946's media type
GEOJSON_CONTENT_TYPE = "application/geo+json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``heimdall map``."""
    parser.add_argument("endpoint", nargs="?", default=None,
                        help=f"the daemon's PUB endpoint (default: the config's output.endpoint, {DEFAULT_ENDPOINT})")
    parser.add_argument("--http", default=DEFAULT_HTTP, metavar="HOST:PORT",
                        help=f"where to serve the page (default {DEFAULT_HTTP}, loopback; port 0 = any free port)")
    parser.add_argument("-c", "--config", default=None,
                        help="the daemon's config: receiver positions and the output endpoint (default: embedded default)")
    parser.add_argument("--tiles", default=DEFAULT_TILES,
                        help="tile URL template ({z}/{x}/{y}); 'none' draws the graticule alone (default OpenStreetMap)")
    parser.add_argument("--track", type=int, default=200, metavar="N",
                        help="how many recent positions the fading track keeps (default 200)")
    parser.add_argument("--secret-key", default=None, metavar="FILE",
                        help="CURVE: this subscriber's NAME.key_secret (its NAME.key in the daemon's output_clients_dir)")
    parser.add_argument("--server-key", default=None, metavar="FILE",
                        help="CURVE: the daemon's public NAME.key (needed with --secret-key)")


def parse_http(value: str) -> tuple[str, int]:
    """``HOST:PORT`` → (host, port); an error names the option and the expected form."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentError(None, f"--http {value!r}: expected HOST:PORT, e.g. {DEFAULT_HTTP}")
    return host.strip("[]"), int(port)


def ellipse_polygon(lat: float, lon: float, semi_major_m: float, semi_minor_m: float, azimuth_deg: float,
                    points: int = ELLIPSE_POINTS) -> list[list[float]]:
    """A closed ring of [lat, lon] (degrees) tracing an ellipse centred on (``lat``, ``lon``).

    Examples
    --------
    >>> ring = ellipse_polygon(45.0, 7.0, 2000.0, 1000.0, 0.0, points=4)
    >>> [round(v, 4) for v in ring[0]], [round(v, 4) for v in ring[1]], ring[0] == ring[-1]
    ([45.018, 7.0], [45.0, 7.0127], True)
    """
    angle = np.linspace(0.0, 2.0 * math.pi, points, endpoint=False)
    along_major, along_minor = semi_major_m * np.cos(angle), semi_minor_m * np.sin(angle)
    az = math.radians(azimuth_deg)  # clockwise from north: the major axis points (sin az, cos az) in (east, north)
    east = along_major * math.sin(az) + along_minor * math.cos(az)
    north = along_major * math.cos(az) - along_minor * math.sin(az)
    lats, lons, _ = enu_to_geodetic(east, north, np.zeros_like(east), Origin(lat, lon))
    ring = [[float(a), float(b)] for a, b in zip(lats, lons)]
    return ring + ring[:1]


class MapState:
    """The latest picture of the daemon's output, JSON-ready by ``snapshot()``.

    ``receivers`` is ``{id: (lat, lon)}`` in degrees (from the config); receivers first named by a ``status``
    message are listed without a position. ``version`` goes up by one per change.
    """

    def __init__(self, receivers: dict[str, tuple[float, float]], *, track_length: int = 200, tiles_url: str = ""):
        self.receivers: dict[str, dict[str, Any]] = {
            rid: {"id": rid, "lat": lat, "lon": lon, "up": None, "heard": False, "rx_power_dbm": None,
                  "peak_snr_db": None, "last_block_age_s": None}
            for rid, (lat, lon) in receivers.items()
        }
        self.estimates: dict[str, dict[str, Any]] = {}
        self.track: collections.deque[dict[str, Any]] = collections.deque(maxlen=max(track_length, 1))
        # the latest loc messages as received, for /geojson (its Features are made on request, not per message)
        self.localizations: collections.deque[dict[str, Any]] = collections.deque(maxlen=max(track_length, 1))
        self.truth: dict[str, Any] | None = None
        self.emissions: dict[str, dict[str, Any]] = {}
        self.tiles_url = tiles_url
        self.counts = collections.Counter()  # messages by topic, and "undecodable"
        self.version = 0
        self.last_message_ns: int | None = None
        self._encoded: tuple[int, str] = (-1, "")

    def apply(self, topic: str, msg: Any) -> bool:
        """Take one decoded message; return whether the picture changed. A malformed one is counted, not raised."""
        kind = topic.split(".", 1)[0]
        if kind not in TOPICS or not isinstance(msg, dict):
            self.counts["unusable"] += 1
            return False
        if kind == "truth" and msg.get("transmitter", 0) != 0:
            return False  # a band daemon's other transmitters: the map draws the first one's truth
        try:
            getattr(self, f"_apply_{kind}")(msg)
        except (KeyError, TypeError, ValueError) as exc:
            self.counts["unusable"] += 1
            log.debug("heimdall map: unusable %s message: %r", topic, exc)
            return False
        self.counts[kind] += 1
        self.version += 1
        self.last_message_ns = time.time_ns()
        return True

    def _receiver(self, rid: str) -> dict[str, Any]:
        return self.receivers.setdefault(rid, {"id": rid, "lat": None, "lon": None, "up": None, "heard": False,
                                               "rx_power_dbm": None, "peak_snr_db": None, "last_block_age_s": None})

    def _apply_status(self, msg: dict) -> None:
        for rid, health in msg["receivers"].items():
            rx = self._receiver(str(rid))
            rx["up"] = bool(health["up"])
            rx["last_block_age_s"] = health.get("last_block_age_s")

    def _apply_loc(self, msg: dict) -> None:
        primary = _estimate(msg)
        alternatives = [_estimate({**alt, "t_end_ns": msg["t_end_ns"]}) for alt in msg.get("alternatives", [])]
        for est in [primary, *alternatives]:
            self.estimates[est["estimator"]] = est
        self.track.append({"lat": primary["lat"], "lon": primary["lon"], "t_end_ns": primary["t_end_ns"]})
        try:
            select_ellipse(msg)  # the one part of a Feature the picture has not checked already
        except BadLocalizationError:
            self.counts["geojson_unusable"] += 1
        else:
            self.localizations.append(msg)
        heard = set(msg["receivers"])
        power = msg.get("rx_power_dbm") or {}
        for rid in list(self.receivers) + sorted(heard - set(self.receivers)):
            rx = self._receiver(rid)
            rx["heard"] = rid in heard
            rx["rx_power_dbm"] = float(power[rid]) if rid in power else None

    def _apply_truth(self, msg: dict) -> None:
        self.truth = {"lat": float(msg["lat"]), "lon": float(msg["lon"]), "keyed": bool(msg.get("keyed", True)),
                      "t_ns": int(msg["t_ns"])}

    def _apply_emission(self, msg: dict) -> None:
        self.emissions[str(msg["channel"])] = {
            "event": str(msg["event"]), "emission_id": int(msg["emission_id"]),
            "channel_hz": float(msg["channel_hz"]), "receivers": list(msg.get("receivers") or []),
        }
        for rid, snr_db in (msg.get("peak_snr_db") or {}).items():
            self._receiver(str(rid))["peak_snr_db"] = float(snr_db)

    def geojson(self, estimator: str | None = None, limit: int | None = None) -> dict[str, Any]:
        """The latest localizations (oldest first) as a GeoJSON FeatureCollection, one Feature per ``loc`` message
        as ``heimdall listen --geojson`` prints it; only those whose estimator is ``estimator`` when given, and the
        newest ``limit`` of them when given. A ``loc`` message without a 95 % ellipse is not kept for it (counted
        as ``geojson_unusable`` when it arrives)."""
        chosen = [m for m in self.localizations if estimator is None or m.get("estimator") == estimator]
        if limit is not None:
            chosen = chosen[len(chosen) - limit:] if limit else []
        return feature_collection([localization_feature(msg) for msg in chosen])

    def snapshot_json(self) -> str:
        """``snapshot()`` as JSON text, encoded once per version however many pages follow it."""
        if self._encoded[0] != self.version:
            self._encoded = (self.version, json.dumps(self.snapshot()))
        return self._encoded[1]

    def snapshot(self) -> dict[str, Any]:
        """The picture as plain JSON types."""
        return {
            "version": self.version,
            "tiles_url": self.tiles_url,
            "receivers": list(self.receivers.values()),
            "estimates": list(self.estimates.values()),
            "track": list(self.track),
            "truth": self.truth,
            "emissions": self.emissions,
            "counts": dict(self.counts),
        }


def _estimate(msg: dict) -> dict[str, Any]:
    """One estimator's answer from a ``loc`` message (or one of its ``alternatives``), ellipses as rings."""
    lat, lon = float(msg["lat"]), float(msg["lon"])
    if not (math.isfinite(lat) and math.isfinite(lon)):
        raise ValueError(f"position not finite: {lat}, {lon}")
    ellipses = []
    for e in msg["ellipses"]:
        ring = ellipse_polygon(lat, lon, float(e["semi_major_m"]), float(e["semi_minor_m"]), float(e["azimuth_deg"]))
        ellipses.append({"p": float(e["p"]), "ring": ring})
    return {"estimator": str(msg["estimator"]), "lat": lat, "lon": lon, "t_end_ns": int(msg["t_end_ns"]),
            "ellipses": ellipses}


# The server -------------------------------------------------------------------------------------------
def static_folder():
    """The page's files, shipped as package data."""
    return importlib.resources.files("streamer.tools").joinpath("map_static")


def open_subscriber(endpoint: str, curve: dict | None = None):
    """A ``zmq.asyncio`` SUB socket connected to ``endpoint`` for the map's topics; ``curve``: ``{"keys": KeyPair,
    "server_key": bytes}`` or None. A malformed endpoint is a HeimdallError naming it."""
    import zmq
    import zmq.asyncio

    from streamer.core.security import make_curve_client

    sock = zmq.asyncio.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    if curve:
        make_curve_client(sock, curve["keys"], curve["server_key"])
    for topic in TOPICS:
        sock.setsockopt_string(zmq.SUBSCRIBE, topic)
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.close()
        raise HeimdallError(f"endpoint {endpoint!r}: cannot subscribe: {exc}; expected e.g. {DEFAULT_ENDPOINT}") from exc
    return sock


async def subscribe(state: MapState, sock) -> None:
    """Read the daemon's messages from ``sock`` (``open_subscriber``) into ``state`` until cancelled; closes it."""

    try:
        while True:
            try:
                topic, msg = decode_message(await sock.recv_multipart())
            except UndecodableMessage:  # a corrupt message: counted, the next one is read
                state.counts["unusable"] += 1
                continue
            state.apply(topic, msg)
    finally:
        sock.close()


def build_app(state: MapState):
    """The aiohttp application serving the page, ``/state``, ``/events`` and ``/geojson``."""
    from aiohttp import web

    folder = static_folder()

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=folder.joinpath("index.html").read_text(encoding="utf-8"), content_type="text/html")

    async def state_json(request: web.Request) -> web.Response:
        return web.json_response(state.snapshot())

    async def geojson(request: web.Request) -> web.Response:
        limit_text = request.query.get("limit")
        limit = None
        if limit_text is not None:
            if not limit_text.isdigit():
                raise web.HTTPBadRequest(text=f"/geojson?limit={limit_text!r}: expected a whole number >= 0")
            limit = int(limit_text)
        body = json.dumps(state.geojson(request.query.get("estimator"), limit))
        return web.Response(text=body, content_type=GEOJSON_CONTENT_TYPE)

    async def events(request: web.Request) -> web.StreamResponse:
        # Each client compares the picture's version every EVENT_INTERVAL_S: a burst of messages becomes one
        # update, and no client can miss a change another one consumed.
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        sent, quiet_since = -1, time.monotonic()
        while True:
            if state.version != sent:
                sent, quiet_since = state.version, time.monotonic()
                await response.write(f"data: {state.snapshot_json()}\n\n".encode())
            elif time.monotonic() - quiet_since > KEEPALIVE_S:
                quiet_since = time.monotonic()
                await response.write(b": keep-alive\n\n")
            await asyncio.sleep(EVENT_INTERVAL_S)

    async def updates(request: web.Request) -> web.WebSocketResponse:
        # The page follows this WebSocket rather than /events: a browser holds at most six HTTP/1.1 connections
        # per host, an event stream keeps one open for good, so a seventh tab of the map would never load.
        ws = web.WebSocketResponse(heartbeat=KEEPALIVE_S)
        await ws.prepare(request)

        async def push() -> None:
            sent = -1
            while not ws.closed:
                if state.version != sent:
                    sent = state.version
                    await ws.send_str(state.snapshot_json())
                await asyncio.sleep(EVENT_INTERVAL_S)

        pusher = asyncio.create_task(push())
        try:
            async for _ in ws:  # the page sends nothing; reading is how a closed page is noticed
                pass
        finally:
            pusher.cancel()
            await asyncio.gather(pusher, return_exceptions=True)
        return ws

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/updates", updates)
    app.router.add_get("/state", state_json)
    app.router.add_get("/events", events)
    app.router.add_get("/geojson", geojson)
    app.router.add_static("/static/", str(folder))
    return app


async def serve(state: MapState, endpoint: str, host: str, port: int, curve: dict | None, stop: asyncio.Event) -> None:
    """Subscribe and serve until ``stop`` is set; logs the page's address."""
    from aiohttp import web

    sock = open_subscriber(endpoint, curve)
    runner = web.AppRunner(build_app(state), shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        sock.close()
        await runner.cleanup()
        raise HeimdallError(f"--http {host}:{port}: cannot serve there: {exc.strerror or exc}") from exc
    bound = site._server.sockets[0].getsockname()  # the port the OS chose for port 0
    url_host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    print(f"heimdall map: serving http://{url_host}:{bound[1]}/ from {endpoint}", file=sys.stderr, flush=True)
    reader = asyncio.create_task(subscribe(state, sock))
    try:
        await stop.wait()
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await runner.cleanup()


def _curve(args: argparse.Namespace) -> dict | None:
    from streamer.core.security import load_public_key, load_secret_key

    if args.secret_key is None and args.server_key is None:
        return None
    if args.secret_key is None or args.server_key is None:
        raise argparse.ArgumentError(None, "--secret-key and --server-key go together (CURVE needs both)")
    return {"keys": load_secret_key(args.secret_key, key="--secret-key"),
            "server_key": load_public_key(args.server_key, key="--server-key")}


def run(args: argparse.Namespace) -> int:
    """Serve the map until SIGTERM or SIGINT; exit status 0, or 2 when the [map] extra is missing."""
    import signal

    from streamer import config as config_module

    try:
        import aiohttp  # noqa: F401  (the [map] extra)
    except ModuleNotFoundError:
        print(f"heimdall: error: heimdall map needs aiohttp: {MAP_INSTALL}", file=sys.stderr)
        return 2
    host, port = parse_http(args.http)
    if args.track < 1:
        raise argparse.ArgumentError(None, f"--track {args.track}: expected a whole number >= 1")
    cfg = config_module.load(args.config)
    endpoint = args.endpoint or cfg.output.endpoint.replace("tcp://*:", "tcp://127.0.0.1:")
    curve = _curve(args)
    tiles = "" if args.tiles.strip().lower() == "none" else args.tiles
    state = MapState({rx.id: (rx.lat, rx.lon) for rx in cfg.receivers}, track_length=args.track, tiles_url=tiles)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(state, endpoint, host, port, curve, stop)

    asyncio.run(main())
    return 0
