"""A ``loc`` message (docs/protocol.md) in the formats map and situational-awareness tools read: a GeoJSON
Feature (RFC 7946) and a Cursor-on-Target event (CoT 2.0 XML, or TAK Protocol Version 1 "mesh" protobuf).

Both carry the position and the p = 0.95 credible ellipse the message already holds (``ellipses``); nothing is
re-estimated here. Distances are metres, angles degrees clockwise from true north, times UTC.

GeoJSON: one Feature per localization. Its geometry is a GeometryCollection of the estimate (Point) and the
ellipse (Polygon, ``ELLIPSE_VERTICES`` vertices placed by pymap3d from the estimate's local east-north plane,
counter-clockwise as RFC 7946 asks); its properties are the window, estimator, receivers and the ellipse's
``p``, ``semi_major_m``, ``semi_minor_m`` and ``azimuth_deg``. Built as plain dicts, so it needs no package
beyond the base install; ``json.dumps`` writes it.

CoT: one ``<event>`` per localization, ``uid`` one per network (and per band emission), so a TAK client moves
one marker rather than piling up new ones. ``point`` ``ce`` is the circular 1-sigma error derived from the
ellipse (``circular_error_m``); ``hae`` and ``le`` are CoT's "unknown", 9999999: Heimdall estimates no height.
``detail/shape/ellipse`` carries the ellipse's semi-axes and azimuth. The XML is what every TAK peer accepts;
``cot_mesh_protobuf`` turns it into TAK Protocol Version 1 with takproto (``pip install -e '.[tak]'``).

Examples
--------
>>> msg = {"t_start_ns": 1_796_324_654_500_000_000, "t_end_ns": 1_796_324_655_000_000_000, "lat": 45.0,
...        "lon": 7.0, "estimator": "physics", "network": "default", "receivers": ["a", "b", "c"],
...        "ellipses": [{"p": 0.95, "semi_major_m": 2000.0, "semi_minor_m": 1000.0, "azimuth_deg": 30.0}]}
>>> feature = localization_feature(msg)
>>> feature["geometry"]["geometries"][0]
{'type': 'Point', 'coordinates': [7.0, 45.0]}
>>> feature["properties"]["semi_major_m"], feature["properties"]["time"]
(2000.0, '2026-12-03T19:04:15.000Z')
>>> round(circular_error_m(select_ellipse(msg)), 1)  # sqrt((2000**2 + 1000**2) / 2) / 2.448
646.0
"""

from __future__ import annotations

import datetime as dt
import math
import xml.etree.ElementTree as ET

import numpy as np

from streamer.core.errors import MissingDependencyError
from streamer.core.geodesy import Origin, ellipse_scale, enu_to_geodetic

#: Vertices of the ellipse polygon (one every 5 degrees of the ellipse's parameter): the inscribed polygon
#: holds (72 / 2 pi) sin(2 pi / 72) = 99.87 % of the ellipse's area.
ELLIPSE_VERTICES = 72
#: Probability of the ellipse both formats carry (the daemon's `ellipse`, also in `ellipses`).
ELLIPSE_P = 0.95
#: CoT's value for an unknown height or error (m).
COT_UNKNOWN = 9999999.0
#: CoT type of a localization: an atom ("a"), affiliation unknown ("u"), ground ("G"): an emitter Heimdall
#: has found but not identified.
COT_TYPE = "a-u-G"
#: CoT "how": machine-made ("m"), fused ("f") from several receivers.
COT_HOW = "m-f"
#: How long a TAK client shows the marker after the event is sent, unless a newer event replaces it (s).
DEFAULT_STALE_S = 60.0
TAK_INSTALL = "pip install -e '.[tak]'"


class BadLocalizationError(ValueError):
    """A ``loc`` message lacks a key or holds a value of the wrong type or range; the message names the key."""


def _required(msg: dict, key: str):
    if not isinstance(msg, dict):
        raise BadLocalizationError(f"loc message: expected a map (docs/protocol.md), got {type(msg).__name__}")
    if key not in msg:
        raise BadLocalizationError(f"loc message: missing key {key!r} (docs/protocol.md, the loc table)")
    return msg[key]


def _finite(where: str, value, *, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadLocalizationError(f"loc message: {where} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise BadLocalizationError(f"loc message: {where} must be >= {minimum:g}, got {value!r}")
    return float(value)


def _position(msg: dict) -> tuple[float, float]:
    lat = _finite("lat", _required(msg, "lat"))
    lon = _finite("lon", _required(msg, "lon"))
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise BadLocalizationError(f"loc message: lat, lon = {lat!r}, {lon!r}: expected degrees in [-90, 90] and [-180, 180]")
    return lat, lon


def select_ellipse(msg: dict, p: float = ELLIPSE_P) -> dict:
    """The ellipse of probability ``p`` from ``msg["ellipses"]`` (or ``msg["ellipse"]`` when it has that ``p``),
    its numbers checked: ``p``, ``semi_major_m``, ``semi_minor_m`` (m, >= 0), ``azimuth_deg`` and ``scale``
    (standard deviations it spans; the Gaussian's for ``p`` when absent)."""
    offered = msg.get("ellipses") if isinstance(msg, dict) else None
    candidates = list(offered) if isinstance(offered, list) else []
    if isinstance(msg, dict) and isinstance(msg.get("ellipse"), dict):
        candidates.append(msg["ellipse"])
    for found in candidates:
        if isinstance(found, dict) and isinstance(found.get("p"), (int, float)) and abs(found["p"] - p) < 1e-9:
            break
    else:
        offered = [c.get("p") for c in candidates if isinstance(c, dict)]
        raise BadLocalizationError(f"loc message: no ellipse with p = {p:g} in 'ellipses' or 'ellipse' (found p = {offered})")
    scale = found.get("scale")
    return {
        "p": float(p),
        "semi_major_m": _finite("ellipse semi_major_m", found.get("semi_major_m"), minimum=0.0),
        "semi_minor_m": _finite("ellipse semi_minor_m", found.get("semi_minor_m"), minimum=0.0),
        "azimuth_deg": _finite("ellipse azimuth_deg", found.get("azimuth_deg")) % 180.0,
        "scale": ellipse_scale(p) if scale is None else _finite("ellipse scale", scale, minimum=1e-12),
    }


def ellipse_ring(lat: float, lon: float, semi_major_m: float, semi_minor_m: float, azimuth_deg: float,
                 vertices: int = ELLIPSE_VERTICES) -> list[list[float]]:
    """A closed ring of ``[lon, lat]`` (degrees) around the ellipse centred at ``lat``, ``lon``: semi-axes in
    metres, the major axis ``azimuth_deg`` clockwise from north, counter-clockwise and the first vertex repeated
    last (RFC 7946). The vertices are laid in the centre's east-north plane and placed on the ellipsoid by
    pymap3d; longitudes stay continuous around the centre, so a ring across the antimeridian may pass 180."""
    if vertices < 3:
        raise ValueError(f"ellipse_ring: vertices must be at least 3, got {vertices}")
    t = np.linspace(0.0, 2.0 * math.pi, vertices, endpoint=False)
    az = math.radians(azimuth_deg)
    major_en = np.array([math.sin(az), math.cos(az)])  # (east, north) unit vector along the major axis
    minor_en = np.array([-math.cos(az), math.sin(az)])  # the major axis turned 90 degrees counter-clockwise
    points_en = (semi_major_m * np.cos(t))[:, None] * major_en + (semi_minor_m * np.sin(t))[:, None] * minor_en
    lats, lons, _ = enu_to_geodetic(points_en[:, 0], points_en[:, 1], np.zeros(vertices), Origin(lat, lon))
    lons = lon + (lons - lon + 180.0) % 360.0 - 180.0
    ring = [[round(float(x), 7), round(float(y), 7)] for x, y in zip(lons, lats)]  # 1e-7 degree: about 1 cm
    return ring + [ring[0]]


def utc_iso(t_ns: int) -> str:
    """Unix nanoseconds as ISO 8601 UTC with milliseconds: ``2026-12-03T14:24:15.000Z`` (CoT's and GeoJSON's)."""
    moment = dt.datetime.fromtimestamp(int(t_ns) // 1_000_000 / 1e3, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _window_end_ns(msg: dict) -> int:
    t_end_ns = _required(msg, "t_end_ns")
    if isinstance(t_end_ns, bool) or not isinstance(t_end_ns, int) or t_end_ns < 0:
        raise BadLocalizationError(f"loc message: t_end_ns must be Unix nanoseconds (an int >= 0), got {t_end_ns!r}")
    return t_end_ns


#: loc keys copied into a Feature's properties as they are, when the message has them.
FEATURE_KEYS = ("seq", "t_start_ns", "t_end_ns", "estimator", "network", "receivers",
                "channel", "channel_hz", "emission_id", "stage")


def localization_feature(msg: dict, *, p: float = ELLIPSE_P, vertices: int = ELLIPSE_VERTICES) -> dict:
    """The GeoJSON Feature of one ``loc`` message: a GeometryCollection of the estimate (Point) and its
    ``p`` ellipse (Polygon); properties ``time`` (window end, ISO 8601 UTC), the message's ``FEATURE_KEYS`` it
    has, and the ellipse's ``p``, ``semi_major_m``, ``semi_minor_m`` (m) and ``azimuth_deg``. Raises
    ``BadLocalizationError`` (a ``ValueError``) naming the key when the message lacks one or holds a value out of range."""
    lat, lon = _position(msg)
    ellipse = select_ellipse(msg, p)
    ring = ellipse_ring(lat, lon, ellipse["semi_major_m"], ellipse["semi_minor_m"], ellipse["azimuth_deg"], vertices)
    properties = {"time": utc_iso(_window_end_ns(msg))}
    properties.update({key: msg[key] for key in FEATURE_KEYS if key in msg})
    properties.update({key: ellipse[key] for key in ("p", "semi_major_m", "semi_minor_m", "azimuth_deg")})
    return {
        "type": "Feature",
        "geometry": {"type": "GeometryCollection", "geometries": [
            {"type": "Point", "coordinates": [lon, lat]},
            {"type": "Polygon", "coordinates": [ring]},
        ]},
        "properties": properties,
    }


def feature_collection(features: list[dict]) -> dict:
    """A GeoJSON FeatureCollection of ``features`` (what a ``/geojson`` endpoint serves)."""
    return {"type": "FeatureCollection", "features": list(features)}


def circular_error_m(ellipse: dict) -> float:
    """CoT's ``ce``, the circular 1-sigma error (m): the root mean square of the ellipse's two standard
    deviations, ``sqrt((sigma_major**2 + sigma_minor**2) / 2)``, each a semi-axis divided by the ``scale``
    standard deviations the ellipse spans. It keeps the covariance's total variance (its trace / 2)."""
    sigma_major = ellipse["semi_major_m"] / ellipse["scale"]
    sigma_minor = ellipse["semi_minor_m"] / ellipse["scale"]
    return math.sqrt((sigma_major**2 + sigma_minor**2) / 2.0)


def cot_uid(msg: dict) -> str:
    """The event uid: ``heimdall.<network>``, plus ``.<channel>.<emission_id>`` for a band daemon's emission, so
    each emitter keeps one marker that later events move."""
    uid = f"heimdall.{msg.get('network', 'default')}"
    if "emission_id" in msg:
        uid += f".{msg.get('channel', '')}.{msg['emission_id']}"
    return uid


def _remarks(msg: dict, ellipse: dict) -> str:
    receivers = msg.get("receivers") if isinstance(msg.get("receivers"), list) else []
    return (f"Heimdall {msg.get('estimator', '?')} estimate from {len(receivers)} receivers "
            f"({', '.join(map(str, receivers))}); {ellipse['p'] * 100:g} % ellipse "
            f"{ellipse['semi_major_m']:.0f} m x {ellipse['semi_minor_m']:.0f} m at {ellipse['azimuth_deg']:.0f} deg")


def cot_event_xml(msg: dict, *, sent_ns: int, stale_s: float = DEFAULT_STALE_S, cot_type: str = COT_TYPE,
                  p: float = ELLIPSE_P) -> bytes:
    """One CoT 2.0 ``<event>`` (UTF-8 XML with its declaration) for a ``loc`` message.

    ``time`` is ``sent_ns`` (host clock, Unix ns: when it is sent), ``start`` the window's end (receiver time)
    and ``stale`` ``time`` + ``stale_s`` seconds, so a replayed recording's estimates still show. ``point``
    carries lat/lon, ``ce`` (``circular_error_m``) and 9999999 for ``hae`` and ``le``; ``detail`` the
    ``p`` ellipse (``shape/ellipse`` ``major``, ``minor``: semi-axes in m; ``angle``: the major axis, degrees
    clockwise from true north), a ``contact`` callsign and ``remarks``. Raises ``ValueError`` on a message
    that lacks a key or a ``stale_s`` that is not positive."""
    if isinstance(stale_s, bool) or not isinstance(stale_s, (int, float)) or not (stale_s > 0 and math.isfinite(stale_s)):
        raise ValueError(f"CoT stale time must be a positive number of seconds, got {stale_s!r}")
    lat, lon = _position(msg)
    ellipse = select_ellipse(msg, p)
    event = ET.Element("event", {
        "version": "2.0", "uid": cot_uid(msg), "type": cot_type, "how": COT_HOW,
        "time": utc_iso(sent_ns), "start": utc_iso(_window_end_ns(msg)),
        "stale": utc_iso(int(sent_ns + stale_s * 1e9)),
    })
    ET.SubElement(event, "point", {
        "lat": f"{lat:.7f}", "lon": f"{lon:.7f}", "hae": f"{COT_UNKNOWN:.1f}",
        "ce": f"{circular_error_m(ellipse):.1f}", "le": f"{COT_UNKNOWN:.1f}",
    })
    detail = ET.SubElement(event, "detail")
    shape = ET.SubElement(detail, "shape")
    ET.SubElement(shape, "ellipse", {
        "major": f"{ellipse['semi_major_m']:.1f}", "minor": f"{ellipse['semi_minor_m']:.1f}",
        "angle": f"{ellipse['azimuth_deg']:.1f}",
    })
    ET.SubElement(detail, "contact", {"callsign": f"Heimdall {msg.get('network', 'default')}"})
    ET.SubElement(detail, "remarks").text = _remarks(msg, ellipse)
    return ET.tostring(event, encoding="UTF-8", xml_declaration=True)


def import_takproto():
    """The takproto module; ``MissingDependencyError`` with the install command when it is not installed."""
    try:
        import takproto
    except ModuleNotFoundError as exc:
        raise MissingDependencyError(f"TAK protobuf output needs takproto: {TAK_INSTALL}") from exc
    return takproto


def cot_mesh_protobuf(event_xml: bytes) -> bytes:
    """The CoT event as TAK Protocol Version 1 mesh (``bf 01 bf`` then a TakMessage protobuf; UDP), by takproto.
    Raises ``MissingDependencyError`` with the install command when takproto is not installed."""
    takproto = import_takproto()
    return bytes(takproto.xml2proto(event_xml, takproto.TAKProtoVer.MESH))
