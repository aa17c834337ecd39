"""Framed IQ v1 (receivers.framing): byte layout, round trips, every error reason, and a decode fuzz."""

from __future__ import annotations

import math
import struct

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receivers.base import MAX_SAMPLE_RATE_HZ, MIN_SAMPLE_RATE_HZ, Flags, IQBlock
from receivers.framing import ITEM_SIZES, REASONS, FrameError, decode, encode


def make_block(samples=None, **overrides) -> IQBlock:
    fields = dict(
        receiver_id="rx1",
        samples=np.array([0.5 + 0.25j, -0.75 - 1j, 0.0 + 0.999j], dtype=np.complex64) if samples is None else samples,
        sample_index=123_456_789_012,
        t0_ns=1_700_000_000_123_456_789,
        time_source="gps",
        sample_rate=2.4e6,
        center_freq=145.5e6,
        gain_db=28.5,
        flags=Flags.OVERFLOW | Flags.AGC,
    )
    fields.update(overrides)
    return IQBlock(**fields)


def header_of(block: IQBlock, **changes) -> bytes:
    header = msgpack.unpackb(encode(block)[1])
    header.update(changes)
    return msgpack.packb({k: v for k, v in header.items() if v is not _DELETE})


_DELETE = object()


def frames_with(block: IQBlock | None = None, payload: bytes | None = None, topic: bytes = b"rx1", **changes):
    block = block or make_block()
    frames = encode(block)
    return [topic, header_of(block, **changes), frames[2] if payload is None else payload]


def reason_of(frames, expected=None) -> str:
    with pytest.raises(FrameError) as info:
        decode(frames, expected_receiver_id=expected)
    assert info.value.reason in REASONS
    return info.value.reason


# --- byte layout -----------------------------------------------------------------------------------


def test_encode_writes_topic_header_map_and_little_endian_cf32_payload():
    block = make_block(np.array([1.0 - 0.5j], np.complex64), gain_db=None, flags=Flags.RETUNE)
    topic, header, payload = encode(block)
    assert topic == b"rx1"
    assert msgpack.unpackb(header) == {
        "v": 1,
        "receiver_id": "rx1",
        "sample_index": 123_456_789_012,
        "t0_ns": 1_700_000_000_123_456_789,
        "time_source": "gps",
        "sample_rate": 2.4e6,
        "center_freq": 145.5e6,
        "dtype": "cf32",
        "gain_db": None,
        "flags": 2,
    }
    assert payload == struct.pack("<ff", 1.0, -0.5)


def test_ci16_and_cu8_payloads_are_interleaved_i_then_q():
    block = make_block(np.array([0.5 - 0.25j, -1.0 + 0.0j], np.complex64))
    assert encode(block, "ci16")[2] == struct.pack("<4h", 16384, -8192, -32768, 0)
    # cu8: round(x * 127.5 + 127.5): 0.5 -> 191.25 -> 191, -0.25 -> 95.625 -> 96, -1 -> 0, 0 -> 127.5 -> 128 (half to even)
    assert encode(block, "cu8")[2] == bytes([191, 96, 0, 128])


def test_integer_dtypes_clip_beyond_full_scale():
    block = make_block(np.array([1.5 - 2.0j], np.complex64))
    assert encode(block, "ci16")[2] == struct.pack("<2h", 32767, -32768)
    assert encode(block, "cu8")[2] == bytes([255, 0])


def test_encode_refuses_an_unknown_dtype():
    with pytest.raises(ValueError, match="unknown dtype 'cs8'"):
        encode(make_block(), "cs8")


# --- round trips -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, tolerance", [("cf32", 0.0), ("ci16", 0.5 / 32768), ("cu8", 0.5 / 127.5)])
def test_round_trip_keeps_every_field_and_samples_within_quantisation(dtype, tolerance):
    block = make_block()
    back = decode(encode(block, dtype), expected_receiver_id="rx1")
    assert back.samples.dtype == np.complex64
    assert back.samples.shape == block.samples.shape
    assert np.max(np.abs(back.samples.real - block.samples.real)) <= tolerance + 1e-7
    assert np.max(np.abs(back.samples.imag - block.samples.imag)) <= tolerance + 1e-7
    for name in ("receiver_id", "sample_index", "t0_ns", "time_source", "sample_rate", "center_freq", "gain_db"):
        assert getattr(back, name) == getattr(block, name), name
    assert back.flags == Flags.OVERFLOW | Flags.AGC
    assert isinstance(back.flags, Flags)


def test_full_scale_codes_decode_to_unit_amplitude():
    cu8 = frames_with(payload=bytes([255, 0, 127, 128]), dtype="cu8")
    assert decode(cu8).samples.tolist() == [pytest.approx(1 - 1j), pytest.approx(complex(-0.5 / 127.5, 0.5 / 127.5))]
    ci16 = frames_with(payload=struct.pack("<2h", -32768, 16384), dtype="ci16")
    assert decode(ci16).samples.tolist() == [-1 + 0.5j]


def test_decoded_samples_are_writable_copies():
    samples = decode(encode(make_block())).samples
    samples[0] = 0
    assert samples[0] == 0


def test_unknown_extra_header_keys_are_ignored():
    assert decode(frames_with(extra="from a newer v1 writer")).sample_index == 123_456_789_012


@settings(max_examples=200, deadline=None)
@given(
    samples=st.lists(st.complex_numbers(max_magnitude=1.0, allow_nan=False, allow_infinity=False, width=64), min_size=1, max_size=64),
    sample_index=st.integers(0, 2**63),
    t0_ns=st.integers(-(2**63), 2**63 - 1),
    rate=st.floats(MIN_SAMPLE_RATE_HZ, MAX_SAMPLE_RATE_HZ),
    gain=st.none() | st.floats(-50, 100),
    flags=st.integers(0, 15),
    source=st.sampled_from(["gps", "device", "host"]),
    rid=st.text(min_size=1, max_size=20),
)
def test_cf32_round_trip_is_exact_for_any_valid_block(samples, sample_index, t0_ns, rate, gain, flags, source, rid):
    block = make_block(
        np.array(samples, np.complex64), sample_index=sample_index, t0_ns=t0_ns, sample_rate=rate, gain_db=gain,
        flags=Flags(flags), time_source=source, receiver_id=rid,
    )  # fmt: skip
    back = decode(encode(block), expected_receiver_id=rid)
    np.testing.assert_array_equal(back.samples, block.samples)
    assert (back.sample_index, back.t0_ns, back.sample_rate, back.gain_db, back.flags, back.time_source) == (
        sample_index, t0_ns, rate, gain, flags, source,
    )  # fmt: skip


# --- every error reason ------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 2, 4])
def test_wrong_frame_count_is_short_frame(count):
    frames = (encode(make_block()) * 2)[:count]
    assert reason_of(frames) == "short_frame"


@pytest.mark.parametrize(
    "header",
    [
        b"\xc1",  # never used in msgpack
        b"\x93\x01\x02",  # truncated array
        msgpack.packb([1, 2, 3]),  # not a map
        msgpack.packb({1: 2}),  # non-string key
        b"\x81\xa1v\x01\x00",  # trailing bytes
        b"\x80" + b"\x00" * 5000,  # too long
    ],
    ids=["invalid-byte", "truncated", "array", "int-key", "extra-data", "oversized"],
)
def test_unparsable_or_non_map_header_is_bad_header(header):
    frames = frames_with()
    assert reason_of([frames[0], header, frames[2]]) == "bad_header"


@pytest.mark.parametrize(
    "changes",
    [
        {"v": _DELETE},
        {"receiver_id": _DELETE},
        {"sample_index": _DELETE},
        {"t0_ns": 1.5},
        {"sample_index": "12"},
        {"sample_index": True},
        {"sample_index": -1},
        {"flags": -4},
        {"flags": 1.0},
        {"time_source": "ntp"},
        {"time_source": 3},
        {"center_freq": float("nan")},
        {"gain_db": "high"},
        {"gain_db": float("inf")},
        {"dtype": None},
        {"v": "1"},
        {"receiver_id": 7},
    ],
    ids=lambda c: "-".join(f"{k}={'deleted' if v is _DELETE else v!r}" for k, v in c.items()),
)
def test_missing_or_wrong_typed_keys_are_bad_header(changes):
    assert reason_of(frames_with(**changes)) == "bad_header"


def test_topic_that_disagrees_with_the_header_is_bad_header():
    assert reason_of(frames_with(topic=b"rx2")) == "bad_header"
    assert reason_of(frames_with(topic=b"\xff\xfe")) == "bad_header"


@pytest.mark.parametrize("version", [0, 2, 99])
def test_other_versions_are_unknown_version(version):
    assert reason_of(frames_with(v=version)) == "unknown_version"


@pytest.mark.parametrize("dtype", ["cs8", "cf64", "CF32", ""])
def test_unknown_dtype(dtype):
    assert reason_of(frames_with(dtype=dtype)) == "unknown_dtype"


@pytest.mark.parametrize(
    "dtype, payload_bytes", [("cf32", 7), ("cf32", 12), ("cf32", 0), ("ci16", 6), ("ci16", 0), ("cu8", 3), ("cu8", 0)]
)
def test_payload_not_a_positive_multiple_of_the_item_size_is_bad_length(dtype, payload_bytes):
    assert ITEM_SIZES[dtype] in (8, 4, 2)
    assert reason_of(frames_with(payload=b"\x01" * payload_bytes, dtype=dtype)) == "bad_length"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_infinite_cf32_samples_are_non_finite(bad):
    payload = struct.pack("<4f", 0.1, 0.2, 0.3, bad)
    assert reason_of(frames_with(payload=payload)) == "non_finite"


def test_a_different_receiver_is_unknown_receiver():
    block = make_block(receiver_id="rx2")
    assert reason_of(encode(block), expected="rx1") == "unknown_receiver"
    # header names another receiver under our topic
    frames = frames_with(receiver_id="rx9")
    assert reason_of(frames, expected="rx1") == "unknown_receiver"
    # without an expectation any consistent id is accepted
    assert decode(encode(block)).receiver_id == "rx2"


@pytest.mark.parametrize("rate", [0, 0.0, -2.4e6, float("inf"), float("nan"), 5e-324, 999.0, 1.01e8, 10**12])
def test_a_rate_outside_what_the_daemon_serves_is_bad_rate(rate):
    # 5e-324 once decoded, and two such blocks overflowed the time arithmetic that joins blocks.
    assert reason_of(frames_with(sample_rate=rate)) == "bad_rate"


def test_frame_error_carries_reason_and_detail():
    with pytest.raises(FrameError) as info:
        decode(frames_with(dtype="cs8"))
    assert info.value.reason == "unknown_dtype"
    assert "cs8" in info.value.detail
    assert str(info.value).startswith("unknown_dtype: ")


# --- fuzz: nothing but FrameError ever escapes decode --------------------------------------------------

_VALID = msgpack.unpackb(encode(make_block())[1])
_ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from(["cf32", "ci16", "cu8", "gps", "host", "rx1"]),
)


def _packable(value) -> bool:
    try:
        msgpack.packb(value)
    except (OverflowError, TypeError, ValueError):
        return False
    return True


@st.composite
def mutated_messages(draw):
    header = dict(_VALID)
    for key in draw(st.lists(st.sampled_from(sorted(_VALID) + ["zz"]), max_size=4)):
        if draw(st.booleans()):
            header.pop(key, None)
        else:
            header[key] = draw(_ANY_VALUE)
    raw_header = msgpack.packb(header) if _packable(header) else draw(st.binary(max_size=64))
    if draw(st.booleans()):
        raw_header = raw_header[: draw(st.integers(0, len(raw_header)))]
    payload = draw(st.binary(max_size=64))
    topic = draw(st.sampled_from([b"rx1", b"rx2", b"", b"\xff"]))
    frames = [topic, raw_header, payload]
    return frames[: draw(st.integers(0, 3))] if draw(st.integers(0, 9)) == 0 else frames


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=mutated_messages(), expected=st.sampled_from([None, "rx1"]))
def test_fuzz_decode_raises_only_frame_error(frames, expected):
    try:
        block = decode(frames, expected_receiver_id=expected)
    except FrameError as exc:
        assert exc.reason in REASONS
        return
    assert block.samples.dtype == np.complex64 and len(block.samples) > 0
    assert np.isfinite(block.samples).all()
    assert math.isfinite(block.sample_rate) and block.sample_rate > 0


@settings(max_examples=500, deadline=None)
@given(frames=st.lists(st.binary(max_size=80), max_size=4))
def test_fuzz_arbitrary_bytes_raise_only_frame_error(frames):
    try:
        decode(frames)
    except FrameError as exc:
        assert exc.reason in REASONS
