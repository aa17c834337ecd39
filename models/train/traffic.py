"""On-air traffic of training and evaluation windows: when, inside each drawn window, the transmitter is keyed.

Owns ``Traffic`` (the mix of window kinds a draw uses, named presets in ``TRAFFIC``) and ``Keying`` (one window's
on-air intervals and the fraction of the window they cover, the truth a draw records). Kinds of window:

``full``     keyed from 1 s before the window until 1 s after it (every window before traffic existed).
``partial``  keyed for a fraction f of the window, f uniform in ``PARTIAL_KEYED_FRACTION``: the transmission
             starts inside the window and runs past its end, or was on before the window and ends inside it,
             or (a short over) starts and ends inside it; each of the three equally likely.
``dmr``      DMR-like TDMA: ``DMR_SLOT_S`` bursts every ``DMR_PERIOD_S`` with a random phase.
``packet``   packet data: one to three bursts, each uniform in ``PACKET_BURST_S`` and at most
             ``PACKET_MAX_SHARE`` of the window, apart, all inside the window.

The burst timings are the live simulator's (``receivers.simulator.DMR_BURST_NS``, ``DMR_FRAME_NS``,
``PACKET_BURST_S``), so training, evaluation and a live simulated run see the same bursts.

A ``bursts`` window is ``dmr`` or ``packet``, even odds. Every burst carries the simulator's FM signal (its signal
model has no digital modulation): what a window's traffic changes is when power is on the air. Intervals are in
transmitter time, seconds from the window's start; propagation (at most a millisecond over the networks drawn)
shifts them by much less than a frame.

Examples
--------
>>> import numpy as np
>>> keying = traffic_named("partial").draw(np.random.default_rng(1), 0.5)
>>> keying.kind in ("starts", "ends", "inside"), 0.1 <= keying.keyed_fraction(0.5) <= 1.0
(True, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from receivers.simulator import DMR_BURST_NS, DMR_FRAME_NS, PACKET_BURST_S

PARTIAL_KEYED_FRACTION = (0.1, 1.0)
DMR_SLOT_S = DMR_BURST_NS / 1e9
DMR_PERIOD_S = DMR_FRAME_NS / 1e9
PACKET_BURSTS = (1, 3)
#: The packet bursts of a window fill at most this share of it (the rest are gaps, so each burst has edges).
PACKET_MAX_SHARE = 0.8
#: A fully keyed window is on air this long (s) before and after it: longer than any propagation delay.
FULL_MARGIN_S = 1.0


@dataclass(frozen=True)
class Keying:
    """One window's on-air intervals: ``kind`` (module doc) and ``intervals_s``, (start, end) pairs in seconds from
    the window's start, in transmitter time, in order and apart."""

    kind: str
    intervals_s: tuple[tuple[float, float], ...]

    @staticmethod
    def full(window_s: float) -> Keying:
        """Keyed from ``FULL_MARGIN_S`` before a ``window_s`` (s) window until ``FULL_MARGIN_S`` after it."""
        return Keying("full", ((-FULL_MARGIN_S, window_s + FULL_MARGIN_S),))

    def keyed_fraction(self, window_s: float) -> float:
        """The share of the ``window_s`` (s) window during which the transmitter is keyed (0..1)."""
        on = sum(max(0.0, min(end, window_s) - max(start, 0.0)) for start, end in self.intervals_s)
        return float(min(1.0, on / window_s))


@dataclass(frozen=True)
class Traffic:
    """The mix of window kinds a draw uses: shares of ``full``, ``partial`` and ``bursts`` windows (each >= 0,
    summing to 1). ``name`` identifies the mix in cache tags and reports."""

    name: str
    full_share: float
    partial_share: float
    burst_share: float

    def __post_init__(self) -> None:
        shares = (self.full_share, self.partial_share, self.burst_share)
        if min(shares) < 0 or abs(sum(shares) - 1.0) > 1e-9:
            raise ValueError(f"traffic {self.name!r}: expected shares >= 0 summing to 1 (full, partial, bursts), "
                             f"got {shares}")

    @property
    def always_full(self) -> bool:
        """Every window is fully keyed: drawing a keying takes nothing from a generator."""
        return self.full_share >= 1.0

    def as_dict(self) -> dict:
        """The mix and the constants of its kinds, as a cache key or a model's metadata records them."""
        return {"name": self.name, "full_share": self.full_share, "partial_share": self.partial_share,
                "burst_share": self.burst_share, "partial_keyed_fraction": list(PARTIAL_KEYED_FRACTION),
                "dmr_slot_s": DMR_SLOT_S, "dmr_period_s": DMR_PERIOD_S, "packet_burst_s": list(PACKET_BURST_S),
                "packet_bursts": list(PACKET_BURSTS), "packet_max_share": PACKET_MAX_SHARE}

    def draw(self, rng: np.random.Generator, window_s: float) -> Keying:
        """One window's keying under this mix (a ``full`` traffic takes nothing from ``rng``)."""
        if self.always_full:
            return Keying.full(window_s)
        kind = rng.choice(3, p=[self.full_share, self.partial_share, self.burst_share])
        if kind == 0:
            return Keying.full(window_s)
        if kind == 1:
            return partial_keying(rng, window_s)
        return dmr_keying(rng, window_s) if rng.random() < 0.5 else packet_keying(rng, window_s)


def partial_keying(rng: np.random.Generator, window_s: float) -> Keying:
    """Keyed for a fraction of the window uniform in ``PARTIAL_KEYED_FRACTION`` (module doc, ``partial``)."""
    on_s = rng.uniform(*PARTIAL_KEYED_FRACTION) * window_s
    edge = int(rng.integers(3))
    if edge == 0:  # keyed up inside the window, on past its end
        return Keying("starts", ((window_s - on_s, window_s + FULL_MARGIN_S),))
    if edge == 1:  # on before the window, keyed down inside it
        return Keying("ends", ((-FULL_MARGIN_S, on_s),))
    start = rng.uniform(0.0, window_s - on_s)
    return Keying("inside", ((start, start + on_s),))


def dmr_keying(rng: np.random.Generator, window_s: float) -> Keying:
    """``DMR_SLOT_S`` bursts every ``DMR_PERIOD_S``, the first slot's start uniform over one period (module doc)."""
    first = rng.uniform(-DMR_PERIOD_S, 0.0)
    starts = first + DMR_PERIOD_S * np.arange(int(np.ceil((window_s - first) / DMR_PERIOD_S)))
    return Keying("dmr", tuple((float(s), float(s) + DMR_SLOT_S) for s in starts if s + DMR_SLOT_S > 0.0 and s < window_s))


def packet_keying(rng: np.random.Generator, window_s: float) -> Keying:
    """One to three packet bursts (module doc), in order and apart, all inside the window."""
    count = int(rng.integers(PACKET_BURSTS[0], PACKET_BURSTS[1] + 1))
    lengths = np.minimum(rng.uniform(*PACKET_BURST_S, count), PACKET_MAX_SHARE * window_s)
    while lengths.sum() > PACKET_MAX_SHARE * window_s:
        lengths = lengths[:-1]
    gaps = rng.dirichlet(np.ones(len(lengths) + 1)) * (window_s - lengths.sum())
    starts = np.cumsum(gaps[:-1]) + np.concatenate([[0.0], np.cumsum(lengths)[:-1]])
    return Keying("packet", tuple((float(s), float(s + n)) for s, n in zip(starts, lengths)))


TRAFFIC = {
    "full": Traffic("full", 1.0, 0.0, 0.0),
    "partial": Traffic("partial", 0.0, 1.0, 0.0),
    "bursts": Traffic("bursts", 0.0, 0.0, 1.0),
    # The training mix: most on-air windows of voice channels are partly keyed (a 0.5 s window holds a key edge
    # whenever an over starts or ends in it), a steady carrier or a long over is fully keyed, and data channels
    # give bursts; partial windows are the case a fully keyed training set never showed the model.
    "onair": Traffic("onair", 0.30, 0.45, 0.25),
}


def traffic_named(traffic: Traffic | str) -> Traffic:
    """A ``Traffic`` itself, or the preset of that name in ``TRAFFIC``; an unknown name raises ``ValueError``
    listing the known ones."""
    if isinstance(traffic, Traffic):
        return traffic
    if traffic not in TRAFFIC:
        raise ValueError(f"traffic: unknown name {traffic!r}; expected one of {', '.join(TRAFFIC)}")
    return TRAFFIC[traffic]
