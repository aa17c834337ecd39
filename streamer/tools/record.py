"""``heimdall record``: run every configured receiver and write what it delivers as a SigMF Collection.

Layout of ``OUT`` (one stream per receiver, file names from the receiver ids)::

    OUT/<network>.sigmf-collection      core:streams -> every stream below (with the sha512 of its meta)
    OUT/<id>.sigmf-data                 cf32_le, full scale 1.0, exactly what the adapter delivered
    OUT/<id>.sigmf-meta                 global + captures (below)

Global: ``core:datatype`` ``cf32_le``, ``core:sample_rate`` (Hz), ``core:hw`` (adapter kind and options),
``core:recorder``, ``core:description`` = the receiver id, ``core:geolocation`` (GeoJSON point
``[lon, lat, alt_m]`` from the config), ``core:collection``, ``core:extensions`` declaring ``heimdall`` and
the keys ``heimdall:receiver_id``, ``heimdall:calibration_db`` (dB, from the config) and
``heimdall:samples_dropped`` (``{reason: samples}``: everything lost before the file, see below).

Captures: a new one starts at the first block and whenever the stream is not a plain continuation: a
``sample_index`` jump (a gap: ``core:global_index`` jumps with it), a changed centre frequency, time source
or gain, a block flagged ``OVERFLOW``/``RETUNE``/``DISCONTINUITY`` or with different ``AGC``/``CLIPPED`` state
(``heimdall:flags``), or a ``t0_ns`` more than ``TIME_RESYNC_NS`` away from what counting samples predicts
(drift or a clock step: ``core:datetime`` re-anchors it). Each capture carries ``core:sample_start``,
``core:global_index``, ``core:frequency``, ``core:datetime`` (RFC 3339 UTC, ns), ``heimdall:time_source``
and, when known, ``heimdall:gain_db``. Replaying with ``kind = "sigmf"`` gives the same blocks back (block
boundaries follow ``block_s``; indices, times and samples are the same).

No silent loss: each receiver stops after ``seconds`` of signal (its last block is cut to the exact sample
count); what the adapter reports through its DropCounter, index gaps, blocks whose index runs backwards
and blocks at a sample rate other than the stream's (SigMF has one rate per file) are counted in
``heimdall:samples_dropped`` and logged.

Examples
--------
>>> from streamer.config import from_dict
>>> import tempfile
>>> cfg = from_dict({"receivers": [
...     {"id": "a", "kind": "simulator", "lat": 45.0, "lon": 7.0, "start_ns": 0, "realtime": False, "sample_rate_hz": 48000.0},
...     {"id": "b", "kind": "simulator", "lat": 45.2, "lon": 7.3, "start_ns": 0, "realtime": False, "sample_rate_hz": 48000.0}]})
>>> path = record(cfg, 0.1, tempfile.mkdtemp())
>>> import sigmf
>>> rec = sigmf.fromfile(path.parent / "a.sigmf-meta")
>>> path.name, rec.get_global_field(sigmf.DESCRIPTION_KEY), rec.sample_count, len(rec.get_captures())
('default.sigmf-collection', 'a', 4800, 1)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import sigmf

from receivers.base import Flags, IQBlock, ReceiverContext
from receivers.sigmf_file import (
    BOUNDARY_FLAGS,
    CALIBRATION_DB_KEY,
    EXTENSION,
    FLAGS_KEY,
    GAIN_DB_KEY,
    RECEIVER_ID_KEY,
    SAMPLES_DROPPED_KEY,
    TIME_SOURCE_KEY,
    flag_names,
    format_datetime_ns,
)
from streamer import __version__
from streamer.config import Config, ReceiverConfig
from streamer.core.errors import HeimdallError
from streamer.daemon.runner import ReceiverRunner

log = logging.getLogger(__name__)

#: A block's t0_ns this far from the sample-count prediction starts a new capture (re-anchors time).
TIME_RESYNC_NS = 1_000_000
DATATYPE = "cf32_le"


class RecordingError(HeimdallError):
    """The recording could not be written (output exists, nothing was received, metadata invalid)."""


class _LockedTally:
    """DropCounter shared by the adapter threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.dropped: Counter[tuple[str, str]] = Counter()
        self.bad_frames: Counter[tuple[str, str]] = Counter()

    def samples_dropped(self, receiver_id: str, reason: str, n: int) -> None:
        with self._lock:
            self.dropped[(receiver_id, reason)] += int(n)

    def bad_frame(self, receiver_id: str, reason: str) -> None:
        with self._lock:
            self.bad_frames[(receiver_id, reason)] += 1

    def for_receiver(self, receiver_id: str) -> tuple[Counter, Counter]:
        with self._lock:
            return (Counter({r: n for (rid, r), n in self.dropped.items() if rid == receiver_id}),
                    Counter({r: n for (rid, r), n in self.bad_frames.items() if rid == receiver_id}))


def _file_stem(receiver_id: str, taken: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", receiver_id).lstrip(".") or "receiver"
    unique, k = stem, 2
    while unique in taken:
        unique, k = f"{stem}-{k}", k + 1
    taken.add(unique)
    return unique


class StreamWriter:
    """One receiver's .sigmf-data, written block by block, and the captures that describe it."""

    def __init__(self, rx: ReceiverConfig, data_path: Path, seconds: float) -> None:
        self.rx = rx
        self.data_path = data_path
        self.seconds = float(seconds)
        self._file = data_path.open("xb")
        self.captures: list[dict] = []
        self.written = 0  # samples in the data file
        self.sample_rate_hz: float | None = None
        self.target: int | None = None
        self.dropped: Counter[str] = Counter()
        self.done = threading.Event()
        self._next_index: int | None = None
        self._next_t_ns: int | None = None  # predicted t0 of the next block
        self._state: tuple | None = None  # (freq, time_source, gain, state flags) of the open capture
        self._index_shift = 0  # keeps global_index monotonic after a reconnect restarts the count
        self._capture_anchor: tuple[int, int] | None = None  # (global index, t0_ns) of the open capture

    def write(self, block: IQBlock) -> bool:
        """Append one block (cut at the target length); True once the receiver has recorded enough."""
        if self.done.is_set():
            return True
        n = len(block.samples)
        if self.sample_rate_hz is None:
            self.sample_rate_hz = float(block.sample_rate)
            self.target = int(round(self.seconds * self.sample_rate_hz))
        if block.sample_rate != self.sample_rate_hz:
            self._drop("rate_changed", n)
            return False
        index = block.sample_index + self._index_shift
        if self._next_index is not None and index < self._next_index:
            if not block.flags & Flags.DISCONTINUITY:
                self._drop("index_backwards", n)
                return False
            self._index_shift += self._next_index - index  # a restarted source: continue the count
            index = self._next_index
        if self._next_index is not None and index > self._next_index:
            self.dropped["gap"] += index - self._next_index
        n = min(n, self.target - self.written)
        if n > 0:
            self._maybe_new_capture(block, index)
            np.ascontiguousarray(block.samples[:n], dtype="<c8").tofile(self._file)
            self.written += n
            self._next_index = index + n
            self._next_t_ns = block.t0_ns + int(round(n * 1e9 / self.sample_rate_hz))
        if self.written >= self.target:
            self.done.set()
        return self.done.is_set()

    def _drop(self, reason: str, n: int) -> None:
        self.dropped[reason] += n
        log.warning("recording %s: %d samples not recorded (%s)", self.rx.id, n, reason)

    def _maybe_new_capture(self, block: IQBlock, index: int) -> None:
        state = (float(block.center_freq), block.time_source, block.gain_db, block.flags & ~BOUNDARY_FLAGS)
        predicted = None
        if self._capture_anchor is not None:
            anchor_index, anchor_t = self._capture_anchor
            predicted = anchor_t + int(round((index - anchor_index) * 1e9 / self.sample_rate_hz))
        if (
            self._state == state
            and index == self._next_index
            and not block.flags & BOUNDARY_FLAGS
            and predicted is not None
            and abs(block.t0_ns - predicted) <= TIME_RESYNC_NS
        ):
            return
        capture = {
            sigmf.SAMPLE_START_KEY: self.written,
            sigmf.GLOBAL_INDEX_KEY: index,
            sigmf.FREQUENCY_KEY: float(block.center_freq),
            sigmf.DATETIME_KEY: format_datetime_ns(block.t0_ns),
            TIME_SOURCE_KEY: block.time_source,
        }
        if block.gain_db is not None:
            capture[GAIN_DB_KEY] = float(block.gain_db)
        if block.flags:
            capture[FLAGS_KEY] = flag_names(block.flags)
        self.captures.append(capture)
        self._state = state
        self._capture_anchor = (index, block.t0_ns)

    def close(self) -> None:
        self._file.close()

    def metadata(self, source_drops: Counter, collection_name: str) -> "sigmf.SigMFFile":
        """The .sigmf-meta for what was written (validated by the caller)."""
        rx = self.rx
        options = dataclasses.asdict(rx.options) if dataclasses.is_dataclass(rx.options) else {}
        dropped = Counter(source_drops)
        dropped.update(self.dropped)
        meta = sigmf.SigMFFile(
            global_info={
                sigmf.DATATYPE_KEY: DATATYPE,
                sigmf.SAMPLE_RATE_KEY: self.sample_rate_hz,
                sigmf.HW_KEY: f"heimdall receiver kind {rx.kind!r}, options {json.dumps(options, default=str)}",
                sigmf.RECORDER_KEY: f"heimdall-streamer {__version__} (heimdall record)",
                sigmf.DESCRIPTION_KEY: rx.id,
                sigmf.GEOLOCATION_KEY: {"type": "Point", "coordinates": [rx.lon, rx.lat, rx.alt_m]},
                sigmf.COLLECTION_KEY: collection_name,
                sigmf.EXTENSIONS_KEY: [dict(EXTENSION)],
                RECEIVER_ID_KEY: rx.id,
                CALIBRATION_DB_KEY: float(rx.calibration_db),
                SAMPLES_DROPPED_KEY: {reason: int(n) for reason, n in sorted(dropped.items()) if n},
            },
        )
        meta.set_data_file(self.data_path)  # computes core:sha512
        for capture in self.captures:
            capture = dict(capture)
            meta.add_capture(capture.pop(sigmf.SAMPLE_START_KEY), metadata=capture)
        return meta


class _RecordingRunner(ReceiverRunner):
    """A ReceiverRunner that says when its thread has finished (source ended, fatal error or stopped)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.finished = threading.Event()

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.finished.set()


def record(config: Config, seconds: float, out_dir: str | Path, *, timeout_s: float | None = None) -> Path:
    """Record ``seconds`` of signal from every receiver of ``config`` into ``out_dir``; returns the .sigmf-collection.

    Stops when every receiver has delivered ``seconds`` of samples, has ended or failed, or after
    ``timeout_s`` of wall time (default: no limit; Ctrl-C also stops). Whatever was received is always
    written out, with valid metadata. Refuses to overwrite an existing recording.
    """
    if not config.receivers:
        raise RecordingError(f"{config.source}: no [[receivers]] configured")
    if not seconds > 0:
        raise RecordingError(f"seconds must be > 0, got {seconds}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    collection_base = out / config.network.name
    collection_path = collection_base.with_name(collection_base.name + sigmf.SIGMF_COLLECTION_EXT)
    taken: set[str] = set()
    stems = {rx.id: _file_stem(rx.id, taken) for rx in config.receivers}
    existing = [p for p in [collection_path] + [out / f"{s}{ext}" for s in stems.values()
                for ext in (sigmf.SIGMF_DATASET_EXT, sigmf.SIGMF_METADATA_EXT)] if p.exists()]
    if existing:
        raise RecordingError(f"{existing[0]}: already exists; choose an empty output folder")
    writers = {rx.id: StreamWriter(rx, out / f"{stems[rx.id]}{sigmf.SIGMF_DATASET_EXT}", seconds) for rx in config.receivers}
    drops = _LockedTally()
    ctx = ReceiverContext(config=config, drops=drops)
    try:
        _run_receivers(config, ctx, writers, timeout_s)
    finally:
        for writer in writers.values():
            writer.close()
    return _write_metadata(config, writers, drops, collection_path)


def _run_receivers(config: Config, ctx: ReceiverContext, writers: dict[str, StreamWriter], timeout_s: float | None) -> None:
    release = threading.Event()  # a finished receiver's thread waits on it instead of spinning
    wake = threading.Event()

    def sink_for(rx: ReceiverConfig):
        writer = writers[rx.id]

        def sink(block: IQBlock, realtime: bool) -> None:
            if block.receiver_id != rx.id:
                writer._drop("wrong_receiver_id", len(block.samples))
                return
            if writer.write(block):
                wake.set()
                release.wait()

        return sink

    runners = [_RecordingRunner(rx, ctx, sink_for(rx)) for rx in config.receivers]
    for runner in runners:
        runner.start()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while not all(w.done.is_set() or r.finished.is_set() for w, r in zip(writers.values(), runners)):
            if deadline is not None and time.monotonic() >= deadline:
                log.warning("recording: timeout after %.1f s", timeout_s)
                break
            wake.wait(0.1)
            wake.clear()
    finally:
        release.set()
        for runner in runners:
            runner.stop(timeout_s=2.0)
    for runner in runners:
        if runner.fatal:
            log.error("recording %s: receiver failed: %s", runner.rx.id, runner.fatal)


def _write_metadata(config: Config, writers: dict[str, StreamWriter], drops: _LockedTally, collection_path: Path) -> Path:
    meta_names = []
    for rid, writer in writers.items():
        source_drops, bad_frames = drops.for_receiver(rid)
        if writer.sample_rate_hz is None or writer.written == 0:
            log.warning("recording %s: no samples received; not in the collection", rid)
            writer.data_path.unlink(missing_ok=True)
            continue
        meta = writer.metadata(source_drops, collection_path.stem)
        try:
            meta.validate()
        except Exception as exc:  # jsonschema.ValidationError: our own metadata is wrong
            raise RecordingError(f"{writer.data_path}: metadata does not validate: {getattr(exc, 'message', exc)}") from exc
        meta.tofile(writer.data_path.with_suffix(""))
        meta_names.append(writer.data_path.with_suffix(sigmf.SIGMF_METADATA_EXT).name)
        lost = sum(meta.get_global_field(SAMPLES_DROPPED_KEY).values())
        if lost or bad_frames:
            log.warning("recording %s: %d samples lost before the file %s, bad frames %s", rid, lost,
                        dict(meta.get_global_field(SAMPLES_DROPPED_KEY)), dict(bad_frames))
        if writer.written < (writer.target or 0):
            log.warning("recording %s: %d of %d samples (the source ended or the recording was stopped)",
                        rid, writer.written, writer.target)
    if not meta_names:
        raise RecordingError(f"{collection_path}: no receiver delivered any samples; nothing recorded")
    collection = sigmf.SigMFCollection(metafiles=meta_names, base_path=collection_path.parent)
    collection.set_collection_field(sigmf.DESCRIPTION_KEY, f"heimdall network {config.network.name!r}: {len(meta_names)} receivers")
    collection.set_collection_field(sigmf.EXTENSIONS_KEY, [dict(EXTENSION)])
    # sigmf ships no validate() for collections, and its bundled schema-collection.json still describes the
    # deprecated tuple form of core:streams (SigMF PR #239 made them {name, hash} objects, which is what
    # SigMFCollection writes): check the written file by reading it back, stream hashes included.
    collection.tofile(collection_path.with_suffix(""))
    reread = sigmf.fromfile(collection_path)
    if sorted(reread.get_stream_names()) != sorted(Path(n).stem for n in meta_names):
        raise RecordingError(f"{collection_path}: core:streams does not list the recorded streams")
    return collection_path


def add_arguments(parser) -> None:
    """The options of ``heimdall record``."""
    parser.add_argument("-c", "--config", help="TOML config (default: the embedded default)")
    parser.add_argument("--seconds", type=float, required=True, help="seconds of signal per receiver")
    parser.add_argument("out", help="output folder (must not exist)")


def main(args) -> int:
    """``heimdall record -c FILE --seconds S OUT``: ``args`` has ``.config`` (path or None), ``.seconds``, ``.out``."""
    from streamer.config import load

    config = load(getattr(args, "config", None))
    path = record(config, float(args.seconds), Path(args.out))
    print(path)
    return 0


run = main  # the name streamer/cli.py's command table calls
