"""Observations for ``heimdall calibrate``: transmissions at known positions and the power (dBm) each receiver
read from them, parsed from the observations CSV (``read_observations``; its format is in
streamer.tools.calibrate's doc) or replayed from a SigMF recording of the network annotated with transmitter
positions (``observations_from_sigmf``, below); ``observations_csv`` writes either as that CSV.

The recording is a ``.sigmf-collection`` with one stream per receiver (what ``heimdall record`` writes;
streams are matched to the config's receivers by name, ``core:description`` or ``heimdall:receiver_id``).
Each transmission at a known position is an annotation, in any one stream, carrying the SigMF ``signal``
extension's emitter object::

    {"core:sample_start": 480000, "core:sample_count": 96000,
     "signal:emitter": {"geolocation": {"type": "Point", "coordinates": [7.512, 45.101, 200.0]},
                        "power_tx": 37.0}}

- ``geolocation`` (required): a GeoJSON point ``[lon, lat]`` or ``[lon, lat, alt_m]`` (WGS84 degrees, m).
- ``power_tx`` (optional): the transmit power (dBm). Without it on every annotation a common level is fitted
  (``heimdall calibrate``'s relative mode); giving it on some annotations only is an error.

The annotation's samples are turned into its time span through that stream's captures (``core:datetime``,
``receivers.sigmf_file.plan_segments``), and every stream is read over that span.

How a reading is made: the whole recording is replayed through the daemon's own pipeline
(``streamer.daemon.pipeline.Pipeline``: lanes, channelizer, window aligner, mel frames, ``channel_power``) with the
physics estimator and ``pipeline.min_receivers = 1``, so that a localization message, whose
``rx_power_dbm`` holds each heard receiver's in-channel power (dBm, with the config's ``calibration_db``), goes
out for every window in which anyone heard. A receiver's reading for a transmission is the mean (dB) of its
``rx_power_dbm`` over the windows that lie wholly inside the annotation; it is left empty (not heard) unless
it was heard in at least half of them. That is the number an operator would read off the daemon's messages by
hand (docs/operations.md, "Calibrating receivers").
"""


from __future__ import annotations

import csv
import dataclasses
import heapq
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sigmf

from receivers.sigmf_file import SigmfReceiver
from streamer.core.errors import HeimdallError

RESERVED_COLUMNS = ("lat", "lon", "alt_m", "tx_power_dbm")


class ObservationsError(HeimdallError):
    """The observations file is malformed; the message names file, line and column."""


# ----------------------------------------------------------------------------------------------------
# Observations file


@dataclass(frozen=True)
class Observations:
    """Transmissions at known positions: ``[N]`` per row, ``measured_dbm`` ``[N, K]`` (NaN = not heard)."""

    lat: np.ndarray
    lon: np.ndarray
    alt_m: np.ndarray | None
    tx_power_dbm: np.ndarray | None
    receiver_ids: tuple[str, ...]
    measured_dbm: np.ndarray
    source: str


def read_observations(path: str | Path, receiver_ids) -> Observations:
    """Parse an observations CSV (module doc); every receiver column must name one of ``receiver_ids``."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ObservationsError(f"{path}: cannot read observations: {exc}") from exc
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")]
    if not numbered:
        raise ObservationsError(f"{path}: no header line (expected lat,lon[,alt_m][,tx_power_dbm],<receiver id>...)")
    header_line, header_text = numbered[0]
    header = [name.strip() for name in next(csv.reader([header_text]))]
    _check_header(path, header_line, header, tuple(receiver_ids))
    values = {name: [] for name in header}
    for line_no, text in numbered[1:]:
        fields = next(csv.reader([text]))
        if len(fields) != len(header):
            raise ObservationsError(f"{path}:{line_no}: {len(fields)} fields, the header has {len(header)}")
        for col, (name, field) in enumerate(zip(header, fields), start=1):
            values[name].append(_number(path, line_no, col, name, field.strip()))
    if not numbered[1:]:
        raise ObservationsError(f"{path}: no observation rows after the header (line {header_line})")
    rx_cols = [n for n in header if n not in RESERVED_COLUMNS]
    col = {name: np.array(v, dtype=np.float64) for name, v in values.items()}
    return Observations(lat=col["lat"], lon=col["lon"], alt_m=col.get("alt_m"), tx_power_dbm=col.get("tx_power_dbm"),
                        receiver_ids=tuple(rx_cols),
                        measured_dbm=np.stack([col[n] for n in rx_cols], axis=1) if rx_cols else np.zeros((len(col["lat"]), 0)),
                        source=str(path))


def observations_csv(obs: Observations) -> str:
    """``obs`` in the observations CSV format (module doc) that ``read_observations`` reads back."""
    header = ["lat", "lon"] + (["alt_m"] if obs.alt_m is not None else []) + (["tx_power_dbm"] if obs.tx_power_dbm is not None else [])
    lines = [",".join(header + list(obs.receiver_ids))]
    for i in range(len(obs.lat)):
        cells = [repr(float(obs.lat[i])), repr(float(obs.lon[i]))]
        cells += [repr(float(obs.alt_m[i]))] if obs.alt_m is not None else []
        cells += [repr(float(obs.tx_power_dbm[i]))] if obs.tx_power_dbm is not None else []
        cells += ["" if not math.isfinite(v) else f"{v:.2f}" for v in obs.measured_dbm[i]]
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def _check_header(path: Path, line_no: int, header: list[str], known: tuple[str, ...]) -> None:
    for col, name in enumerate(header, start=1):
        if not name:
            raise ObservationsError(f"{path}:{line_no}: column {col}: empty column name")
        if name in header[: col - 1]:
            raise ObservationsError(f"{path}:{line_no}: column {col} ({name}): duplicate column")
        if name not in RESERVED_COLUMNS and name not in known:
            raise ObservationsError(f"{path}:{line_no}: column {col} ({name}): unknown receiver id {name!r}; "
                                    f"configured: {', '.join(known)}")
    for need in ("lat", "lon"):
        if need not in header:
            raise ObservationsError(f"{path}:{line_no}: required column {need!r} is missing")


def _number(path: Path, line_no: int, col: int, name: str, text: str) -> float:
    """One cell: a finite number; empty is NaN (not heard) in a receiver column and an error elsewhere."""
    where = f"{path}:{line_no}: column {col} ({name})"
    if not text:
        if name in RESERVED_COLUMNS:
            raise ObservationsError(f"{where}: empty; {name} is required on every row")
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise ObservationsError(f"{where}: expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ObservationsError(f"{where}: {text!r} is not a finite number (leave a receiver's cell empty for not heard)")
    limit = {"lat": 90.0, "lon": 180.0}.get(name)
    if limit is not None and abs(value) > limit:
        raise ObservationsError(f"{where}: {value} is outside [-{limit:g}, {limit:g}] degrees")
    return value

EMITTER_KEY = "signal:emitter"
#: A receiver heard in fewer than this fraction of an annotation's windows reads as not heard.
MIN_HEARD_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class Transmission:
    """One annotated transmission: time span (Unix ns), position (deg, m) and transmit power (dBm or None)."""

    t_start_ns: int
    t_end_ns: int
    lat: float
    lon: float
    alt_m: float | None
    tx_power_dbm: float | None
    where: str  # file and annotation index, for messages


def _stream_receivers(config, collection_path: Path) -> dict[str, SigmfReceiver]:
    """An unpaced SigmfReceiver per configured receiver (each picks its stream); ObservationsError when one is missing."""
    from streamer.core.errors import ReceiverFatalError

    readers = {}
    for rx in config.receivers:
        try:
            readers[rx.id] = SigmfReceiver(rx.id, collection_path, SigmfReceiver.Options(path=str(collection_path), realtime=False))
        except ReceiverFatalError as exc:
            raise ObservationsError(f"{collection_path}: receiver {rx.id!r}: {exc}") from None
    return readers


def _time_of(reader: SigmfReceiver, file_sample: int) -> int | None:
    """Unix ns of data-file sample ``file_sample`` of ``reader``'s stream, None outside every capture."""
    for seg in reader.segments:
        if seg.file_start <= file_sample <= seg.file_start + seg.count:
            return seg.time_ns(file_sample - seg.file_start, reader.sample_rate_hz)
    return None


def _emitter(annotation: dict, where: str) -> tuple[float, float, float | None, float | None]:
    emitter = annotation[EMITTER_KEY]
    point = emitter.get("geolocation") if isinstance(emitter, dict) else None
    coords = point.get("coordinates") if isinstance(point, dict) else None
    if (not isinstance(coords, list) or len(coords) not in (2, 3)
            or not all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in coords)):
        raise ObservationsError(f"{where}: {EMITTER_KEY}.geolocation: expected a GeoJSON point "
                                f"{{\"type\": \"Point\", \"coordinates\": [lon, lat(, alt_m)]}}, got {point!r}")
    lon, lat = float(coords[0]), float(coords[1])
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ObservationsError(f"{where}: {EMITTER_KEY}.geolocation: lat {lat} / lon {lon} outside [-90, 90] / [-180, 180]")
    power = emitter.get("power_tx")
    if power is not None and (isinstance(power, bool) or not isinstance(power, (int, float)) or not math.isfinite(power)):
        raise ObservationsError(f"{where}: {EMITTER_KEY}.power_tx: expected the transmit power in dBm, got {power!r}")
    return lat, lon, (float(coords[2]) if len(coords) == 3 else None), (None if power is None else float(power))


def read_transmissions(readers: dict[str, SigmfReceiver]) -> list[Transmission]:
    """Every annotation with an emitter position, in time order."""
    found = []
    for reader in readers.values():
        for i, annotation in enumerate(reader.recording.get_annotations()):
            if EMITTER_KEY not in annotation:
                continue
            where = f"{reader.meta_path}: annotations[{i}]"
            start = int(annotation[sigmf.SAMPLE_START_KEY])
            count = annotation.get(sigmf.SAMPLE_COUNT_KEY)
            if count is None:
                raise ObservationsError(f"{where}: core:sample_count is needed to know how long the transmission lasted")
            t0, t1 = _time_of(reader, start), _time_of(reader, start + int(count))
            if t0 is None or t1 is None:
                raise ObservationsError(f"{where}: samples {start}..{start + int(count)} are not all inside the recording")
            found.append(Transmission(t0, t1, *_emitter(annotation, where), where=where))
    return sorted(found, key=lambda t: t.t_start_ns)


def replay_readings(config, readers: dict[str, SigmfReceiver]) -> list[dict]:
    """The localization messages of the recording replayed through the daemon's pipeline (module doc)."""
    from prometheus_client import CollectorRegistry

    from streamer.daemon.metrics import Metrics
    from streamer.daemon.pipeline import Pipeline
    from streamer.estimators.physics import PhysicsPosterior

    replay = dataclasses.replace(config, pipeline=dataclasses.replace(config.pipeline, min_receivers=1))
    messages: list[dict] = []
    now = [0]
    pipeline = Pipeline(replay, metrics=Metrics(registry=CollectorRegistry()), send=lambda topic, payload: True,
                        estimators=[PhysicsPosterior(replay)], clock_ns=lambda: now[0])
    # All streams merged in time order, with the data's own clock as the host clock: the aligner then sees
    # what it would have seen live, without waiting.
    for block in heapq.merge(*(iter(r) for r in readers.values()), key=lambda b: b.t0_ns):
        now[0] = block.t0_ns + block.duration_ns
        pipeline.push(block, arrival_ns=now[0])
        messages += pipeline.poll()
    return messages


def observations_from_sigmf(config, collection_path: str | Path) -> Observations:
    """Observations (``streamer.tools.calibrate``) of every annotated transmission in a SigMF collection (module doc)."""
    path = Path(collection_path)
    readers = _stream_receivers(config, path)
    try:
        transmissions = read_transmissions(readers)
        if not transmissions:
            raise ObservationsError(f"{path}: no annotation carries {EMITTER_KEY} with a geolocation (module doc of "
                                    "streamer.tools.observations)")
        powers = [t.tx_power_dbm for t in transmissions]
        if any(p is None for p in powers) and not all(p is None for p in powers):
            missing = next(t.where for t in transmissions if t.tx_power_dbm is None)
            raise ObservationsError(f"{missing}: {EMITTER_KEY}.power_tx is missing but other annotations have it: "
                                    "give it on all of them or on none")
        messages = replay_readings(config, readers)
    finally:
        for reader in readers.values():
            reader.close()
    ids = tuple(rx.id for rx in config.receivers)
    measured = np.full((len(transmissions), len(ids)), np.nan)
    for row, t in enumerate(transmissions):
        inside = [m for m in messages if m["t_start_ns"] >= t.t_start_ns and m["t_end_ns"] <= t.t_end_ns]
        if not inside:
            continue
        for r, rx_id in enumerate(ids):
            heard = [m["rx_power_dbm"][rx_id] for m in inside if rx_id in m["rx_power_dbm"]]
            if len(heard) >= MIN_HEARD_FRACTION * len(inside):
                measured[row, r] = float(np.mean(heard))
    alts = [t.alt_m for t in transmissions]
    return Observations(
        lat=np.array([t.lat for t in transmissions]), lon=np.array([t.lon for t in transmissions]),
        alt_m=None if all(a is None for a in alts) else np.array([config.estimator.physics.tx_alt_m if a is None else a for a in alts]),
        tx_power_dbm=None if powers[0] is None else np.array(powers, dtype=np.float64),
        receiver_ids=ids, measured_dbm=measured, source=str(path),
    )


def is_sigmf(path: str | Path) -> bool:
    """Whether ``heimdall calibrate`` should read ``path`` as a SigMF collection rather than a CSV."""
    return Path(path).suffix == sigmf.SIGMF_COLLECTION_EXT
