"""Framed IQ over ZeroMQ, version 1: what ``heimdall receiver`` publishes.

One ZeroMQ multipart message per IQBlock, three frames (docs/protocol.md, "IQ ingest (version 1)"):

1. topic: the receiver id, UTF-8 (SUB sockets subscribe to it; ZeroMQ matches prefixes, so the
   receiving side compares it exactly).
2. header: a msgpack map with string keys

   ============  ======================  ==================================================
   key           type                    meaning
   ============  ======================  ==================================================
   v             int                     format version, 1
   receiver_id   str                     equals the topic
   sample_index  int >= 0                absolute index of the first sample in the stream
   t0_ns         int                     Unix time of the first sample (ns)
   time_source   str                     "gps", "device" or "host"
   sample_rate   float                   samples per second (Hz), within [1 kHz, 100 MHz]
   center_freq   float                   tuned centre frequency (Hz)
   dtype         str                     payload encoding, below
   gain_db       float or nil            receiver gain (dB), nil when unknown / AGC
   flags         int >= 0                receivers.base.Flags bits
   ============  ======================  ==================================================

   Unknown extra keys are ignored (additions within version 1 stay compatible).
3. payload: the samples, at least one, I before Q:

   - ``cf32``: little-endian complex64 (2 x float32), already full scale 1.0; 8 bytes per sample.
   - ``ci16``: interleaved little-endian int16 I, Q; value / 32768; 4 bytes per sample.
   - ``cu8``:  interleaved uint8 I, Q (rtl-sdr style); (value - 127.5) / 127.5; 2 bytes per sample.

``decode`` never raises anything but ``FrameError``, whose ``reason`` is the metric label.

Examples
--------
>>> import numpy as np
>>> from receivers.base import IQBlock
>>> block = IQBlock("rx1", np.array([0.5 + 0.25j, -1 + 0j], np.complex64), 4096, 1_700_000_000_000_000_000,
...                 "gps", 2.4e6, 145.5e6, gain_db=20.0)
>>> frames = encode(block, dtype="ci16")
>>> len(frames), len(frames[2])
(3, 8)
>>> back = decode(frames, expected_receiver_id="rx1")
>>> back.samples.tolist(), back.sample_index, back.time_source
([(0.5+0.25j), (-1+0j)], 4096, 'gps')
>>> decode([b"rx1", b"\\x80", b""])
Traceback (most recent call last):
...
receivers.framing.FrameError: bad_header: missing key 'v'
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import msgpack
import numpy as np

from receivers.base import MAX_SAMPLE_RATE_HZ, MIN_SAMPLE_RATE_HZ, TIME_SOURCES, Flags, IQBlock, plausible_rate
from streamer.core.errors import HeimdallError

VERSION = 1
#: dtype name -> bytes per complex sample.
ITEM_SIZES: dict[str, int] = {"cf32": 8, "ci16": 4, "cu8": 2}
#: headers longer than this are refused before parsing (a real one is about 200 bytes).
MAX_HEADER_BYTES = 4096
#: every ``FrameError.reason`` ``decode`` can produce.
REASONS = (
    "short_frame",
    "bad_header",
    "unknown_version",
    "unknown_dtype",
    "bad_length",
    "non_finite",
    "unknown_receiver",
    "bad_rate",
)


class FrameError(HeimdallError):
    """A framed-IQ message that cannot be used. ``reason`` is a short metric label, ``detail`` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def encode(block: IQBlock, dtype: str = "cf32") -> list[bytes]:
    """Serialise ``block`` to the three frames ``[topic, header, payload]``.

    Integer dtypes round to the nearest code and clip samples outside full scale.
    """
    if dtype not in ITEM_SIZES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(ITEM_SIZES)}")
    header = {
        "v": VERSION,
        "receiver_id": block.receiver_id,
        "sample_index": int(block.sample_index),
        "t0_ns": int(block.t0_ns),
        "time_source": str(block.time_source),
        "sample_rate": float(block.sample_rate),
        "center_freq": float(block.center_freq),
        "dtype": dtype,
        "gain_db": None if block.gain_db is None else float(block.gain_db),
        "flags": int(block.flags),
    }
    topic = block.receiver_id.encode("utf-8")
    return [topic, msgpack.packb(header, use_bin_type=True), _encode_payload(block.samples, dtype)]


def _encode_payload(samples: np.ndarray, dtype: str) -> bytes:
    samples = np.asarray(samples, dtype=np.complex64)
    if dtype == "cf32":
        return samples.astype("<c8").tobytes()
    pairs = np.empty((len(samples), 2), dtype=np.float64)
    pairs[:, 0], pairs[:, 1] = samples.real, samples.imag
    if dtype == "ci16":
        return np.clip(np.rint(pairs * 32768.0), -32768, 32767).astype("<i2").tobytes()
    return np.clip(np.rint(pairs * 127.5 + 127.5), 0, 255).astype(np.uint8).tobytes()


def decode(frames: Sequence[bytes], expected_receiver_id: str | None = None) -> IQBlock:
    """Parse one multipart message into an IQBlock (samples complex64, full scale 1.0).

    Raises ``FrameError`` (and nothing else) when the message is unusable; see ``REASONS``.
    """
    if len(frames) != 3:
        raise FrameError("short_frame", f"expected 3 frames (topic, header, payload), got {len(frames)}")
    topic_raw, header_raw, payload = (bytes(f) for f in frames)
    topic = _text(topic_raw, "topic")
    if expected_receiver_id is not None and topic != expected_receiver_id:
        raise FrameError("unknown_receiver", f"topic {topic!r}, expected {expected_receiver_id!r}")
    header = _parse_header(header_raw)
    if expected_receiver_id is not None and header["receiver_id"] != expected_receiver_id:
        raise FrameError("unknown_receiver", f"header receiver_id {header['receiver_id']!r}, expected {expected_receiver_id!r}")
    if header["receiver_id"] != topic:
        raise FrameError("bad_header", f"header receiver_id {header['receiver_id']!r} differs from topic {topic!r}")
    samples = _decode_payload(payload, header["dtype"])
    return IQBlock(
        receiver_id=header["receiver_id"],
        samples=samples,
        sample_index=header["sample_index"],
        t0_ns=header["t0_ns"],
        time_source=header["time_source"],
        sample_rate=float(header["sample_rate"]),
        center_freq=float(header["center_freq"]),
        gain_db=None if header["gain_db"] is None else float(header["gain_db"]),
        flags=Flags(header["flags"]),
    )


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError("bad_header", f"{what} is not UTF-8") from None


def _parse_header(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_HEADER_BYTES:
        raise FrameError("bad_header", f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise FrameError("bad_header", f"not msgpack: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise FrameError("bad_header", f"header is a msgpack {type(header).__name__}, expected a map")
    version = _field(header, "v", int)
    if version != VERSION:
        raise FrameError("unknown_version", f"v = {version}, this decoder reads v = {VERSION}")
    for key, kind in _HEADER_TYPES.items():
        _field(header, key, kind)
    _check_values(header)
    return header


_INT = (int,)
_NUMBER = (int, float)
_HEADER_TYPES: dict[str, tuple] = {
    "receiver_id": (str,),
    "sample_index": _INT,
    "t0_ns": _INT,
    "time_source": (str,),
    "sample_rate": _NUMBER,
    "center_freq": _NUMBER,
    "dtype": (str,),
    "gain_db": _NUMBER + (type(None),),
    "flags": _INT,
}


def _field(header: dict, key: str, kinds: type | tuple) -> Any:
    if key not in header:
        raise FrameError("bad_header", f"missing key {key!r}")
    value = header[key]
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise FrameError("bad_header", f"{key} has type {type(value).__name__}")
    return value


def _check_values(header: dict) -> None:
    if header["sample_index"] < 0:
        raise FrameError("bad_header", f"sample_index {header['sample_index']} is negative")
    if header["flags"] < 0:
        raise FrameError("bad_header", f"flags {header['flags']} is negative")
    if header["time_source"] not in TIME_SOURCES:
        raise FrameError("bad_header", f"time_source {header['time_source']!r}; expected one of {', '.join(TIME_SOURCES)}")
    for key in ("center_freq", "gain_db"):
        if header[key] is not None and not math.isfinite(header[key]):
            raise FrameError("bad_header", f"{key} is not finite")
    rate = header["sample_rate"]
    if not plausible_rate(rate):  # also NaN; beyond it time arithmetic overflows
        raise FrameError("bad_rate", f"sample_rate {rate!r} is outside [{MIN_SAMPLE_RATE_HZ:g}, {MAX_SAMPLE_RATE_HZ:g}] Hz")
    if header["dtype"] not in ITEM_SIZES:
        raise FrameError("unknown_dtype", f"dtype {header['dtype']!r}; known: {', '.join(ITEM_SIZES)}")


def _decode_payload(payload: bytes, dtype: str) -> np.ndarray:
    size = ITEM_SIZES[dtype]
    if len(payload) == 0 or len(payload) % size:
        raise FrameError("bad_length", f"{len(payload)} payload bytes is not a positive multiple of {size} ({dtype})")
    if dtype == "cf32":
        samples = np.frombuffer(payload, dtype="<c8").astype(np.complex64)
        if not np.isfinite(samples).all():
            raise FrameError("non_finite", "payload holds NaN or infinite samples")
        return samples
    if dtype == "ci16":
        pairs = np.frombuffer(payload, dtype="<i2").astype(np.float32) / np.float32(32768.0)
    else:
        pairs = (np.frombuffer(payload, dtype=np.uint8).astype(np.float32) - np.float32(127.5)) / np.float32(127.5)
    return pairs.view(np.complex64)
