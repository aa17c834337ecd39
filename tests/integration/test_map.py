"""`heimdall map` end to end: the daemon on the simulated default network, the map server subscribed to it, and a
headless Chromium (Debian's `chromium`, driven over the DevTools protocol) showing the page.

Checked on screenshots, pixel by pixel, not only in the DOM: the receivers are drawn, at least one ellipse in its
estimator's colour appears within a few seconds, and a receiver that stops (its simulated signal ends, so the
daemon's status reports it down) turns the down colour. The tile server is unreachable, so the map is drawn on its
graticule. The last screenshot is kept (docs/img/map.png is one) in
HEIMDALL_ARTIFACTS_DIR when set, else in the test's tmp_path. The unit tests of the picture (MapState,
ellipse_polygon) run without a browser.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import urllib.request
import zlib
from pathlib import Path

import msgpack
import numpy as np
import pytest

from streamer.tools.map import MapState, ellipse_polygon
from tests.helpers.daemon import ROOT, reproducible_receivers, running_daemon
from tests.helpers.polling import wait_for

CHROMIUM_INSTALL = "apt-get install -y chromium"
MAP_INSTALL = "pip install -e '.[map]'"
#: the receiver whose simulated signal ends, and when (s after the start)
STOPPING_RECEIVER = "milano"
STOP_AFTER_S = 14.0
FIRST_LOCALIZATION_S = 20.0
WINDOW = (1280, 860)
#: a tile server that refuses every connection (port 9, discard): the map must still draw, on its graticule
UNREACHABLE_TILES = "http://127.0.0.1:9/{z}/{x}/{y}.png"


# The picture, without a browser -------------------------------------------------------------------------
def test_ellipse_polygon_points_lie_on_the_ellipse_and_the_major_axis_follows_the_azimuth():
    from streamer.core.geodesy import Origin, geodetic_to_enu_m

    ring = np.array(ellipse_polygon(45.0, 7.5, 30_000.0, 10_000.0, 60.0))
    enu = geodetic_to_enu_m(ring[:, 0], ring[:, 1], 0.0, Origin(45.0, 7.5))[:, :2]
    az = np.radians(60.0)
    major = enu @ np.array([np.sin(az), np.cos(az)])
    minor = enu @ np.array([np.cos(az), -np.sin(az)])
    assert np.allclose((major / 30_000.0) ** 2 + (minor / 10_000.0) ** 2, 1.0, atol=1e-3)
    assert np.abs(major).max() == pytest.approx(30_000.0, rel=1e-3)
    assert ring[0].tolist() == ring[-1].tolist()


def _loc(estimator: str = "onnx", receivers=("a",)) -> dict:
    ellipse = {"p": 0.95, "semi_major_m": 5000.0, "semi_minor_m": 2000.0, "azimuth_deg": 30.0, "scale": 2.45}
    return {"v": 2, "seq": 0, "t_start_ns": 0, "t_end_ns": 500_000_000, "lat": 45.1, "lon": 7.4,
            "estimator": estimator, "ellipse": ellipse, "ellipses": [{**ellipse, "p": 0.68}, ellipse],
            "receivers": list(receivers), "rx_power_dbm": {r: -100.0 for r in receivers},
            "alternatives": [{"estimator": "physics", "lat": 45.2, "lon": 7.3, "ellipses": [ellipse]}]}


def test_map_state_keeps_the_latest_estimate_per_estimator_the_track_and_who_is_up():
    state = MapState({"a": (45.0, 7.0), "b": (45.2, 7.5)}, track_length=2)
    for _ in range(3):
        assert state.apply("loc", _loc())
    assert state.apply("status", {"receivers": {"a": {"up": True}, "b": {"up": False}}})
    assert state.apply("truth", {"lat": 45.0, "lon": 7.1, "t_ns": 1, "keyed": True})
    snap = json.loads(json.dumps(state.snapshot()))  # JSON-ready
    assert {e["estimator"] for e in snap["estimates"]} == {"onnx", "physics"}
    assert [len(e["ellipses"]) for e in snap["estimates"]] == [2, 1]
    assert len(snap["track"]) == 2
    by_id = {rx["id"]: rx for rx in snap["receivers"]}
    assert (by_id["a"]["up"], by_id["a"]["heard"], by_id["a"]["rx_power_dbm"]) == (True, True, -100.0)
    assert (by_id["b"]["up"], by_id["b"]["heard"], by_id["b"]["rx_power_dbm"]) == (False, False, None)
    assert snap["truth"]["lat"] == 45.0
    # A band daemon's truth of another transmitter is not drawn (one truth marker: the first transmitter's).
    assert not state.apply("truth", {"lat": 46.0, "lon": 7.1, "t_ns": 2, "keyed": True, "transmitter": 1, "channel": "b"})
    assert state.apply("truth", {"lat": 45.5, "lon": 7.1, "t_ns": 2, "keyed": True, "transmitter": 0, "channel": "a"})
    assert state.snapshot()["truth"]["lat"] == 45.5
    snap = json.loads(json.dumps(state.snapshot()))
    assert snap["counts"] == {"loc": 3, "status": 1, "truth": 2}


def test_the_picture_sent_to_pages_is_encoded_once_per_change_and_follows_every_change():
    state = MapState({"a": (45.0, 7.0)})
    first = state.snapshot_json()
    assert state.snapshot_json() is first and json.loads(first) == state.snapshot()
    assert state.apply("loc", _loc())
    changed = state.snapshot_json()
    assert changed is not first and json.loads(changed) == state.snapshot() and json.loads(changed)["counts"] == {"loc": 1}
    assert not state.apply("nonsense", {})  # no change to the picture's version: the same text
    assert state.snapshot_json() is changed


def test_map_state_keeps_the_latest_emission_per_channel_and_each_receivers_peak_snr():
    state = MapState({"a": (45.0, 7.0)})
    start = {"v": 2, "event": "start", "emission_id": 3, "channel": "145.500", "channel_hz": 145.5e6,
             "start_ns": 1, "end_ns": None, "receivers": [], "peak_snr_db": {}, "active_frames": None}
    assert state.apply("emission.band", start)
    assert state.snapshot()["emissions"]["145.500"]["event"] == "start"
    assert state.apply("emission.band", {**start, "event": "end", "end_ns": 2, "receivers": ["a"],
                                         "peak_snr_db": {"a": 17.5}, "active_frames": 40})
    snap = state.snapshot()
    assert snap["emissions"]["145.500"] == {"event": "end", "emission_id": 3, "channel_hz": 145.5e6, "receivers": ["a"]}
    assert snap["receivers"][0]["peak_snr_db"] == 17.5


def test_map_state_counts_unusable_messages_and_keeps_its_picture():
    state = MapState({"a": (45.0, 7.0)})
    assert not state.apply("loc", {"lat": "x"})
    assert not state.apply("loc", {**_loc(), "lat": float("nan")})
    assert not state.apply("status", ["not", "a", "map"])
    assert not state.apply("weather", {})
    assert state.snapshot()["estimates"] == [] and state.version == 0
    assert state.counts["unusable"] == 4


# The browser --------------------------------------------------------------------------------------------
def chromium_or_skip() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip(f"needs Chromium for the map's screenshots: {CHROMIUM_INSTALL}")
    try:
        import aiohttp  # noqa: F401
    except ModuleNotFoundError:
        pytest.skip(f"needs the [map] extra (aiohttp): {MAP_INSTALL}")
    return path


def decode_png(data: bytes) -> np.ndarray:
    """An 8-bit RGB or RGBA, non-interlaced PNG (what Chromium's screenshots are) → ``[height, width, 3]`` uint8."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, f"unsupported PNG: {header}"
    channels = 3 if colour == 2 else 4
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + width * channels)
    out = np.zeros((height, width * channels), np.int32)
    for y in range(height):
        kind, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        up = out[y - 1] if y else np.zeros_like(line)
        if kind == 0:
            out[y] = line
        elif kind == 2:
            out[y] = (line + up) & 0xFF
        else:  # Sub, Average, Paeth depend on the pixel to the left: byte by byte
            row = np.zeros_like(line)
            for x in range(line.size):
                left = row[x - channels] if x >= channels else 0
                upleft = up[x - channels] if x >= channels else 0
                if kind == 1:
                    pred = left
                elif kind == 3:
                    pred = (left + up[x]) // 2
                else:
                    p = left + up[x] - upleft
                    pa, pb, pc = abs(p - left), abs(p - up[x]), abs(p - upleft)
                    pred = left if pa <= pb and pa <= pc else (up[x] if pb <= pc else upleft)
                row[x] = (line[x] + pred) & 0xFF
            out[y] = row
    return out.reshape(height, width, channels)[:, :, :3].astype(np.uint8)


def pixels_of(image: np.ndarray, hex_colour: str, tolerance: int = 3) -> int:
    """How many pixels are ``hex_colour`` (#rrggbb) within ``tolerance`` per channel."""
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(image.astype(np.int32) - rgb).max(axis=2) <= tolerance).sum())


class Page:
    """One Chromium tab over the DevTools protocol (a websocket of JSON commands and replies)."""

    def __init__(self, ws):
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, **params):
        request_id = next(self.ids)
        await self.ws.send_json({"id": request_id, "method": method, "params": params})
        while True:
            reply = await self.ws.receive_json(timeout=30)
            if reply.get("id") == request_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply["result"]

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, f"{expression}: {result['exceptionDetails']}"
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float, what: str):
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
            await asyncio.sleep(0.1)

    async def screenshot(self) -> bytes:
        return base64.b64decode((await self.call("Page.captureScreenshot", format="png"))["data"])


@contextlib.contextmanager
def started(args: list[str], pattern: str, timeout_s: float = 30.0):
    """A subprocess and the first match of ``pattern`` in its stderr (read by a thread, waited with a timeout)."""
    proc = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        match = wait_for(lambda: re.search(pattern, "".join(lines)) or proc.poll() is not None, timeout_s,
                         f"{args[0]} to log {pattern!r}")
        assert proc.poll() is None, f"{' '.join(args)} exited with {proc.returncode}: {''.join(lines)[-3000:]}"
        yield match
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(5)
        proc.stderr.close()


@contextlib.contextmanager
def map_in_chromium(tmp_path, overrides: dict, chromium: str):
    """A daemon with ``overrides``, ``heimdall map`` on it (tiles refused) and headless Chromium showing the page:
    yields the page's URL and Chromium's DevTools port."""
    with running_daemon(tmp_path, overrides) as daemon, \
            started([sys.executable, "-m", "streamer", "map", daemon.pub_endpoint, "-c", str(daemon.config_path),
                     "--http", "127.0.0.1:0", "--tiles", UNREACHABLE_TILES], r"serving (http://\S+/)") as served, \
            tempfile.TemporaryDirectory() as profile, \
            started([chromium, "--headless=new", "--remote-debugging-port=0", f"--user-data-dir={profile}",
                     "--no-sandbox", "--disable-gpu", "--no-first-run", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                     served.group(1)], r"DevTools listening on ws://127\.0\.0\.1:(\d+)/") as devtools:
        yield served.group(1), int(devtools.group(1))


def marker_colour(image: np.ndarray, centre_xy: list[float], scale: float) -> str:
    """The most common colour (#rrggbb) in the 5 × 5 pixels at a marker's centre (CSS px × ``scale``)."""
    x, y = (round(v * scale) for v in centre_xy)
    patch = image[y - 2:y + 3, x - 2:x + 3].reshape(-1, 3)
    values, counts = np.unique(patch, axis=0, return_counts=True)
    return "#" + "".join(f"{v:02x}" for v in values[counts.argmax()])


def fetch_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


async def drive(devtools_port: int, shots: Path, stopping_at: tuple[float, float]) -> dict:
    """Open the page's DevTools socket, check what the map draws, and return the screenshots' pixel counts."""
    import aiohttp

    target = next(t for t in fetch_json(f"http://127.0.0.1:{devtools_port}/json/list") if t["type"] == "page")
    async with aiohttp.ClientSession() as session, session.ws_connect(target["webSocketDebuggerUrl"],
                                                                       max_msg_size=0) as ws:
        page = Page(ws)
        await page.wait_for("window.heimdallMap && heimdallMap.drawn.receivers === 7", 20, "7 receivers drawn")
        await page.wait_for("heimdallMap.drawn.ellipses >= 2", FIRST_LOCALIZATION_S, "a localization's ellipses")
        colours = await page.evaluate("heimdallMap.colours")
        drawn_before = await page.evaluate("heimdallMap.drawn")
        await asyncio.sleep(0.5)  # Leaflet renders the SVG on the next animation frames
        before = decode_png(await page.screenshot())
        scale = before.shape[1] / await page.evaluate("window.innerWidth")
        lat, lon = stopping_at
        centre = await page.evaluate(f"(p => [p.x, p.y])(heimdallMap.map.latLngToContainerPoint([{lat}, {lon}]))")
        await page.wait_for(
            f"Array.from(document.querySelectorAll('#receivers td')).some(td => td.textContent === "
            f"'{STOPPING_RECEIVER} (down)')", STOP_AFTER_S + 20, f"{STOPPING_RECEIVER} reported down")
        await asyncio.sleep(0.5)
        png = await page.screenshot()
        drawn_after = await page.evaluate("heimdallMap.drawn")
        truth_hidden = await page.evaluate("document.getElementById('show-truth').click(), heimdallMap.drawn.truth")
        (shots / "map.png").write_bytes(png)
        after = decode_png(png)
    marker = {"before": marker_colour(before, centre, scale), "after": marker_colour(after, centre, scale)}
    estimator_pixels = {name: pixels_of(after, colour) for name, colour in colours["estimator"].items()}
    return {"drawn": drawn_before, "drawn_after": drawn_after, "truth_after_toggle": truth_hidden, "estimator_pixels": estimator_pixels, "colours": colours, "marker": marker,
            "heard_before": pixels_of(before, colours["heard"]), "down_before": pixels_of(before, colours["down"]),
            "down_after": pixels_of(after, colours["down"]), "graticule": pixels_of(after, colours["graticule"])}


@pytest.mark.slow
def test_map_page_draws_receivers_ellipses_and_a_receiver_going_down(tmp_path):
    chromium = chromium_or_skip()
    receivers = reproducible_receivers()
    stopping = next(rx for rx in receivers if rx["id"] == STOPPING_RECEIVER)
    stopping["duration_s"] = STOP_AFTER_S
    shots = Path(os.environ.get("HEIMDALL_ARTIFACTS_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    overrides = {"receivers": receivers, "output": {"status_interval_s": 0.5}}
    with map_in_chromium(tmp_path, overrides, chromium) as (url, devtools_port):
        seen = asyncio.run(drive(devtools_port, shots, (stopping["lat"], stopping["lon"])))
        state = fetch_json(url + "state")
    print(f"map screenshots ({shots / 'map.png'}): {json.dumps({k: v for k, v in seen.items() if k != 'colours'})}")
    assert seen["drawn"]["receivers"] == 7 and seen["drawn"]["ellipses"] >= 2, seen
    assert seen["drawn_after"]["truth"] == 1 and seen["truth_after_toggle"] == 0, f"the truth toggle: {seen}"
    assert seen["drawn_after"]["tileErrors"] > 0 and seen["graticule"] > 1000, f"no graticule without tiles: {seen}"
    assert min(seen["estimator_pixels"].values()) > 200, f"an estimator's ellipses not on the screenshot: {seen}"
    assert seen["heard_before"] > 100, f"no receiver marker drawn as heard: {seen}"
    colours = seen["colours"]
    assert seen["marker"]["before"] in (colours["heard"], colours["up"]), f"{STOPPING_RECEIVER}'s marker: {seen}"
    assert seen["marker"]["after"] == colours["down"], f"{STOPPING_RECEIVER}'s marker did not turn down: {seen}"
    assert seen["down_after"] > seen["down_before"] + 100, f"no more of the down colour once one went down: {seen}"
    by_id = {rx["id"]: rx for rx in state["receivers"]}
    assert by_id[STOPPING_RECEIVER]["up"] is False
    assert sum(rx["up"] is True for rx in by_id.values()) == 6
    assert state["counts"].get("loc", 0) >= 1 and state["truth"] is not None


def test_map_subscribes_with_curve(tmp_path):
    """Through a CURVE daemon socket with an allowed key pair the map gets the messages (here: one ``status``)."""
    pytest.importorskip("aiohttp", reason=f"needs the [map] extra (aiohttp): {MAP_INSTALL}")
    import zmq

    from streamer.core import security
    from streamer.tools.map import open_subscriber, subscribe

    paths = {name: security.generate_keys(tmp_path, name) for name in ("daemon", "map")}
    keys = {name: security.load_secret_key(secret, key=name) for name, (_, secret) in paths.items()}
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    os.link(paths["map"][0], allowed / "map.key")

    async def check() -> MapState:
        ctx = zmq.Context()  # the daemon's side, with its own ZAP handler
        auth = security.CurveAuthenticator(ctx)
        auth.allow(security.OUTPUT_DOMAIN, allowed, key="allowed")
        pub = ctx.socket(zmq.XPUB)
        pub.linger = 0
        security.make_curve_server(pub, keys["daemon"], security.OUTPUT_DOMAIN)
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        state = MapState({"a": (45.0, 7.0)})
        sock = open_subscriber(f"tcp://127.0.0.1:{port}", {"keys": keys["map"], "server_key": keys["daemon"].public})
        reader = asyncio.create_task(subscribe(state, sock))
        try:
            for _ in range(100):
                pub.send_multipart([b"status", msgpack.packb({"receivers": {"a": {"up": True}}})])
                await asyncio.sleep(0.05)
                if state.counts["status"]:
                    break
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            pub.close()
            auth.stop()
            ctx.term()
        return state

    state = asyncio.run(check())
    assert state.counts["status"] >= 1 and state.receivers["a"]["up"] is True


@pytest.mark.parametrize("argv, expected", [
    (["map", "--http", "foo"], "--http 'foo': expected HOST:PORT"),
    (["map", "--secret-key", "map.key_secret"], "--secret-key and --server-key go together"),
    (["map", "--track", "0"], "--track 0: expected a whole number >= 1"),
    (["map", "tcp//nowhere", "--http", "127.0.0.1:0"], "endpoint 'tcp//nowhere': cannot subscribe"),
])
def test_map_refuses_bad_options_with_a_message_naming_them(argv, expected, capsys):
    pytest.importorskip("aiohttp", reason=f"needs the [map] extra (aiohttp): {MAP_INSTALL}")
    from streamer.cli import main

    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's usage error
        status = exc.code
    assert status == 2
    assert expected in capsys.readouterr().err


TABS = 8


async def drive_tabs(devtools_port: int, url: str) -> list[dict]:
    """Open ``TABS`` tabs of the map in one browser and wait until each one has drawn a localization."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        for _ in range(TABS - 1):  # the browser opened the first
            async with session.put(f"http://127.0.0.1:{devtools_port}/json/new?{url}") as response:
                assert response.status == 200, await response.text()
        pages = [t for t in fetch_json(f"http://127.0.0.1:{devtools_port}/json/list") if t["type"] == "page"]
        assert len(pages) == TABS, pages
        drawn = []
        for target in pages:
            async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Page(ws)
                await page.wait_for("window.heimdallMap && heimdallMap.drawn.ellipses >= 2", FIRST_LOCALIZATION_S,
                                    f"tab {len(drawn) + 1} of {TABS} to draw a localization")
                drawn.append(await page.evaluate("heimdallMap.drawn"))
        return drawn


@pytest.mark.slow
def test_more_tabs_of_the_map_than_a_browser_has_connections_to_one_host_all_draw(tmp_path):
    """A browser keeps at most six HTTP/1.1 connections per host; every tab still loads and follows the daemon."""
    chromium = chromium_or_skip()
    with map_in_chromium(tmp_path, {"receivers": reproducible_receivers()}, chromium) as (url, devtools_port):
        drawn = asyncio.run(drive_tabs(devtools_port, url))
    assert len(drawn) == TABS and all(d["ellipses"] >= 2 and d["receivers"] == 7 for d in drawn), drawn
