"""GeoJSON and Cursor-on-Target outputs (streamer.tools.geoformats, `heimdall listen --geojson`, `heimdall cot`),
checked by parsers we did not write: the geojson package validates the Features, pyproj measures the ellipse
polygon on the WGS84 ellipsoid, and takproto (the TAK protocol library) decodes the CoT we send."""

from __future__ import annotations

import json
import math
import select
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET

import msgpack
import pytest
import zmq

from streamer.cli import main
from streamer.tools.geoformats import (
    BadLocalizationError,
    circular_error_m,
    cot_event_xml,
    cot_mesh_protobuf,
    cot_uid,
    localization_feature,
    select_ellipse,
)

geojson = pytest.importorskip("geojson", reason="the GeoJSON validator is missing: pip install -e '.[test]'")
pyproj = pytest.importorskip("pyproj", reason="geodesic areas need pyproj: pip install -e '.[test]'")

SENT_NS = 1_796_324_700_123_000_000  # 2026-12-03T19:05:00.123Z


def loc_message(**changes) -> dict:
    """A single-channel daemon's loc message (docs/protocol.md's example, cut down), with ``changes``."""
    msg = {
        "v": 2, "seq": 7, "t_start_ns": 1_796_324_654_500_000_000, "t_end_ns": 1_796_324_655_000_000_000,
        "estimator": "onnx", "lat": 44.316, "lon": 8.77586,
        "cov_en_m2": [[886863000.0, -12726700.0], [-12726700.0, 308098000.0]], "covariance_scale": 1.0,
        "ellipse": {"p": 0.95, "semi_major_m": 71257.0, "semi_minor_m": 41973.7, "azimuth_deg": 91.2591,
                    "scale": 2.39238},
        "ellipses": [
            {"p": 0.68, "semi_major_m": 44042.8, "semi_minor_m": 25943.3, "azimuth_deg": 91.2591, "scale": 1.47869},
            {"p": 0.95, "semi_major_m": 71257.0, "semi_minor_m": 41973.7, "azimuth_deg": 91.2591, "scale": 2.39238},
        ],
        "network": "default", "receivers": ["giaveno", "torino", "genova"],
        "rx_power_dbm": {"giaveno": -109.9, "torino": -94.5, "genova": -87.9},
    }
    msg.update(changes)
    return msg


def with_ellipse(lat, lon, a_m, b_m, azimuth_deg) -> dict:
    ellipse = {"p": 0.95, "semi_major_m": a_m, "semi_minor_m": b_m, "azimuth_deg": azimuth_deg, "scale": 2.4477}
    return loc_message(lat=lat, lon=lon, ellipse=ellipse, ellipses=[ellipse])


@pytest.fixture
def takproto():
    return pytest.importorskip("takproto", reason="decoding CoT needs takproto: pip install -e '.[tak]'")


# --- GeoJSON -------------------------------------------------------------------------------------------------------


def test_feature_is_valid_geojson_with_the_point_the_95_percent_polygon_and_their_properties():
    feature = localization_feature(loc_message(channel="145.500", channel_hz=145.5e6, emission_id=3, stage="final"))
    parsed = geojson.loads(json.dumps(feature))
    assert isinstance(parsed, geojson.Feature)
    assert parsed.is_valid, parsed.errors()
    point, polygon = parsed.geometry.geometries
    assert point.type == "Point" and point.coordinates == [8.77586, 44.316]
    assert polygon.type == "Polygon" and len(polygon.coordinates[0]) == 73
    assert parsed.properties == {
        "time": "2026-12-03T19:04:15.000Z", "seq": 7, "t_start_ns": 1_796_324_654_500_000_000,
        "t_end_ns": 1_796_324_655_000_000_000, "estimator": "onnx", "network": "default",
        "receivers": ["giaveno", "torino", "genova"], "channel": "145.500", "channel_hz": 145.5e6,
        "emission_id": 3, "stage": "final",
        "p": 0.95, "semi_major_m": 71257.0, "semi_minor_m": 41973.7, "azimuth_deg": 91.2591,
    }


@pytest.mark.parametrize(("lat", "lon", "a_m", "b_m", "azimuth_deg"), [
    (44.316, 8.77586, 71257.0, 41973.7, 91.2591),  # the protocol example: a 71 km x 42 km ellipse
    (45.0, 7.0, 2000.0, 150.0, 30.0),  # thin and small
    (-33.9, 151.2, 500.0, 500.0, 0.0),  # a circle, southern hemisphere
    (69.6, 18.9, 150000.0, 90000.0, 170.0),  # large and far north, where degrees of longitude are short
])
def test_ellipse_polygon_holds_pi_a_b_on_the_ellipsoid_and_points_its_major_axis_along_the_azimuth(
        lat, lon, a_m, b_m, azimuth_deg):
    feature = localization_feature(with_ellipse(lat, lon, a_m, b_m, azimuth_deg))
    ring = feature["geometry"]["geometries"][1]["coordinates"][0]
    lons, lats = zip(*ring)
    geod = pyproj.Geod(ellps="WGS84")
    area_m2, _ = geod.polygon_area_perimeter(lons, lats)
    assert area_m2 > 0, "the ring must run counter-clockwise (RFC 7946)"
    assert area_m2 == pytest.approx(math.pi * a_m * b_m, rel=0.01)
    # The first vertex ends the major axis; a quarter turn later, the minor axis.
    forward_deg, _, major_m = geod.inv(lon, lat, lons[0], lats[0])
    _, _, minor_m = geod.inv(lon, lat, lons[18], lats[18])
    assert major_m == pytest.approx(a_m, rel=0.005) and minor_m == pytest.approx(b_m, rel=0.005)
    assert abs((forward_deg - azimuth_deg + 90.0) % 180.0 - 90.0) < 0.1


def test_the_ellipse_is_the_95_percent_one_from_ellipses():
    msg = loc_message()
    del msg["ellipse"]
    assert select_ellipse(msg)["semi_major_m"] == 71257.0
    assert select_ellipse(msg, p=0.68)["semi_major_m"] == 44042.8


@pytest.mark.parametrize(("changes", "names"), [
    ({"lat": None}, "lat"),
    ({"lon": float("nan")}, "lon"),
    ({"lat": 95.0}, "lat, lon"),
    ({"t_end_ns": "soon"}, "t_end_ns"),
    ({"ellipse": None, "ellipses": [{"p": 0.68}]}, "no ellipse with p = 0.95"),
    ({"ellipse": None, "ellipses": "many"}, "no ellipse with p = 0.95"),
    ({"ellipse": {"p": 0.95, "semi_major_m": -1.0, "semi_minor_m": 1.0, "azimuth_deg": 0.0}, "ellipses": []},
     "semi_major_m"),
])
def test_a_message_that_is_not_a_localization_is_refused_naming_the_key(changes, names):
    with pytest.raises(BadLocalizationError, match=names):
        localization_feature(loc_message(**changes))
    with pytest.raises(BadLocalizationError, match=names):
        cot_event_xml(loc_message(**changes), sent_ns=SENT_NS)


def test_a_missing_key_is_named():
    msg = loc_message()
    del msg["t_end_ns"]
    with pytest.raises(BadLocalizationError, match="missing key 't_end_ns'"):
        localization_feature(msg)
    with pytest.raises(BadLocalizationError, match="expected a map"):
        localization_feature([1, 2])


# --- Cursor on Target ----------------------------------------------------------------------------------------------


def test_circular_error_is_the_rms_of_the_ellipse_standard_deviations():
    # A 95 % ellipse 2.4477 standard deviations wide with axes 300 m and 100 m: sigmas 122.6 m and 40.9 m.
    ellipse = {"semi_major_m": 300.0, "semi_minor_m": 100.0, "scale": 2.4477}
    assert circular_error_m(ellipse) == pytest.approx(math.sqrt((300.0**2 + 100.0**2) / 2) / 2.4477)
    # For a circle, ce is the standard deviation of either axis.
    assert circular_error_m({"semi_major_m": 244.77, "semi_minor_m": 244.77, "scale": 2.4477}) == pytest.approx(100.0)


def assert_event_matches(event, msg: dict, *, stale_s: float, sent_ns: int = SENT_NS):
    """``event``: a takproto TakMessage's cotEvent for ``msg`` sent at ``sent_ns``."""
    ellipse = msg["ellipse"]
    assert event.type == "a-u-G" and event.how == "m-f" and event.uid == "heimdall.default"
    assert event.lat == pytest.approx(msg["lat"], abs=1e-7) and event.lon == pytest.approx(msg["lon"], abs=1e-7)
    assert event.ce == pytest.approx(circular_error_m(select_ellipse(msg)), abs=0.05)
    assert event.hae == 9999999.0 and event.le == 9999999.0
    assert event.sendTime == pytest.approx(sent_ns // 1_000_000, abs=1)
    assert event.startTime == pytest.approx(msg["t_end_ns"] // 1_000_000, abs=1)
    # takproto truncates seconds * 1000 held in a float: a millisecond either way
    assert event.staleTime == pytest.approx(sent_ns // 1_000_000 + int(stale_s * 1000), abs=1)
    assert event.detail.contact.callsign == "Heimdall default"
    detail = ET.fromstring(f"<detail>{event.detail.xmlDetail}</detail>")
    shape_ellipse = detail.find("shape/ellipse")
    assert float(shape_ellipse.get("major")) == pytest.approx(ellipse["semi_major_m"], abs=0.05)
    assert float(shape_ellipse.get("minor")) == pytest.approx(ellipse["semi_minor_m"], abs=0.05)
    assert float(shape_ellipse.get("angle")) == pytest.approx(ellipse["azimuth_deg"], abs=0.05)
    assert "giaveno, torino, genova" in detail.find("remarks").text


def test_cot_xml_decoded_by_takproto_carries_the_position_times_ce_and_ellipse(takproto):
    msg = loc_message()
    message = takproto.parse_proto(bytearray(cot_event_xml(msg, sent_ns=SENT_NS, stale_s=45.0)))
    assert message is not None, "takproto did not recognise the event as CoT XML"
    assert_event_matches(message.cotEvent, msg, stale_s=45.0)


def test_cot_mesh_protobuf_decoded_by_takproto_carries_the_same_event(takproto):
    msg = loc_message()
    payload = cot_mesh_protobuf(cot_event_xml(msg, sent_ns=SENT_NS, stale_s=45.0))
    assert payload[:3] == b"\xbf\x01\xbf"
    assert_event_matches(takproto.parse_proto(bytearray(payload)).cotEvent, msg, stale_s=45.0)


def test_each_band_emission_keeps_its_own_uid():
    assert cot_uid(loc_message()) == "heimdall.default"
    assert cot_uid(loc_message(network="north", channel="145.500", emission_id=12)) == "heimdall.north.145.500.12"


def test_a_stale_time_that_is_not_positive_is_refused():
    with pytest.raises(ValueError, match="stale time must be a positive number of seconds, got 0"):
        cot_event_xml(loc_message(), sent_ns=SENT_NS, stale_s=0)


# --- The commands, against real sockets -----------------------------------------------------------------------------


@pytest.fixture
def daemon_output():
    """A stand-in for the daemon's output: an XPUB on an ephemeral port, so a test sees when a subscriber joins."""
    ctx = zmq.Context.instance()
    xpub = ctx.socket(zmq.XPUB)
    xpub.setsockopt(zmq.LINGER, 0)
    xpub.bind("tcp://127.0.0.1:0")
    yield xpub
    xpub.close()


def wait_for_subscriber(xpub, proc: subprocess.Popen) -> None:
    if not xpub.poll(20_000):
        proc.kill()
        pytest.fail(f"the command never subscribed; stderr: {proc.communicate()[1]}")
    assert xpub.recv().startswith(b"\x01")


def publish(xpub, topic: str, msg) -> None:
    xpub.send_multipart([topic.encode(), msgpack.packb(msg)])


@pytest.mark.parametrize("form", ["xml", "protobuf"])
def test_heimdall_cot_sends_each_localization_over_udp_and_takproto_decodes_it(daemon_output, takproto, form):
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(20.0)
    port = receiver.getsockname()[1]
    endpoint = daemon_output.getsockopt_string(zmq.LAST_ENDPOINT)
    command = [sys.executable, "-m", "streamer", "cot", endpoint, "--udp", f"127.0.0.1:{port}", "--count", "2",
               "--stale-s", "30"] + (["--protobuf"] if form == "protobuf" else [])
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_subscriber(daemon_output, proc)
        publish(daemon_output, "status", {"v": 2})  # not a localization: not sent
        publish(daemon_output, "loc", {"v": 2, "seq": 0})  # not a whole localization: skipped and said
        publish(daemon_output, "loc", loc_message(seq=1))
        publish(daemon_output, "loc", loc_message(seq=2, lat=45.1))
        events = [takproto.parse_proto(bytearray(receiver.recv(65536))).cotEvent for _ in range(2)]
        _, stderr = proc.communicate(timeout=20)
    finally:
        proc.kill()
        receiver.close()
    assert proc.returncode == 0, stderr
    assert [event.lat for event in events] == [pytest.approx(44.316), pytest.approx(45.1)]
    for event in events:
        assert event.type == "a-u-G" and event.uid == "heimdall.default"
        assert event.staleTime - event.sendTime == pytest.approx(30_000, abs=1)
        assert 'major="71257.0" minor="41973.7" angle="91.3"' in event.detail.xmlDetail
    assert "skipped a message on 'loc': loc message: missing key 'lat'" in stderr
    assert "2 events sent, 0 dropped (transport), 1 messages skipped" in stderr


def test_heimdall_cot_streams_xml_events_to_a_tak_server_over_tcp(daemon_output, takproto):
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(20.0)
    endpoint = daemon_output.getsockopt_string(zmq.LAST_ENDPOINT)
    proc = subprocess.Popen([sys.executable, "-m", "streamer", "cot", endpoint, "--tcp",
                             f"127.0.0.1:{server.getsockname()[1]}", "--count", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_subscriber(daemon_output, proc)
        publish(daemon_output, "loc", loc_message())
        connection, _ = server.accept()
        with connection:
            connection.settimeout(20.0)
            received = b""
            while chunk := connection.recv(65536):  # the command closes the connection after its one event
                received += chunk
        _, stderr = proc.communicate(timeout=20)
    finally:
        proc.kill()
        server.close()
    assert proc.returncode == 0, stderr
    event = takproto.parse_proto(bytearray(received)).cotEvent
    assert_event_matches(event, loc_message(), stale_s=60.0, sent_ns=event.sendTime * 1_000_000)
    assert "1 events sent, 0 dropped (transport)" in stderr


def test_heimdall_cot_counts_and_drops_the_events_a_down_tak_server_misses(daemon_output):
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now: each connect is refused
    endpoint = daemon_output.getsockopt_string(zmq.LAST_ENDPOINT)
    proc = subprocess.Popen([sys.executable, "-m", "streamer", "cot", endpoint, "--tcp", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_subscriber(daemon_output, proc)
        publish(daemon_output, "loc", loc_message())
        ready, _, _ = select.select([proc.stderr], [], [], 20.0)
        assert ready, "no warning from heimdall cot within 20 s"
        warning = proc.stderr.readline()
        proc.terminate()  # SIGTERM: a clean stop that says what it did
        _, stderr = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert f"cot: TCP 127.0.0.1:{port}:" in warning and "retrying at the next event" in warning
    assert proc.returncode == 0, stderr
    assert "0 events sent, 1 dropped (transport), 0 messages skipped" in stderr


def test_heimdall_cot_protobuf_without_takproto_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "takproto", None)  # as in an install without the [tak] extra
    assert main(["cot", "--udp", "127.0.0.1:6969", "--protobuf"]) == 2
    assert "heimdall: error: TAK protobuf output needs takproto: pip install -e '.[tak]'" in capsys.readouterr().err


def test_heimdall_cot_refuses_protobuf_over_tcp_and_a_bad_address():
    tcp = subprocess.run([sys.executable, "-m", "streamer", "cot", "--tcp", "127.0.0.1:8087", "--protobuf"],
                         check=False, capture_output=True, text=True, timeout=60)
    assert tcp.returncode == 2 and "--protobuf is for --udp" in tcp.stderr
    bad = subprocess.run([sys.executable, "-m", "streamer", "cot", "--udp", "239.2.3.1"],
                         check=False, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "expected HOST:PORT with a port 1-65535, e.g. 239.2.3.1:6969" in bad.stderr


def test_heimdall_listen_geojson_prints_one_valid_feature_per_localization(daemon_output):
    endpoint = daemon_output.getsockopt_string(zmq.LAST_ENDPOINT)
    proc = subprocess.Popen([sys.executable, "-m", "streamer", "listen", endpoint, "--geojson", "--topic", "",
                             "--count", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_subscriber(daemon_output, proc)
        publish(daemon_output, "status", {"v": 2, "t_ns": 1})  # another topic: not printed
        publish(daemon_output, "loc", loc_message())
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    [line] = stdout.splitlines()
    feature = geojson.loads(line)
    assert feature.is_valid, feature.errors()
    assert feature.properties["semi_major_m"] == 71257.0
