"""SigMF replay: a recording (one receiver's ``.sigmf-meta`` + ``.sigmf-data``, or one stream of a
``.sigmf-collection`` holding a whole network) played back as IQBlocks.

What is read (SigMF 1.x, through the ``sigmf`` package)
-------------------------------------------------------
- ``global``: ``core:datatype`` (any complex type ``sigmf`` reads: ``cf32_le``, ``ci16_le``, ``cu8``, ...;
  real-valued and multi-channel datasets are refused), ``core:sample_rate`` (Hz, required), ``core:offset``.
- ``captures``: each capture covers the data-file samples from its ``core:sample_start`` up to the next
  capture's. ``core:global_index`` is the index of its first sample in the receiver's original stream,
  so a gap the recorder saw comes back as a ``sample_index`` jump (default: contiguous with the previous
  capture; the first defaults to ``core:offset + core:sample_start``). ``core:frequency`` (Hz, required on
  the first capture, inherited after) is ``center_freq``. ``core:datetime`` (RFC 3339, ``Z``, any number of
  fractional digits: nanoseconds are kept) is the time of the capture's first sample; samples after it are
  timed by counting at ``core:sample_rate``. Without it the time is carried on from the previous capture by
  the index difference; a recording with no datetime at all starts at the wall clock of opening (``host``).
- ``heimdall`` extension (written by ``heimdall record``, see docs/receivers/sigmf.md), all optional:
  ``heimdall:time_source`` (capture, else global; default ``"host"``), ``heimdall:gain_db`` (capture, else
  global), ``heimdall:flags`` (capture: ``receivers.base.Flags`` names; ``OVERFLOW``/``RETUNE``/
  ``DISCONTINUITY`` go on the capture's first block, ``AGC``/``CLIPPED`` on all its blocks),
  ``heimdall:receiver_id`` (global: which receiver a collection stream belongs to).

Samples
-------
Complex64 at full scale 1.0, scaled by ``sigmf`` (``autoscale``): ``ci16`` as ``x / 32768``, ``cu8`` as
``(x - 128) / 128`` (note: the rtl_tcp adapter uses ``(x - 127.5) / 127.5``; the half-LSB difference is a DC
offset the channelizer removes). Blocks never straddle two captures.

Pacing: ``realtime = true`` delivers each block when the wall clock has advanced, since the first block,
as far as the recorded time of the block's last sample (gaps are waited out); ``false`` delivers as fast as
the daemon takes the blocks (``streamer.daemon.pacing`` keeps such receivers in step with each other and with the
pipeline, see docs/receivers/sigmf.md). ``t0_ns`` are the recorded
times either way, so several receivers replayed from one collection stay aligned. ``loop = true`` starts
over at the end, continuing ``sample_index`` and time from where the pass ended, with
``Flags.DISCONTINUITY`` on the first block of each new pass.

Examples
--------
>>> import numpy as np, sigmf, tempfile, pathlib
>>> from streamer.config import from_dict
>>> from receivers.base import ReceiverContext, TallyDropCounter
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> rec = sigmf.fromarray(np.ones(1000, np.complex64))
>>> rec.sample_rate = 10_000.0
>>> rec.add_capture(0, {sigmf.FREQUENCY_KEY: 145.45e6, sigmf.DATETIME_KEY: "2024-05-01T12:00:00.000000001Z"})
>>> rec.tofile(d / "a")
>>> cfg = from_dict({"receivers": [{"id": "a", "kind": "sigmf", "lat": 45.0, "lon": 7.0,
...                                 "path": str(d / "a"), "realtime": False, "block_s": 0.05}]})
>>> with SigmfReceiver.from_config(cfg.receivers[0], ReceiverContext(cfg, TallyDropCounter())) as rx:
...     blocks = list(rx)
>>> [(b.sample_index, len(b.samples)) for b in blocks], blocks[0].t0_ns, blocks[1].t0_ns - blocks[0].t0_ns
([(0, 500), (500, 500)], 1714564800000000001, 50000000)
"""

from __future__ import annotations

import calendar
import json
import logging
import re
import threading
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import jsonschema
import numpy as np
import sigmf
from sigmf.error import SigMFError

from receivers.base import TIME_SOURCES, Flags, IQBlock, ReceiverBase, ReceiverContext
from streamer.core.docs import doc as _doc
from streamer.core.errors import ReceiverFatalError

log = logging.getLogger(__name__)

#: The extension namespace ``heimdall record`` writes (declared in ``core:extensions``).
EXTENSION = {"name": "heimdall", "version": "1.0.0", "optional": True}
TIME_SOURCE_KEY = "heimdall:time_source"
GAIN_DB_KEY = "heimdall:gain_db"
FLAGS_KEY = "heimdall:flags"
RECEIVER_ID_KEY = "heimdall:receiver_id"
CALIBRATION_DB_KEY = "heimdall:calibration_db"
SAMPLES_DROPPED_KEY = "heimdall:samples_dropped"

#: Flags that mark an event at a capture's first sample; the others are states of the whole capture.
BOUNDARY_FLAGS = Flags.OVERFLOW | Flags.RETUNE | Flags.DISCONTINUITY

_DATETIME_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?(?:([zZ])|([+-])(\d{2}):?(\d{2}))?$"
)


def format_datetime_ns(t_ns: int) -> str:
    """Unix ns -> SigMF ``core:datetime`` (RFC 3339 UTC, nanosecond fraction).

    >>> format_datetime_ns(1_714_564_800_123_456_789)
    '2024-05-01T12:00:00.123456789Z'
    """
    seconds, ns = divmod(int(t_ns), 10**9)
    d = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:{d.second:02d}.{ns:09d}Z"


def parse_datetime_ns(text: str) -> int:
    """SigMF ``core:datetime`` -> Unix ns, keeping up to nanosecond precision (more digits are truncated).

    >>> parse_datetime_ns("2024-05-01T12:00:00.123456789Z")
    1714564800123456789
    >>> parse_datetime_ns("1970-01-01T00:00:01.5Z")
    1500000000
    """
    m = _DATETIME_RE.match(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"not an RFC 3339 date-time: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if m.group(9):  # a numeric offset (SigMF allows only Z; tolerated)
        offset_s = (int(m.group(10)) * 60 + int(m.group(11))) * 60
        seconds -= offset_s if m.group(9) == "+" else -offset_s
    fraction = (m.group(7) or "")[:9].ljust(9, "0")
    return seconds * 10**9 + int(fraction)


def flags_from_names(names) -> Flags:
    """``["OVERFLOW", "AGC"]`` -> ``Flags``; unknown names raise ValueError."""
    out = Flags.NONE
    for name in names or ():
        try:
            out |= Flags[str(name)]
        except KeyError:
            raise ValueError(f"unknown flag {name!r}; known: {', '.join(f.name for f in Flags if f.name != 'NONE')}") from None
    return out


def flag_names(flags: Flags) -> list[str]:
    """``Flags`` -> sorted list of names (for ``heimdall:flags``)."""
    return sorted(f.name for f in Flags if f.value and flags & f)


@dataclass(frozen=True)
class Segment:
    """One capture as replayed: data-file samples ``[file_start, file_start + count)``."""

    file_start: int
    count: int
    index: int  # sample_index of the first sample
    t0_ns: int
    time_source: str
    center_freq: float
    gain_db: float | None
    first_flags: Flags  # on the first block only

    def time_ns(self, offset: int, sample_rate_hz: float) -> int:
        """Unix ns of the segment's sample ``offset`` (0 = its first) at ``sample_rate_hz``."""
        return self.t0_ns + int(round(offset * 1e9 / sample_rate_hz))
    flags: Flags  # on every block


class SigmfReceiver(ReceiverBase):
    """Adapter ``kind = "sigmf"``: replay one receiver's stream from a SigMF recording."""

    @dataclass(frozen=True)
    class Options:
        path: str = field(
            metadata=_doc(
                "SigMF recording: base path or .sigmf-meta/.sigmf-data of one receiver, or a .sigmf-collection "
                "(relative paths: from the config file's folder)"
            ),
        )
        stream: str | None = field(
            default=None,
            metadata=_doc("collection only: stream name (or core:description); default: the stream matching the receiver id"),
        )
        realtime: bool = field(default=True, metadata=_doc("pace blocks to the wall clock; false = as fast as consumed"))
        loop: bool = field(default=False, metadata=_doc("start over at the end instead of ending the source"))
        block_s: float = field(default=0.05, metadata=_doc("samples per IQBlock (s)"))
        verify_checksum: bool = field(default=True, metadata=_doc("check core:sha512 of the data file on open"))

        def __post_init__(self) -> None:
            if not self.path:
                raise ValueError("path must name a .sigmf-meta, .sigmf-data or .sigmf-collection")
            if not self.block_s > 0:
                raise ValueError(f"block_s must be > 0, got {self.block_s}")

    def __init__(
        self,
        receiver_id: str,
        path: str | Path,
        options: "SigmfReceiver.Options | None" = None,
        *,
        drops=None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.options = options if options is not None else self.Options(path=str(path))
        self.receiver_id = receiver_id
        self.realtime = self.options.realtime
        self._drops = drops
        self._clock_ns = clock_ns
        self._wake = threading.Event()  # set by close(): interrupts a pacing wait
        self._closed = False
        self.path = Path(path)
        self.recording, self.meta_path = open_stream(self.path, receiver_id, self.options)
        self.sample_rate_hz = float(self.recording.get_global_field(sigmf.SAMPLE_RATE_KEY))
        self.segments = plan_segments(self.recording, self.meta_path, self.sample_rate_hz, clock_ns)
        self.block_len = max(1, int(round(self.options.block_s * self.sample_rate_hz)))

    @classmethod
    def from_config(cls, rx, ctx: ReceiverContext) -> "SigmfReceiver":
        """Build from a ``ReceiverConfig`` whose ``options`` is ``SigmfReceiver.Options``."""
        path = Path(rx.options.path).expanduser()
        source = Path(ctx.config.source)
        if not path.is_absolute() and source.is_file():
            path = source.parent / path
        return cls(rx.id, path, rx.options, drops=ctx.drops)

    def _read(self, first: int, count: int) -> np.ndarray:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # sigmf warns on a trailing partial sample; whole samples are read
                x = self.recording.read_samples(first, count)
        except (SigMFError, OSError, ValueError) as exc:
            raise ReceiverFatalError(f"{self.meta_path}: cannot read samples {first}..{first + count}: {exc}") from exc
        return np.ascontiguousarray(x, dtype=np.complex64).reshape(-1)

    def _pace(self, wall_start_ns: int, data_start_ns: int, block_end_ns: int) -> None:
        wait_s = (wall_start_ns + (block_end_ns - data_start_ns) - self._clock_ns()) / 1e9
        if wait_s > 0:
            self._wake.wait(wait_s)

    def __iter__(self) -> Iterator[IQBlock]:
        if not self.segments:
            return
        fs = self.sample_rate_hz
        index_shift = time_shift = 0
        first_pass = True
        wall_start = data_start = None
        while not self._closed:
            previous: Segment | None = None
            for seg in self.segments:
                flags = seg.first_flags
                if previous is not None and seg.center_freq != previous.center_freq:
                    flags |= Flags.RETUNE
                if not first_pass and previous is None:
                    flags |= Flags.DISCONTINUITY
                if previous is not None and flags & Flags.OVERFLOW and self._drops is not None:
                    lost = seg.index - (previous.index + previous.count)
                    if lost > 0:  # the source counted this loss when it was live: count it again on replay
                        self._drops.samples_dropped(self.receiver_id, "overflow", lost)
                for offset in range(0, seg.count, self.block_len):
                    if self._closed:
                        return
                    count = min(self.block_len, seg.count - offset)
                    t0 = seg.time_ns(offset, fs) + time_shift
                    if self.realtime:
                        if wall_start is None:
                            wall_start, data_start = self._clock_ns(), t0
                        self._pace(wall_start, data_start, t0 + int(round(count * 1e9 / fs)))
                        if self._closed:
                            return
                    yield IQBlock(
                        receiver_id=self.receiver_id,
                        samples=self._read(seg.file_start + offset, count),
                        sample_index=seg.index + offset + index_shift,
                        t0_ns=t0,
                        time_source=seg.time_source,
                        sample_rate=fs,
                        center_freq=seg.center_freq,
                        gain_db=seg.gain_db,
                        flags=(flags if offset == 0 else Flags.NONE) | seg.flags,
                    )
                previous = seg
            if not self.options.loop:
                return
            first, last = self.segments[0], self.segments[-1]
            index_shift += last.index + last.count - first.index
            time_shift += last.t0_ns + int(round(last.count * 1e9 / fs)) - first.t0_ns
            first_pass = False

    def close(self) -> None:
        self._closed = True
        self._wake.set()


# Opening -------------------------------------------------------------------------------------------
_FOREIGN_ERRORS = (SigMFError, OSError, ValueError, KeyError, TypeError, jsonschema.ValidationError)


def _fatal(path: Path, what: str) -> ReceiverFatalError:
    return ReceiverFatalError(f"{path}: {what}")


def _load(path: Path, options) -> object:
    """``sigmf.fromfile`` with its errors and warnings mapped: a SigMFFile or a SigMFCollection."""
    fns = sigmf.sigmffile.get_sigmf_filenames(path)
    if not any(Path(fns[k]).is_file() for k in ("meta_fn", "collection_fn", "archive_fn")):
        raise _fatal(path, "no such SigMF recording (looked for .sigmf-meta, .sigmf-collection, .sigmf)")
    # Parse the JSON first: sigmf.fromfile leaves its file open when json.load fails.
    use_collection = path.suffix == sigmf.SIGMF_COLLECTION_EXT or not Path(fns["meta_fn"]).is_file()
    json_path = Path(fns["collection_fn"] if use_collection else fns["meta_fn"])
    if json_path.is_file():
        try:
            json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise _fatal(json_path, f"metadata is not valid JSON: {exc}") from exc
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rec = sigmf.fromfile(path, skip_checksum=not options.verify_checksum)
    except _FOREIGN_ERRORS as exc:
        if "hash" in str(exc).lower():
            raise _fatal(path, f"data file does not match core:sha512 (corrupt or replaced?): {exc}; "
                               "set verify_checksum = false to replay it anyway") from exc
        raise _fatal(path, f"cannot open as SigMF: {exc}") from exc
    for w in caught:
        log.warning("%s: %s", path, w.message)
    return rec


def open_stream(path: Path, receiver_id: str, options) -> tuple[object, Path]:
    """Open the SigMFFile this receiver replays (picking its stream out of a collection); check it can be replayed."""
    rec = _load(path, options)
    meta_path = Path(sigmf.sigmffile.get_sigmf_filenames(path)["meta_fn"])
    if isinstance(rec, sigmf.SigMFCollection):
        name = _pick_stream(rec, path, receiver_id, options.stream)
        meta_path = Path(rec.base_path) / f"{name}{sigmf.SIGMF_METADATA_EXT}"
        rec = _load(meta_path, options)
    _check_recording(rec, meta_path)
    return rec, meta_path


def _pick_stream(collection, path: Path, receiver_id: str, wanted: str | None) -> str:
    names = [str(n) for n in collection.get_stream_names()]
    if not names:
        raise _fatal(path, "collection has no core:streams")

    def labels(name: str) -> set[str]:
        found = {name, Path(name).name}
        meta = Path(collection.base_path) / f"{name}{sigmf.SIGMF_METADATA_EXT}"
        try:
            glob = json.loads(meta.read_text(encoding="utf-8")).get("global", {})
        except (OSError, ValueError, AttributeError):
            return found
        found |= {str(glob[k]) for k in (sigmf.DESCRIPTION_KEY, RECEIVER_ID_KEY) if k in glob}
        return found

    target = wanted if wanted is not None else receiver_id
    matches = [n for n in names if target in labels(n)]
    if len(matches) != 1:
        what = f"stream {wanted!r}" if wanted is not None else f"a stream for receiver {receiver_id!r} (by name, core:description or {RECEIVER_ID_KEY})"
        problem = "no" if not matches else f"{len(matches)} streams match;"
        raise _fatal(path, f"{problem} {what}; streams: {', '.join(names)}; set the receiver's `stream` option")
    return matches[0]


def _check_recording(rec, meta_path: Path) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # undeclared extensions: not our business here
            rec.validate()
    except _FOREIGN_ERRORS as exc:
        where = ".".join(str(k) for k in getattr(exc, "absolute_path", ()))
        message = f"{where}: {exc.message}" if where and hasattr(exc, "message") else getattr(exc, "message", str(exc))
        raise _fatal(meta_path, f"metadata does not follow the SigMF schema: {message}") from exc
    datatype = rec.get_global_field(sigmf.DATATYPE_KEY)
    try:
        info = sigmf.sigmffile.dtype_info(datatype)
    except SigMFError as exc:
        raise _fatal(meta_path, f"unsupported core:datatype {datatype!r}: {exc}") from exc
    if not info["is_complex"]:
        raise _fatal(meta_path, f"core:datatype {datatype!r} is real-valued; IQ replay needs a complex type (cf32_le, ci16_le, cu8, ...)")
    channels = rec.get_global_field(sigmf.NUM_CHANNELS_KEY, 1)
    if channels != 1:
        raise _fatal(meta_path, f"core:num_channels is {channels}; only single-channel recordings can be replayed")
    rate = rec.get_global_field(sigmf.SAMPLE_RATE_KEY)
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not rate > 0:
        raise _fatal(meta_path, f"core:sample_rate must be a positive number (Hz), got {rate!r}")
    if rec.data_file is None:
        raise _fatal(meta_path, f"data file {meta_path.with_suffix(sigmf.SIGMF_DATASET_EXT).name} is missing")
    if any(c.get(sigmf.HEADER_BYTES_KEY, 0) for c in rec.get_captures()) or rec.get_global_field(sigmf.TRAILING_BYTES_KEY, 0):
        raise _fatal(meta_path, "non-conforming datasets (core:header_bytes / core:trailing_bytes) are not supported")


def plan_segments(rec, meta_path: Path, sample_rate_hz: float, clock_ns: Callable[[], int] = time.time_ns) -> list[Segment]:
    """The captures as replay segments: index, time, frequency, time source, gain and flags of each."""
    glob = rec.get_global_info()
    captures = rec.get_captures()
    total = int(rec.sample_count)
    if not captures:
        raise _fatal(meta_path, "no captures: core:frequency and the sample index are unknown")
    segments: list[Segment] = []
    prev: Segment | None = None
    for i, cap in enumerate(captures):
        where = f"captures[{i}]"
        start = int(cap[sigmf.SAMPLE_START_KEY])
        end = int(captures[i + 1][sigmf.SAMPLE_START_KEY]) if i + 1 < len(captures) else total
        if start > total:
            raise _fatal(meta_path, f"{where} starts at sample {start} but the data file holds only {total} samples")
        count = min(end, total) - start
        if prev is None:
            index = int(cap.get(sigmf.GLOBAL_INDEX_KEY, int(glob.get(sigmf.OFFSET_KEY, 0)) + start))
        else:
            index = int(cap.get(sigmf.GLOBAL_INDEX_KEY, prev.index + prev.count))
            if index < prev.index + prev.count:
                raise _fatal(meta_path, f"{where}: core:global_index {index} goes back into the previous capture (ends at {prev.index + prev.count})")
        freq = cap.get(sigmf.FREQUENCY_KEY, None if prev is None else prev.center_freq)
        if freq is None:
            raise _fatal(meta_path, f"{where}: core:frequency is missing (the centre frequency, Hz, is needed to channelize)")
        time_source = cap.get(TIME_SOURCE_KEY, glob.get(TIME_SOURCE_KEY, "host"))
        if time_source not in TIME_SOURCES:
            raise _fatal(meta_path, f"{where}: {TIME_SOURCE_KEY} must be one of {', '.join(TIME_SOURCES)}, got {time_source!r}")
        if sigmf.DATETIME_KEY in cap:
            try:
                t0 = parse_datetime_ns(cap[sigmf.DATETIME_KEY])
            except ValueError as exc:
                raise _fatal(meta_path, f"{where}: core:datetime: {exc}") from None
        elif prev is not None:
            t0 = prev.t0_ns + int(round((index - prev.index) * 1e9 / sample_rate_hz))
            time_source = prev.time_source
        else:
            t0, time_source = int(clock_ns()), "host"
        try:
            flags = flags_from_names(cap.get(FLAGS_KEY))
        except ValueError as exc:
            raise _fatal(meta_path, f"{where}: {FLAGS_KEY}: {exc}") from None
        gain = cap.get(GAIN_DB_KEY, glob.get(GAIN_DB_KEY))
        seg = Segment(start, count, index, t0, time_source, float(freq), None if gain is None else float(gain),
                      flags & BOUNDARY_FLAGS, flags & ~BOUNDARY_FLAGS)
        prev = seg
        if count > 0:
            segments.append(seg)
    return segments
