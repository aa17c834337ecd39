"""The map server's ``/geojson`` endpoint: fed by the real daemon on the simulated default network, its
FeatureCollection is validated by the geojson package, each Feature is the one ``heimdall listen --geojson``
prints for the same ``loc`` message, and each ellipse polygon's area, measured on the WGS84 ellipsoid by pyproj,
is π·a·b within 1 %. ``MapState.geojson``'s filters are tested without a daemon."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

from streamer.tools.geoformats import localization_feature
from streamer.tools.map import GEOJSON_CONTENT_TYPE, MapState
from tests.helpers.daemon import ROOT, running_daemon
from tests.helpers.polling import wait_for
from tests.integration.test_map import MAP_INSTALL, _loc, started

geojson = pytest.importorskip("geojson", reason="the GeoJSON validator is missing: pip install -e '.[test]'")
pyproj = pytest.importorskip("pyproj", reason="geodesic areas need pyproj: pip install -e '.[test]'")


def test_geojson_of_the_map_state_filters_by_estimator_and_keeps_the_newest():
    state = MapState({"a": (45.0, 7.0)}, track_length=3)
    for seq in range(5):
        state.apply("loc", {**_loc(estimator="onnx" if seq % 2 else "physics"), "seq": seq})
    assert [f["properties"]["seq"] for f in state.geojson()["features"]] == [2, 3, 4]  # the track's length
    assert [f["properties"]["seq"] for f in state.geojson(estimator="onnx")["features"]] == [3]
    assert [f["properties"]["seq"] for f in state.geojson(limit=2)["features"]] == [3, 4]
    assert state.geojson(limit=0)["features"] == [] and state.geojson(estimator="nope")["features"] == []


def test_geojson_leaves_out_and_counts_a_localization_without_a_95_percent_ellipse():
    state = MapState({"a": (45.0, 7.0)})
    msg = _loc()
    assert state.apply("loc", {**msg, "ellipse": msg["ellipses"][0], "ellipses": msg["ellipses"][:1]})  # p 0.68 only
    assert state.counts["geojson_unusable"] == 1 and state.geojson()["features"] == []
    assert state.snapshot()["estimates"]  # the map still draws it


def fetch(url: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.headers["Content-Type"], response.read()


def test_geojson_endpoint_serves_what_listen_geojson_prints_for_the_daemons_localizations(tmp_path):
    pytest.importorskip("aiohttp", reason=f"needs the [map] extra (aiohttp): {MAP_INSTALL}")
    with running_daemon(tmp_path) as daemon, \
            started([sys.executable, "-m", "streamer", "map", daemon.pub_endpoint, "-c", str(daemon.config_path),
                     "--http", "127.0.0.1:0", "--tiles", "none"], r"serving (http://\S+/)") as served:
        # What `heimdall listen --json` receives of the same stream: the loc messages by seq
        listen = subprocess.Popen([sys.executable, "-m", "streamer", "listen", daemon.pub_endpoint, "--json"],
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        heard: dict[int, dict] = {}
        reader = threading.Thread(target=lambda: heard.update(
            (m["seq"], m) for m in map(json.loads, listen.stdout)), daemon=True)
        reader.start()
        base = served.group(1)
        try:
            def features_heard() -> list[dict]:  # the Features of localizations listen received too
                features = json.loads(fetch(base + "geojson")[1])["features"]
                return [f for f in features if f["properties"]["seq"] in heard]

            wait_for(lambda: len(features_heard()) >= 3, 60, "3 localizations on /geojson and from listen")
            content_type, body = fetch(base + "geojson")
            onnx_only = json.loads(fetch(base + "geojson?estimator=onnx&limit=2")[1])
            with pytest.raises(urllib.error.HTTPError) as bad_limit:
                fetch(base + "geojson?limit=many")
        finally:
            listen.terminate()
            listen.wait(10)
            reader.join(5)
            listen.stdout.close()
    assert content_type.split(";")[0] == GEOJSON_CONTENT_TYPE
    collection = geojson.loads(body)
    assert isinstance(collection, geojson.FeatureCollection) and collection.is_valid, collection.errors()
    geod = pyproj.Geod(ellps="WGS84")
    compared = [f for f in json.loads(body)["features"] if f["properties"]["seq"] in heard]
    assert len(compared) >= 3
    for feature in compared:
        msg = {key: value for key, value in heard[feature["properties"]["seq"]].items() if key != "topic"}
        assert feature == json.loads(json.dumps(localization_feature(msg)))
        lons, lats = zip(*feature["geometry"]["geometries"][1]["coordinates"][0])
        area_m2, _ = geod.polygon_area_perimeter(lons, lats)
        props = feature["properties"]
        assert area_m2 == pytest.approx(math.pi * props["semi_major_m"] * props["semi_minor_m"], rel=0.01)
    assert len(onnx_only["features"]) == 2
    assert {f["properties"]["estimator"] for f in onnx_only["features"]} == {"onnx"}
    with bad_limit.value as error:
        assert error.code == 400 and "limit='many': expected a whole number" in error.read().decode()
