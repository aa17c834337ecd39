"""The one type every adapter produces (IQBlock) and the small protocols around it.

An adapter is an iterable of IQBlock. It starts no threads (streamer.daemon.runner decides thread or
process) and never raises for an expected per-frame failure: it counts it through the injected
``DropCounter`` and goes on. Foreign errors (SoapySDR, libiio, sockets) are translated at the adapter
edge into ``ReceiverTransientError`` / ``ReceiverFatalError``.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    from streamer.config import Config, ReceiverConfig

TimeSource = Literal["gps", "device", "host"]
TIME_SOURCES: tuple[str, ...] = ("gps", "device", "host")
#: Sample rates (Hz) a block may declare at a network edge: the fastest SDR front ends (61.44 MS/s for
#: AD936x) sit below the top, and below the bottom no IQ source exists (KiwiSDR, the slowest, gives 12 kS/s).
#: Within it, time arithmetic on a block stays finite; the channelizer narrows it to what it can serve.
MIN_SAMPLE_RATE_HZ = 1_000.0
MAX_SAMPLE_RATE_HZ = 100e6


def plausible_rate(rate_hz: float) -> bool:
    """Within [MIN_SAMPLE_RATE_HZ, MAX_SAMPLE_RATE_HZ] (False for NaN): a rate a block may declare."""
    return MIN_SAMPLE_RATE_HZ <= rate_hz <= MAX_SAMPLE_RATE_HZ
#: Largest value libzmq takes for an int socket option (high-water marks, kernel buffer sizes).
ZMQ_INT_MAX = 2**31 - 1
#: Longest wait of one receive poll (s): close() is noticed within it, so it bounds a receiver's stop.
MAX_RECV_TIMEOUT_S = 10.0


class Flags(enum.IntFlag):
    """Per-block conditions reported by the source."""

    NONE = 0
    #: The source lost samples just before this block and has counted them (``DropCounter``); the
    #: pipeline restarts its filters here. ``sample_index`` jumps by the loss where the size is known.
    OVERFLOW = 1
    RETUNE = 2  # centre frequency or rate changed at this block
    AGC = 4  # gain is under automatic control: absolute power is not trustworthy
    DISCONTINUITY = 8  # the stream restarted (reconnect); do not carry filter state across
    CLIPPED = 16  # the ADC overloaded in this block: power readings are a lower bound


@dataclass(frozen=True)
class IQBlock:
    """A contiguous run of complex baseband samples from one receiver.

    Attributes
    ----------
    receiver_id : config id of the receiver.
    samples : complex64, 1-D, full scale = 1.0.
    sample_index : absolute index of ``samples[0]`` in this receiver's stream; a jump is a gap.
    t0_ns : Unix time of ``samples[0]`` in nanoseconds, from ``time_source``.
    time_source : "gps", "device" or "host".
    sample_rate : samples per second (Hz).
    center_freq : tuned centre frequency (Hz).
    gain_db : receiver gain in dB, or None when unknown / automatic.
    flags : ``Flags``.
    """

    receiver_id: str
    samples: np.ndarray
    sample_index: int
    t0_ns: int
    time_source: TimeSource
    sample_rate: float
    center_freq: float
    gain_db: float | None = None
    flags: Flags = Flags.NONE

    @property
    def end_index(self) -> int:
        """Index one past the last sample."""
        return self.sample_index + len(self.samples)

    @property
    def duration_ns(self) -> int:
        return int(round(len(self.samples) * 1e9 / self.sample_rate))


class DropCounter(Protocol):
    """Where adapters and stages count what they could not use (streamer.daemon.metrics.Metrics implements it)."""

    def bad_frame(self, receiver_id: str, reason: str) -> None: ...

    def samples_dropped(self, receiver_id: str, reason: str, n: int) -> None: ...


@dataclass
class TallyDropCounter:
    """A DropCounter that keeps plain tallies: for tests and for ``heimdall receiver`` without metrics."""

    bad_frames: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)

    def bad_frame(self, receiver_id: str, reason: str) -> None:
        self.bad_frames[(receiver_id, reason)] += 1

    def samples_dropped(self, receiver_id: str, reason: str, n: int) -> None:
        self.dropped[(receiver_id, reason)] += int(n)


def _ignore_gauge(receiver_id: str, name: str, value: float) -> None:
    return None


@dataclass(frozen=True)
class ReceiverContext:
    """What an adapter may use besides its own section.

    ``config`` is the whole validated config, ``drops`` counts what the adapter could not use, and
    ``gauge(receiver_id, name, value)`` reports an adapter-specific reading (e.g. ``"smeter_dbm"``)
    that streamer.daemon.metrics exports as ``heimdall_receiver_<name>``. ``zmq_context`` is the
    ``zmq.Context`` that ZeroMQ adapters open their sockets in: the daemon passes its own, on which its
    CURVE authenticator answers; None (an adapter used on its own, tests) means pyzmq's process-wide
    ``zmq.Context.instance()``.
    """

    config: "Config"
    drops: DropCounter
    gauge: Callable[[str, str, float], None] = _ignore_gauge
    zmq_context: Any = None


class Receiver(Protocol):
    """One IQ source. ``Options`` is a frozen dataclass of the kind-specific config keys."""

    Options: ClassVar[type]
    #: False for sources that produce as fast as they can (replay, simulation unpaced): the runner
    #: then applies back-pressure instead of dropping when the pipeline is behind.
    realtime: bool

    @classmethod
    def from_config(cls, rx: "ReceiverConfig", ctx: ReceiverContext) -> "Receiver": ...

    def __iter__(self) -> Iterator[IQBlock]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> None: ...


class ReceiverBase:
    """Context-manager plumbing shared by adapters; subclasses implement ``__iter__`` and ``close``."""

    realtime: bool = True

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:  # pragma: no cover - overridden where there is something to release
        pass


def check_socket_options(rcvhwm: int, recv_timeout_s: float, max_message_bytes: int) -> None:
    """Range checks shared by the ZeroMQ adapters' Options: values libzmq takes and a poll that ends (ValueError)."""
    if not 0 <= rcvhwm <= ZMQ_INT_MAX:
        raise ValueError(f"rcvhwm: expected 0 to {ZMQ_INT_MAX} messages, got {rcvhwm}")
    if not 0 < recv_timeout_s <= MAX_RECV_TIMEOUT_S:
        raise ValueError(f"recv_timeout_s: expected > 0 and <= {MAX_RECV_TIMEOUT_S:g} s, got {recv_timeout_s!r}")
    if not 1 <= max_message_bytes < 2**63:
        raise ValueError(f"max_message_bytes: expected 1 to 2**63 - 1 bytes, got {max_message_bytes}")
