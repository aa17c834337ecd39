"""Simulated receiver network: a seeded world of moving NBFM transmitters, heard by every configured receiver.

This is the template adapter (copy it to start a new one) and the fake that the other tests lean on.

What a block holds
------------------
``IQBlock.samples`` are complex64 in full-scale units: ``dBFS = dBm at the antenna - true gain``, where the
true gain is the receiver's configured ``calibration_db`` plus a hidden per-receiver offset
N(0, ``simulator.calibration_sigma_db``). The daemon adds ``calibration_db`` back and so reads dBm up to
that unknown offset, as with real, imperfectly calibrated receivers. ``center_freq`` is the nominal tuned
frequency (default: ``network.target_freq_hz`` - 50 kHz, so the signal sits at +50 kHz), ``sample_rate``
the nominal rate, ``time_source`` is ``"host"``.

Physics (units in the names; all of it deterministic from ``simulator.seed``)
----------------------------------------------------------------------------
- Track: a smooth random walk over the search area (receivers' ENU bounding box + ``area_margin_km``).
  Each axis is ``min + width * Phi(g(t))`` with ``g`` a unit-variance stationary Gaussian process (a sum
  of random cosines), so over time the position is exactly uniform over the area; the RMS ground speed
  is ``speed_mps`` (slower near the edges, faster in the middle).
- Keying: alternating on/off periods with exponential lengths (means ``key_up_mean_s``,
  ``key_down_mean_s``); each transmission draws a power uniform in [tx_power_min_dbm, tx_power_max_dbm],
  a CTCSS tone and three voice-band tones whose deviation swells and fades at syllabic rates. Edges are
  2 ms raised-cosine ramps.
- Traffic: each on period is one kind, drawn with the ``traffic_<kind>_weight`` weights (default: voice only):
  ``voice`` push-to-talk (the whole period), ``dmr`` (a 27.5 ms burst in every 60 ms frame: TDMA, one slot of
  two), ``packet`` (bursts of 20-500 ms with pauses between), ``carrier`` (the whole period, unmodulated). A burst
  is a ``Transmission`` of its own. With ``collision_probability`` a second transmitter, at a fixed point
  uniform over the area, keys up during the period (``second_transmitters``). ``truth_over(start, end)`` says
  which spans of a window the wanted transmitter was keyed and whether another one was on the channel.
- Band traffic: ``simulator.transmitters`` transmitters (default 1), each with its own track, keying, powers,
  traffic and collisions from RNG streams keyed by the seed and its index (transmitter 0 uses the streams of
  the one-transmitter world, so one transmitter without a channel plan renders exactly as before). Each keys on one
  channel of the plan (``transmitter_channels``: without a plan all are on ``network.target_freq_hz``); the
  carrier lands at that channel's centre - LO, so a receiver's IQ holds every transmitter at its channel's
  offset. ``truth_over(start, end, k)`` is transmitter k's truth with its channel; ``band_truth_over`` all of them.
- Calibration drift: the hidden gain error at Unix time t (``calibration_error_db_at``) is the fixed
  ``calibration_error_db`` plus how far a daily random walk (``calibration_drift_db_per_sqrt_day``) and a yearly
  sine (``calibration_seasonal_db``, random phase per receiver) have moved since the receiver was calibrated
  (its ``calibrated_at``, else ``simulator.calibration_epoch_unix_s``): the model
  ``streamer.core.calibration_drift`` describes and the physics posterior widens for. The live stream applies
  it per chunk. Both default to 0.
- NBFM: the phase is an analytic function of transmitter time, so the propagation delay d/c is applied
  exactly, to the modulation and to the carrier (which gives Doppler for free).
- Propagation: ``P_rx = P_tx - (ref_loss_db + 10 n log10(d / 1 km)) + S_r(x)``, d the 3-D distance
  (``streamer.core.propagation.slant_distance_m``), ``S_r`` a Gaussian random field per receiver over transmitter
  position (std ``shadowing_db``, exponential correlation with distance ``shadowing_corr_km``). No fast
  fading: a 0.5 s window would average it to a fraction of a dB.
- Receiver: thermal noise ``-174 dBm/Hz + 10 log10(fs) + NF_r``, each receiver's noise figure ``NF_r``
  drawn once around ``noise_figure_db`` with spread ``noise_figure_sigma_db`` (hidden, like the gain error:
  hardware and site noise differ). The noise is the receiver's own, referred to its input at the configured
  gain: the hidden gain error scales the signal only (as a loss ahead of the first amplifier does: antenna,
  feed line, mismatch), so the noise floor the daemon reads is ``kTB + NF_r`` whatever the error, and tells
  an estimator nothing about it. (Noise added at the antenna, with one noise figure for the whole network,
  would let a trained model read each receiver's gain error off its noise floor: a simulator leak that the
  first trained models exploited; ``tests/receivers/test_simulator.py`` checks it is gone.) One reference
  oscillator per receiver, off by N(0, ``clock_ppm_sigma``) ppm, sets both the true sample rate and the LO,
  so the carrier appears ``-ppm * f_c`` off; ``t0_ns`` counts samples at the nominal rate from a host clock
  that is off by N(0, ``clock_offset_sigma_ms``), each block's stamp late by an exponential time of mean
  ``clock_jitter_ms`` (default 0) as a loaded host stamps blocks.

Reproducibility: the same seed and the same time span give the same samples whatever the block size
(the adapter renders its stream in fixed-size chunks of ``NOISE_CHUNK`` samples and cuts blocks from them;
noise comes from RNG streams keyed by (seed, receiver, chunk index); the track, keying and fields are
functions of absolute time). Each adapter builds its own ``SimulatedWorld`` from the config: no
shared mutable state, so receivers can run in threads or processes alike. The one thing adapters in one
process share is ``SimulatedReceiver.render_lock``: they render their blocks one at a time (see there why).

For training and evaluation, ``models.train.render.render_windows`` produces windows at any rate (e.g. the
model's 24 kHz) through ``window_burst``, ``window_noise`` and ``SimulatedWorld.received_baseband`` (float64, the
reference form of the signal model), and ``SimulatedWorld.received_power_dbm`` gives the underlying power. The
live stream (``SimulatedReceiver.add_signal``, ``SimulatedReceiver._noise``) computes the same model in float32
for speed: the same signal to float32 precision, and noise of the same distribution from its own RNG layout.

Examples
--------
>>> from streamer.config import from_dict
>>> cfg = from_dict({"receivers": [
...     {"id": "a", "kind": "simulator", "lat": 45.0, "lon": 7.0, "start_ns": 0, "realtime": False, "duration_s": 0.1},
...     {"id": "b", "kind": "simulator", "lat": 45.2, "lon": 7.3, "start_ns": 0, "realtime": False, "duration_s": 0.1}]})
>>> from receivers.base import ReceiverContext, TallyDropCounter
>>> with SimulatedReceiver.from_config(cfg.receivers[0], ReceiverContext(cfg, TallyDropCounter())) as rx:
...     blocks = list(rx)
>>> len(blocks), blocks[0].samples.dtype, blocks[0].sample_rate, blocks[0].time_source
(2, dtype('complex64'), 240000.0, 'host')
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, ClassVar, Iterator

import numpy as np
from scipy.special import ndtr

from receivers.base import IQBlock, ReceiverBase, ReceiverContext
from streamer.core.calibration_drift import DAYS_PER_YEAR, SECONDS_PER_DAY, parse_calibrated_at
from streamer.core.docs import doc as _doc
from streamer.core.geodesy import SearchArea, enu_to_geodetic, network_geometry
from streamer.core.propagation import log_distance_path_loss_db, slant_distance_m

#: Revision of what a seed renders through ``models.train.render.render_windows`` (signal, noise, propagation).
#: Raise it whenever the same seed would give different windows: caches of rendered windows
#: (``models.train.dataset``) are keyed by it. (The live stream's float32 rendering is not part of it.)
#: 2: per-receiver noise figures, noise referred to the receiver's input (the gain error scales the signal only).
SIGNAL_MODEL = 2
SPEED_OF_LIGHT_MPS = 299_792_458.0
THERMAL_NOISE_DBM_PER_HZ = -174.0  # kT at 290 K

#: Standard CTCSS tones (Hz, EIA/TIA-603); a transmission uses one.
CTCSS_TONES_HZ = (67.0, 71.9, 77.0, 82.5, 88.5, 94.8, 100.0, 103.5, 107.2, 110.9, 114.8, 118.8, 123.0, 127.3,
                  131.8, 136.5, 141.3, 146.2, 151.4, 156.7, 162.2, 167.9, 173.8, 179.9, 186.2, 192.8, 203.5,
                  210.7, 218.1, 225.7, 233.6, 241.8, 250.3)
CTCSS_DEVIATION_FRACTION = 0.15  # of the peak deviation; the usual 10-15 % for sub-audible tones
VOICE_TONES = 3
VOICE_BAND_HZ = (300.0, 2700.0)
SYLLABIC_RATE_HZ = (1.5, 5.0)
KEY_RAMP_S = 0.002

# Each random quantity has its own SeedSequence branch (seed, stream, ...), so adding one never shifts
# the others and every piece can be regenerated independently, in any order.
_TRACK, _KEYING, _SHADOWING, _RECEIVER, _NOISE, _WINDOW, _WINDOW_NOISE, _NOISE_FIGURE = range(8)
_TRAFFIC, _COLLISION, _DRIFT, _SEASON, _CLOCK_JITTER = range(8, 13)
_BAND = 13  # which channel of the plan each transmitter keys on

#: Traffic kinds a transmission can be (``simulator.traffic_<kind>_weight``), in the order their weights are drawn.
TRAFFIC_KINDS = ("voice", "dmr", "packet", "carrier")
#: DMR-like TDMA: one 27.5 ms burst per 60 ms slot pair (ETSI TS 102 361-1, two 30 ms slots, one used).
DMR_BURST_NS = 27_500_000
DMR_FRAME_NS = 60_000_000
#: Packet data: each burst lasts uniform in this range (s), pauses between bursts are exponential with this mean (s).
PACKET_BURST_S = (0.020, 0.500)
PACKET_PAUSE_MEAN_S = 0.3
#: Calibration drift: the random walk is evaluated at whole days from ``simulator.calibration_epoch_unix_s``
#: and linearly interpolated between them (drift within a day is far below a window's noise); increments
#: are drawn in blocks of this many days, each block from its own RNG stream (seed, receiver, block).
DRIFT_BLOCK_DAYS = 256
SECONDS_PER_YEAR = DAYS_PER_YEAR * SECONDS_PER_DAY

KEYING_CHUNK_NS = 600 * 10**9  # keying schedule is generated per 10-minute chunk of absolute time
TRACK_KNOT_NS = 15_625_000  # track evaluated every 1/64 s and interpolated (error < 1 mm at 300 m/s)
TRACK_TERMS = 48  # random cosines per axis: enough for near-Gaussian marginals
#: Step (s) at which a moving transmitter's distance and gain are evaluated, then linearly interpolated:
#: at 300 m/s the distance's curvature over 1 ms is < 0.1 mm (carrier phase error < 1e-3 rad).
GEOMETRY_STEP_S = 1.0 / 1024.0
NOISE_CHUNK = 32_768  # samples per chunk of the live stream, each with its own noise RNG stream
_KNOT_SPAN = 1024  # geometry knots the live stream computes at a time (1 s)
# E[phi(g)^2] for g ~ N(0, 1): links the Gaussian process's time scale to the RMS speed.
_E_PDF_SQ = 1.0 / (2.0 * math.pi * math.sqrt(3.0))


#: Shortest key-down between two transmissions where keying chunks meet (ns).
_MIN_KEY_DOWN_NS = 50_000_000


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def in_sampled_band(offset_hz: float, sample_rate_hz: float) -> bool:
    """Whether a carrier ``offset_hz`` from a receiver's LO reaches its complex samples at ``sample_rate_hz`` (Hz):
    inside the Nyquist band ``|offset| < fs/2``. A device filters before it decimates, so a carrier outside is
    removed, not folded into the band (an ideal filter here; its sidebands near the edge are not modelled).

    >>> in_sampled_band(-75_000.0, 96_000.0), in_sampled_band(-25_000.0, 96_000.0)
    (False, True)
    """
    return abs(offset_hz) < sample_rate_hz / 2


def thermal_noise_dbm(bandwidth_hz: float, noise_figure_db: float) -> float:
    """Receiver noise power (dBm) over ``bandwidth_hz``: -174 dBm/Hz + 10 log10(B) + NF."""
    return THERMAL_NOISE_DBM_PER_HZ + 10.0 * math.log10(bandwidth_hz) + noise_figure_db


def received_power_dbm(tx_power_dbm, distance_m, *, ref_loss_db: float, path_loss_exponent: float, shadowing_db=0.0):
    """Power at the receiving antenna (dBm): P_tx - log-distance path loss(d) + shadowing (dB)."""
    return (
        np.asarray(tx_power_dbm, dtype=np.float64)
        - log_distance_path_loss_db(distance_m, ref_loss_db, path_loss_exponent)
        + np.asarray(shadowing_db, dtype=np.float64)
    )


@dataclass(frozen=True)
class Truth:
    """Where the transmitter is at Unix time ``t_ns`` (transmitter time, no propagation delay).

    ``power_dbm`` is the transmit power (dBm) or None while keyed down; east/north in metres from the
    network origin, lat/lon in degrees.
    """

    t_ns: int
    lat: float
    lon: float
    east_m: float
    north_m: float
    power_dbm: float | None
    keyed: bool


@dataclass(frozen=True)
class WindowTruth:
    """What the wanted transmitter did over ``[start_ns, end_ns)`` (transmitter Unix time, ns).

    Position (east/north m from the network origin, lat/lon degrees), ``power_dbm`` (dBm) and ``keyed`` at the
    midpoint ``t_ns`` (as ``SimulatedWorld.truth``); ``keyed_fraction`` the share of the window in which the wanted
    transmitter was on the air; ``keyed_intervals_ns`` those on-air spans clipped to the window, in time order;
    ``collision`` whether a second transmitter was on the same channel during the window; ``kinds`` the traffic
    kinds (``TRAFFIC_KINDS``) of the wanted transmissions in it; ``transmitter`` which of the world's transmitters
    it is (0 in a one-channel world), ``channel`` and ``channel_hz`` the name and centre (Hz) of the channel of the
    plan it keys on (``keyed_at`` tells which frames it was on air in).
    """

    start_ns: int
    end_ns: int
    t_ns: int
    lat: float
    lon: float
    east_m: float
    north_m: float
    power_dbm: float | None
    keyed: bool
    keyed_fraction: float
    keyed_intervals_ns: tuple[tuple[int, int], ...]
    collision: bool
    kinds: tuple[str, ...]
    transmitter: int
    channel: str
    channel_hz: float

    def keyed_at(self, t_ns) -> np.ndarray:
        """Whether the transmitter was on the air at each of the Unix times ``t_ns`` (ns, e.g. a window's frame
        centres) inside the window: a bool array of ``t_ns``'s shape."""
        t = np.asarray(t_ns, dtype=np.int64)
        on = np.zeros(t.shape, dtype=bool)
        for a, b in self.keyed_intervals_ns:
            on |= (t >= a) & (t < b)
        return on


@dataclass(frozen=True, eq=False)
class Transmission:
    """One key-up: [start_ns, end_ns) in transmitter Unix time, power (dBm) and the audio that modulates it.

    The FM phase (rad) at time tau (s) after key-up is
    ``(dev_ctcss / f_ctcss) sin(2 pi f_ctcss tau) + sum_k b_k(tau) sin(2 pi f_k tau + theta_k)`` with
    ``b_k = (dev_k / f_k) (0.55 + 0.45 sin(2 pi r_k tau + psi_k))``: instantaneous deviation never exceeds
    ``dev_ctcss + sum(dev_k)`` = the configured peak deviation (up to the slow envelope's own tiny term).
    """

    start_ns: int
    end_ns: int
    power_dbm: float
    ctcss_hz: float
    ctcss_dev_hz: float
    tone_hz: np.ndarray
    tone_dev_hz: np.ndarray
    tone_phase_rad: np.ndarray
    syllable_hz: np.ndarray
    syllable_phase_rad: np.ndarray
    #: One of ``TRAFFIC_KINDS``: a burst of a DMR or packet transmission is one Transmission each.
    kind: str = "voice"
    #: A second transmitter's fixed (east, north) in m; None: the wanted transmitter, on the world's track.
    position_en_m: tuple[float, float] | None = None

    @classmethod
    def draw(cls, start_ns: int, end_ns: int, power_dbm: float, deviation_hz: float, rng: np.random.Generator) -> "Transmission":
        """Random audio for one transmission."""
        voice_share = rng.dirichlet(np.full(VOICE_TONES, 2.0)) * (1.0 - CTCSS_DEVIATION_FRACTION) * deviation_hz
        return cls(
            start_ns=int(start_ns),
            end_ns=int(end_ns),
            power_dbm=float(power_dbm),
            ctcss_hz=float(CTCSS_TONES_HZ[rng.integers(len(CTCSS_TONES_HZ))]),
            ctcss_dev_hz=CTCSS_DEVIATION_FRACTION * deviation_hz,
            tone_hz=rng.uniform(*VOICE_BAND_HZ, VOICE_TONES),
            tone_dev_hz=voice_share,
            tone_phase_rad=rng.uniform(0.0, 2.0 * math.pi, VOICE_TONES),
            syllable_hz=rng.uniform(*SYLLABIC_RATE_HZ, VOICE_TONES),
            syllable_phase_rad=rng.uniform(0.0, 2.0 * math.pi, VOICE_TONES),
        )

    def phase_rad(self, tau_s: np.ndarray) -> np.ndarray:
        """FM phase (rad) at ``tau_s`` seconds after key-up (any real tau: analytic, so delays are exact)."""
        two_pi = 2.0 * math.pi
        phase = (self.ctcss_dev_hz / self.ctcss_hz) * np.sin(two_pi * self.ctcss_hz * tau_s)
        for f, dev, th, r, psi in zip(self.tone_hz, self.tone_dev_hz, self.tone_phase_rad, self.syllable_hz, self.syllable_phase_rad):
            swell = 0.55 + 0.45 * np.sin(two_pi * r * tau_s + psi)
            phase = phase + (dev / f) * swell * np.sin(two_pi * f * tau_s + th)
        return phase

    def envelope(self, tau_s: np.ndarray) -> np.ndarray:
        """Amplitude 0..1 with raised-cosine key-up/key-down ramps of ``KEY_RAMP_S``."""
        length_s = (self.end_ns - self.start_ns) / 1e9
        tau_s = np.asarray(tau_s, dtype=np.float64)
        if tau_s.size and tau_s.min() >= KEY_RAMP_S and tau_s.max() <= length_s - KEY_RAMP_S:
            return np.ones_like(tau_s)  # no ramp in reach: exactly what the formula gives, for less work
        up = np.clip(tau_s / KEY_RAMP_S, 0.0, 1.0)
        down = np.clip((length_s - tau_s) / KEY_RAMP_S, 0.0, 1.0)
        return 0.25 * (1.0 - np.cos(math.pi * up)) * (1.0 - np.cos(math.pi * down))


class ShadowingField:
    """A stationary Gaussian random field over the search area (dB), exponential correlation exp(-r / L).

    Made by circulant embedding: white noise filtered in 2-D FFT space by the square root of the
    covariance's spectrum on a grid padded by 5 L (so the periodic wrap-around is below 1 % correlation),
    then read by bilinear interpolation. Bilinear averaging of a rough field loses variance between nodes
    (about 10 % at the grid step of L / 8), so each interpolated value is divided by the standard deviation
    that the interpolation weights imply: the field has std ``std_db`` everywhere, and stays continuous.
    """

    def __init__(self, area: SearchArea, std_db: float, corr_m: float, rng: np.random.Generator) -> None:
        self.std_db = float(std_db)
        corr_m = max(float(corr_m), 1.0)
        step = max(corr_m / 8.0, max(area.width_m, area.height_m) / 2048.0)
        pad = 5.0 * corr_m
        self.origin_m = (area.east_min_m - step, area.north_min_m - step)
        self.step_m = step
        n_e = int(math.ceil(area.width_m / step)) + 3
        n_n = int(math.ceil(area.height_m / step)) + 3
        m_e = _fft_size(n_e + int(math.ceil(pad / step)))
        m_n = _fft_size(n_n + int(math.ceil(pad / step)))
        lag_e = np.minimum(np.arange(m_e), m_e - np.arange(m_e)) * step
        lag_n = np.minimum(np.arange(m_n), m_n - np.arange(m_n)) * step
        cov = np.exp(-np.hypot(lag_n[:, None], lag_e[None, :]) / corr_m)
        spectrum = np.maximum(np.fft.rfft2(cov).real, 0.0)
        white = rng.standard_normal((m_n, m_e))
        grid = np.fft.irfft2(np.sqrt(spectrum) * np.fft.rfft2(white), s=(m_n, m_e))
        self.grid_db = (self.std_db * grid[:n_n, :n_e]).astype(np.float64)
        self._rho_side = math.exp(-step / corr_m)  # correlation of neighbouring nodes
        self._rho_diag = math.exp(-math.sqrt(2.0) * step / corr_m)

    def __call__(self, east_north_m) -> np.ndarray:
        """Field value (dB) at points ``[..., 2]`` (east, north, m); clamped to the grid's edge outside it."""
        p = np.asarray(east_north_m, dtype=np.float64)
        n_n, n_e = self.grid_db.shape
        x = np.clip((p[..., 0] - self.origin_m[0]) / self.step_m, 0.0, n_e - 1.000001)
        y = np.clip((p[..., 1] - self.origin_m[1]) / self.step_m, 0.0, n_n - 1.000001)
        i, j = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
        fy, fx = y - i, x - j
        g = self.grid_db
        value = (g[i, j] * (1 - fx) + g[i, j + 1] * fx) * (1 - fy) + (g[i + 1, j] * (1 - fx) + g[i + 1, j + 1] * fx) * fy
        # Var of the weighted sum of 4 unit-variance nodes: sum w_a w_b rho(a, b), in closed form.
        sx = (1 - fx) ** 2 + fx**2 + 2 * fx * (1 - fx) * self._rho_side  # along one row
        sy = (1 - fy) ** 2 + fy**2
        cross = 2 * fy * (1 - fy) * (((1 - fx) ** 2 + fx**2) * self._rho_side + 2 * fx * (1 - fx) * self._rho_diag)
        return value / np.sqrt(sx * sy + cross)


def _fft_size(n: int) -> int:
    """Smallest 2^a 3^b >= n (fast FFT length)."""
    best = 1 << (n - 1).bit_length()
    p3 = 1
    while p3 < best:
        p2 = p3
        while p2 < n:
            p2 *= 2
        best = min(best, p2)
        p3 *= 3
    return best


def _as_traffic(voice: Transmission, kind: str, rng: np.random.Generator) -> list[Transmission]:
    """The on period ``voice`` spans, as traffic of ``kind`` (``TRAFFIC_KINDS``): a list of transmissions in time order.

    voice: ``voice`` itself. dmr: a 27.5 ms burst at the start of every 60 ms frame of the period (the slot phase
    drawn from ``rng``), each burst carrying the voice's modulation from its own start. packet: bursts of uniform
    length in ``PACKET_BURST_S`` separated by exponential pauses (mean ``PACKET_PAUSE_MEAN_S``) until the period
    ends. carrier: the whole period, unmodulated.
    """
    if kind == "voice":
        return [voice]
    if kind == "carrier":
        silent = np.zeros_like(voice.tone_dev_hz)
        return [dataclasses.replace(voice, ctcss_dev_hz=0.0, tone_dev_hz=silent, kind="carrier")]
    bursts = []
    t, end = voice.start_ns, voice.end_ns
    if kind == "dmr":
        t += int(rng.integers(DMR_FRAME_NS - DMR_BURST_NS))
        for burst_start in range(t, end, DMR_FRAME_NS):
            bursts.append((burst_start, min(burst_start + DMR_BURST_NS, end)))
    elif kind == "packet":
        while t < end:
            burst_end = min(end, t + int(rng.uniform(*PACKET_BURST_S) * 1e9))
            bursts.append((t, burst_end))
            t = burst_end + int(rng.exponential(PACKET_PAUSE_MEAN_S) * 1e9) + 1
    else:
        raise ValueError(f"unknown traffic kind {kind!r}; known: {', '.join(TRAFFIC_KINDS)}")
    return [dataclasses.replace(voice, start_ns=a, end_ns=b, kind=kind) for a, b in bursts if b > a]


def transmitter_channels(config) -> tuple:
    """The channel (``streamer.config.ChannelConfig``) each of the ``simulator.transmitters`` keys on.

    Without a channel plan, all are on the one channel at ``network.target_freq_hz``. With one, the channels are
    dealt in an order drawn from the seed (stream ``_BAND``): distinct channels while there are as many as
    transmitters, then round again, so some channels carry two transmitters that key independently.
    """
    plan = config.channel_plan()
    count = config.simulator.transmitters
    if not config.has_channel_plan():
        return (plan[0],) * count
    order = _rng(config.simulator.seed, _BAND).permutation(len(plan))
    return tuple(plan[int(order[k % len(plan)])] for k in range(count))


def _merged(intervals) -> list[tuple[int, int]]:
    """Sorted, non-empty ``(start, end)`` intervals with overlapping or touching ones joined."""
    out: list[tuple[int, int]] = []
    for a, b in sorted((int(a), int(b)) for a, b in intervals if b > a):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


class SimulatedWorld:
    """Everything the simulated network shares, built deterministically from a ``Config``.

    Attributes (per receiver arrays are in ``config.receivers`` order)
    ----------
    origin, rx_enu_m ``[R, 3]``, rx_alt_m ``[R]``, area : geometry (``streamer.core.geodesy.network_geometry``).
    calibration_db ``[R]`` : configured gains, dBm = dBFS + calibration_db (what the daemon knows).
    calibration_error_db ``[R]`` : hidden true gain minus configured (dB) when the receiver was calibrated;
        never give it to an estimator. ``calibration_error_db_at(t_ns)`` adds the drift since then.
    calibrated_at_s ``[R]`` : when each receiver was calibrated (Unix s): its ``calibrated_at``, else
        ``simulator.calibration_epoch_unix_s``.
    noise_figure_db ``[R]`` : each receiver's noise figure (dB, >= 0): ``simulator.noise_figure_db`` plus a
        hidden N(0, ``noise_figure_sigma_db``) offset.
    clock_ppm ``[R]`` : reference-oscillator error (ppm): sample rate and LO are both off by it.
    clock_offset_ns ``[R]`` : host-clock error added to every ``t0_ns`` (ns).
    transmitter_channels ``[simulator.transmitters]`` : the channel (``ChannelConfig``: name, centre Hz) each
        transmitter keys on (``transmitter_channels``); the index is the ``transmitter`` argument of the methods.
    """

    def __init__(self, config) -> None:
        self.config = config
        self.sim = config.simulator
        self.target_freq_hz = float(config.network.target_freq_hz)
        self.origin, self.rx_enu_m, self.area = network_geometry(config)
        self.receiver_ids = tuple(rx.id for rx in config.receivers)
        self.rx_alt_m = np.array([rx.alt_m for rx in config.receivers], dtype=np.float64)
        self.calibration_db = np.array([rx.calibration_db for rx in config.receivers], dtype=np.float64)
        seed = self.sim.seed
        n_rx = len(self.receiver_ids)
        per_rx = [_rng(seed, _RECEIVER, r).standard_normal(3) for r in range(n_rx)]
        self.calibration_error_db = np.array([v[0] for v in per_rx]) * self.sim.calibration_sigma_db
        self.clock_ppm = np.array([v[1] for v in per_rx]) * self.sim.clock_ppm_sigma
        self.clock_offset_ns = np.round(np.array([v[2] for v in per_rx]) * self.sim.clock_offset_sigma_ms * 1e6).astype(np.int64)
        self.noise_figure_db = np.maximum(0.0, self.sim.noise_figure_db + self.sim.noise_figure_sigma_db * np.array(
            [_rng(seed, _NOISE_FIGURE, r).standard_normal() for r in range(n_rx)]))
        self.transmitter_channels = transmitter_channels(config)
        self._tracks = [self._track_terms(seed, k) for k in range(len(self.transmitter_channels))]
        self._shadowing: dict[int, ShadowingField] = {}
        self._keying: dict[tuple[int, int], tuple[list[Transmission], list[Transmission]]] = {}
        self.calibrated_at_s = np.array([
            parse_calibrated_at(rx.calibrated_at).timestamp() if rx.calibrated_at is not None else self.sim.calibration_epoch_unix_s
            for rx in config.receivers], dtype=np.float64)
        self._season_phase_rad = np.array([_rng(seed, _SEASON, r).uniform(0.0, 2.0 * math.pi) for r in range(n_rx)])
        self._walk_blocks: dict[tuple[int, int], tuple[float, np.ndarray]] = {}
        weights = np.array([getattr(self.sim, f"traffic_{kind}_weight") for kind in TRAFFIC_KINDS], dtype=np.float64)
        self._traffic_cdf = np.cumsum(weights) / weights.sum()

    # --- geometry and power ------------------------------------------------------------------------

    def receiver_index(self, receiver_id: str) -> int:
        """Position of ``receiver_id`` in the config (the index every per-receiver array uses)."""
        return self.receiver_ids.index(receiver_id)

    def shadowing(self, r: int) -> ShadowingField:
        """Receiver ``r``'s shadowing field (built on first use, then cached)."""
        if r not in self._shadowing:
            self._shadowing[r] = ShadowingField(
                self.area, self.sim.shadowing_db, 1000.0 * self.sim.shadowing_corr_km, _rng(self.sim.seed, _SHADOWING, r)
            )
        return self._shadowing[r]

    def distance_m(self, tx_en_m) -> np.ndarray:
        """3-D distance (m) from transmitter positions ``[..., 2]`` to every receiver: ``[..., R]``."""
        return slant_distance_m(tx_en_m, self.sim.tx_alt_m, self.rx_enu_m, self.rx_alt_m)

    def received_power_dbm(self, tx_en_m, tx_power_dbm) -> np.ndarray:
        """True power at each receiving antenna (dBm) ``[..., R]``, shadowing included, before calibration."""
        tx = np.asarray(tx_en_m, dtype=np.float64)
        shadow = np.stack([self.shadowing(r)(tx) for r in range(len(self.receiver_ids))], axis=-1)
        return received_power_dbm(
            np.asarray(tx_power_dbm, dtype=np.float64)[..., None],
            self.distance_m(tx),
            ref_loss_db=self.sim.ref_loss_db,
            path_loss_exponent=self.sim.path_loss_exponent,
            shadowing_db=shadow,
        )

    def measured_offset_db(self, t_ns=None) -> np.ndarray:
        """What the daemon's dBm reads minus the true antenna power, per receiver: ``-calibration_error_db_at(t_ns)``
        (``[..., R]`` dB); ``t_ns=None``: at the calibration epoch, ``-calibration_error_db``."""
        return -self.calibration_error_db if t_ns is None else -self.calibration_error_db_at(t_ns)

    def calibration_error_db_at(self, t_ns) -> np.ndarray:
        """Hidden true gain minus configured gain (dB) at Unix times ``t_ns`` (int or array): ``[..., R]``.

        ``calibration_error_db`` plus the change since each receiver was calibrated (``calibrated_at_s``) of a
        random walk of ``calibration_drift_db_per_sqrt_day`` and of a yearly sine of amplitude
        ``calibration_seasonal_db`` (each receiver its own walk and phase): over ``h`` days the change has variance
        ``q^2 |h| + A^2 (1 - cos(2 pi h / year))``, ``streamer.core.calibration_drift``'s structure function.
        Deterministic from the seed and the time; without drift keys, the constant.
        """
        t_s = np.asarray(t_ns, dtype=np.float64) / 1e9
        out = np.broadcast_to(self.calibration_error_db, t_s.shape + self.calibration_error_db.shape).copy()
        sim = self.sim
        if sim.calibration_seasonal_db > 0:
            def season(at_s):
                return np.sin(2.0 * math.pi * at_s / SECONDS_PER_YEAR + self._season_phase_rad)
            out += sim.calibration_seasonal_db * (season(t_s[..., None]) - season(self.calibrated_at_s))
        if sim.calibration_drift_db_per_sqrt_day > 0:
            out += sim.calibration_drift_db_per_sqrt_day * (self._walk_at(t_s) - self._walk_at(self.calibrated_at_s).diagonal())
        return out

    def _walk_at(self, t_s: np.ndarray) -> np.ndarray:
        """Each receiver's unit random walk at Unix times ``t_s`` ``[...]`` (s): ``[..., R]``, 0 at
        ``simulator.calibration_epoch_unix_s``, linear between whole days from it."""
        days = (np.asarray(t_s, dtype=np.float64) - self.sim.calibration_epoch_unix_s) / SECONDS_PER_DAY
        k = np.floor(days).astype(np.int64)
        frac = (days - k)[..., None]
        at_k, at_next = self._walk_at_days(k), self._walk_at_days(k + 1)
        return at_k + frac * (at_next - at_k)

    def _walk_at_days(self, days: np.ndarray) -> np.ndarray:
        """Unit random walk (one N(0, 1) step per day, 0 at day 0, either side of it) at whole days ``[...]``: ``[..., R]``."""
        n_rx = len(self.receiver_ids)
        out = np.empty(days.shape + (n_rx,), dtype=np.float64)
        blocks = days // DRIFT_BLOCK_DAYS
        within = days - blocks * DRIFT_BLOCK_DAYS
        for b in np.unique(blocks).tolist():
            sel = blocks == b
            for r in range(n_rx):
                start, partial = self._walk_block(r, b)
                out[sel, r] = start + partial[within[sel]]
        return out

    def _walk_block(self, r: int, b: int) -> tuple[float, np.ndarray]:
        """(Walk at the first day of block ``b``, the walk's rise from there at each day of the block ``[DRIFT_BLOCK_DAYS + 1]``)."""
        if (r, b) not in self._walk_blocks:
            steps = _rng(self.sim.seed, _DRIFT, r, b + (1 << 40)).standard_normal(DRIFT_BLOCK_DAYS)
            rise = np.concatenate([[0.0], np.cumsum(steps)])
            if b == 0:
                start = 0.0
            elif b > 0:
                before_start, before_rise = self._walk_block(r, b - 1)
                start = before_start + before_rise[-1]
            else:
                start = self._walk_block(r, b + 1)[0] - rise[-1]
            self._walk_blocks[(r, b)] = (float(start), rise)
        return self._walk_blocks[(r, b)]

    def noise_dbm(self, r: int, bandwidth_hz: float) -> float:
        """Receiver ``r``'s noise power over ``bandwidth_hz`` (dBm), as the daemon reads it (module doc)."""
        return thermal_noise_dbm(bandwidth_hz, float(self.noise_figure_db[r]))

    def full_scale_per_sqrt_mw(self, r: int, t_ns: int | None = None) -> tuple[float, float]:
        """Amplitude factors sqrt(mW) -> full scale of receiver ``r``: (signal at the antenna, the receiver's
        own noise). The signal sees the true gain (``calibration_db`` + hidden error at Unix time ``t_ns``, at the
        calibration epoch when None: dBFS = dBm - true gain), the noise, referred to the receiver's input, the
        configured one (module doc)."""
        error_db = self.calibration_error_db[r] if t_ns is None else self.calibration_error_db_at(int(t_ns))[r]
        return (10.0 ** (-(self.calibration_db[r] + error_db) / 20.0),
                10.0 ** (-self.calibration_db[r] / 20.0))

    # --- track -------------------------------------------------------------------------------------

    def _track_terms(self, seed: int, transmitter: int = 0) -> tuple[np.ndarray, np.ndarray]:
        rng = _rng(seed, _TRACK) if transmitter == 0 else _rng(seed, _TRACK, transmitter)
        omega = rng.standard_normal((2, TRACK_TERMS))
        omega /= np.sqrt(np.mean(omega**2, axis=1, keepdims=True))  # exactly unit mean square per axis
        # RMS speed^2 = E[phi(g)^2] * E[g'^2] * (W^2 + H^2) with E[g'^2] = mean(omega^2) = lam.
        lam = self.sim.speed_mps**2 / (_E_PDF_SQ * (self.area.width_m**2 + self.area.height_m**2))
        return omega * math.sqrt(lam), rng.uniform(0.0, 2.0 * math.pi, (2, TRACK_TERMS))

    def position_en_m(self, t_ns, transmitter: int = 0) -> np.ndarray:
        """Transmitter (east, north) in metres at Unix times ``t_ns`` (int or array): ``[..., 2]``."""
        t_s = np.asarray(t_ns, dtype=np.float64) / 1e9
        omega, phase = self._tracks[transmitter]
        arg = t_s[..., None, None] * omega + phase  # [..., 2, K]
        g = np.sqrt(2.0 / TRACK_TERMS) * np.cos(arg).sum(axis=-1)
        u = ndtr(g)
        a = self.area
        return np.stack([a.east_min_m + a.width_m * u[..., 0], a.north_min_m + a.height_m * u[..., 1]], axis=-1)

    def _interpolated_positions(self, ref_ns: int, t_rel_s: np.ndarray, transmitter: int = 0) -> np.ndarray:
        """Track at ``ref_ns + t_rel_s`` by linear interpolation between absolute-time knots ``[N, 2]``."""
        k0 = ref_ns // TRACK_KNOT_NS
        u = ((ref_ns - k0 * TRACK_KNOT_NS) / 1e9 + t_rel_s) / (TRACK_KNOT_NS / 1e9)
        k = np.floor(u).astype(np.int64)
        frac = (u - k)[:, None]
        lo, hi = int(k.min()), int(k.max()) + 1
        knots = self.position_en_m((k0 + np.arange(lo, hi + 1)) * TRACK_KNOT_NS, transmitter)
        i = k - lo
        return knots[i] * (1.0 - frac) + knots[i + 1] * frac

    # --- keying ------------------------------------------------------------------------------------

    def _raw_chunk(self, c: int, transmitter: int = 0) -> tuple[list[Transmission], list[Transmission], int | None]:
        """(Transmitter ``transmitter``'s transmissions whose key-up falls in keying chunk ``c``, second transmitters
        keyed during them, the end of the chunk's last on period (Unix ns; None: no on period)).

        The on/off periods are an alternating exponential process from the keying stream; each on period's traffic
        kind comes from the traffic stream and its collision from the collision stream (seed, stream, chunk, and
        the transmitter's index from 1 on), so the on/off periods do not depend on the traffic mix, and each
        transmitter keys independently of the others.
        """
        sim = self.sim
        key = (c + (1 << 40),) if transmitter == 0 else (c + (1 << 40), transmitter)  # offset: negative c is valid entropy
        rng = _rng(sim.seed, _KEYING, *key)
        traffic_rng = _rng(sim.seed, _TRAFFIC, *key)
        collision_rng = _rng(sim.seed, _COLLISION, *key)
        t = c * KEYING_CHUNK_NS
        end = t + KEYING_CHUNK_NS
        on = rng.random() < sim.key_up_mean_s / (sim.key_up_mean_s + sim.key_down_mean_s)
        out: list[Transmission] = []
        others: list[Transmission] = []
        last_on_end = None
        while t < end:
            # Exponential periods are memoryless, so starting the chunk in the stationary state is exact.
            length = int(rng.exponential(sim.key_up_mean_s if on else sim.key_down_mean_s) * 1e9) + 1
            if on:
                power = rng.uniform(sim.tx_power_min_dbm, sim.tx_power_max_dbm)
                voice = Transmission.draw(t, t + length, power, sim.fm_deviation_hz, rng)
                kind = TRAFFIC_KINDS[int(np.searchsorted(self._traffic_cdf, traffic_rng.random(), side="right"))]
                out.extend(_as_traffic(voice, kind, traffic_rng))
                if collision_rng.random() < sim.collision_probability:
                    others.append(self._second_transmitter(t, length, collision_rng))
                last_on_end = t + length
            t += length
            on = not on
        return out, others, last_on_end

    def _second_transmitter(self, start_ns: int, length_ns: int, rng: np.random.Generator) -> Transmission:
        """A voice transmission from a fixed point uniform over the search area, keyed up during ``[start_ns,
        start_ns + length_ns)`` and lasting an exponential time of mean ``key_up_mean_s``."""
        sim, area = self.sim, self.area
        key_up = start_ns + int(rng.random() * length_ns)
        end = key_up + int(rng.exponential(sim.key_up_mean_s) * 1e9) + 1
        power = rng.uniform(sim.tx_power_min_dbm, sim.tx_power_max_dbm)
        position = (float(area.east_min_m + area.width_m * rng.random()), float(area.north_min_m + area.height_m * rng.random()))
        tx = Transmission.draw(key_up, end, power, sim.fm_deviation_hz, rng)
        return dataclasses.replace(tx, position_en_m=position)

    def _chunk(self, c: int, transmitter: int = 0) -> tuple[list[Transmission], list[Transmission]]:
        """Chunk ``c`` of transmitter ``transmitter``: its transmissions clipped so as not to overlap the previous chunk's last one, and its
        second transmitters (as ``_raw_chunk``).

        Each chunk's on/off process starts independently, so its first key-up may fall inside a transmission
        carried over from the previous chunk: that one is shortened to start after it (by a key-down of
        ``_MIN_KEY_DOWN_NS``), not dropped: dropping it left silences as long as a whole transmission. "After it"
        is after its on period, whatever the traffic in it, so the on/off periods do not depend on the mix.
        """
        if (transmitter, c) not in self._keying:
            _, _, previous_end = self._raw_chunk(c - 1, transmitter)
            busy_until = (previous_end if previous_end is not None else c * KEYING_CHUNK_NS) + _MIN_KEY_DOWN_NS
            kept = []
            wanted, others, _ = self._raw_chunk(c, transmitter)
            for tx in wanted:
                if tx.start_ns < busy_until:
                    if tx.end_ns <= busy_until:
                        continue
                    tx = dataclasses.replace(tx, start_ns=busy_until)
                kept.append(tx)
            self._keying[(transmitter, c)] = (kept, others)
            if len(self._keying) > 16 * len(self.transmitter_channels):
                self._keying.pop(next(iter(self._keying)))
        return self._keying[(transmitter, c)]

    def transmissions(self, start_ns: int, end_ns: int, transmitter: int = 0) -> list[Transmission]:
        """Transmitter ``transmitter``'s transmissions (0: the wanted one of a one-channel world) overlapping
        [start_ns, end_ns) (transmitter Unix time), in time order (a DMR or packet transmission as its bursts)."""
        first = int(start_ns) // KEYING_CHUNK_NS - 1
        last = int(end_ns) // KEYING_CHUNK_NS
        return [tx for c in range(first, last + 1) for tx in self._chunk(c, transmitter)[0]
                if tx.end_ns > start_ns and tx.start_ns < end_ns]

    def second_transmitters(self, start_ns: int, end_ns: int, transmitter: int = 0) -> list[Transmission]:
        """Other transmitters on transmitter ``transmitter``'s channel (``collision_probability``) overlapping
        [start_ns, end_ns), each at its fixed ``position_en_m``."""
        if self.sim.collision_probability <= 0:
            return []
        # A second transmitter keys up inside a wanted one but may outlast it by many chunks.
        reach = int(20 * self.sim.key_up_mean_s * 1e9) // KEYING_CHUNK_NS + 1
        first = int(start_ns) // KEYING_CHUNK_NS - 1 - reach
        last = int(end_ns) // KEYING_CHUNK_NS
        return [tx for c in range(first, last + 1) for tx in self._chunk(c, transmitter)[1]
                if tx.end_ns > start_ns and tx.start_ns < end_ns]

    def truth_over(self, start_ns: int, end_ns: int, transmitter: int = 0) -> WindowTruth:
        """What transmitter ``transmitter`` (0: the wanted one of a one-channel world) did over ``[start_ns, end_ns)``
        (Unix ns, transmitter time): ``WindowTruth``."""
        start_ns, end_ns = int(start_ns), int(end_ns)
        if end_ns <= start_ns:
            raise ValueError(f"truth_over: window end {end_ns} ns must be after its start {start_ns} ns")
        if not 0 <= transmitter < len(self.transmitter_channels):
            raise ValueError(f"truth_over: no transmitter {transmitter}; simulator.transmitters = {len(self.transmitter_channels)}")
        at_mid = self.truth((start_ns + end_ns) // 2, transmitter)
        on_air = self.transmissions(start_ns, end_ns, transmitter)
        channel = self.transmitter_channels[transmitter]
        intervals = _merged((max(tx.start_ns, start_ns), min(tx.end_ns, end_ns)) for tx in on_air)
        keyed_ns = sum(b - a for a, b in intervals)
        return WindowTruth(
            start_ns=start_ns, end_ns=end_ns, t_ns=at_mid.t_ns, lat=at_mid.lat, lon=at_mid.lon, east_m=at_mid.east_m,
            north_m=at_mid.north_m, power_dbm=at_mid.power_dbm, keyed=at_mid.keyed,
            keyed_fraction=keyed_ns / (end_ns - start_ns), keyed_intervals_ns=tuple(intervals),
            collision=bool(self.second_transmitters(start_ns, end_ns, transmitter)),
            kinds=tuple(dict.fromkeys(tx.kind for tx in on_air)),
            transmitter=transmitter, channel=channel.name, channel_hz=channel.centre_hz,
        )

    def band_truth_over(self, start_ns: int, end_ns: int) -> list[WindowTruth]:
        """``truth_over`` for every transmitter, in transmitter order: each with its channel and on-air spans."""
        return [self.truth_over(start_ns, end_ns, k) for k in range(len(self.transmitter_channels))]

    def truth(self, t_ns: int, transmitter: int = 0) -> Truth:
        """Ground truth of transmitter ``transmitter`` at Unix time ``t_ns``: position, and transmit power while keyed."""
        t_ns = int(t_ns)
        east, north = self.position_en_m(t_ns, transmitter)
        lat, lon, _ = enu_to_geodetic(east, north, 0.0, self.origin)
        active = [tx for tx in self.transmissions(t_ns, t_ns + 1, transmitter) if tx.start_ns <= t_ns < tx.end_ns]
        power = active[0].power_dbm if active else None
        return Truth(t_ns, float(lat), float(lon), float(east), float(north), power, bool(active))

    # --- signal ------------------------------------------------------------------------------------

    def received_baseband(
        self,
        r: int,
        ref_ns: int,
        t_rel_s: np.ndarray,
        lo_freq_hz: float,
        *,
        tx_en_m: np.ndarray | None = None,
        transmissions: list[Transmission] | None = None,
        transmitter: int | None = None,
    ) -> np.ndarray:
        """Noise-free complex baseband at receiver ``r``'s antenna, in sqrt(mW) (|x|^2 = power in mW).

        The reference form of the signal model: ``models.train.render.render_windows`` calls it, and the
        adapter's ``SimulatedReceiver.add_signal`` computes the same in float32 (the tests compare the two).

        Parameters
        ----------
        r : receiver index.
        ref_ns : Unix time (ns) that ``t_rel_s`` counts from.
        t_rel_s : ``[N]`` true sampling instants, seconds after ``ref_ns``.
        lo_freq_hz : the receiver's actual LO frequency (Hz); each carrier lands at its channel's centre - LO.
        tx_en_m : fixed transmitter (east, north) in m; default: the transmitter's track.
        transmissions : what is on air; default: the world's keying schedule, and the second transmitters
            (``second_transmitters``) from their own positions.
        transmitter : whose track, channel and schedule (``transmitter_channels`` order); None: every transmitter
            summed where ``transmissions`` and ``tx_en_m`` are unset, else transmitter 0.
        """
        t_rel_s = np.asarray(t_rel_s, dtype=np.float64)
        if transmissions is None and tx_en_m is None:
            total = None
            for k in range(len(self.transmitter_channels)) if transmitter is None else (transmitter,):
                others = self._second_transmitters_baseband(r, ref_ns, t_rel_s, lo_freq_hz, k)
                wanted = self.received_baseband(r, ref_ns, t_rel_s, lo_freq_hz,
                                                transmissions=self._on_air_near(ref_ns, t_rel_s, k), transmitter=k)
                one = wanted if others is None else wanted + others
                total = one if total is None else total + one
            return total
        k = 0 if transmitter is None else transmitter
        if tx_en_m is None and t_rel_s.size > 1:
            # The geometry changes slowly: evaluate it every GEOMETRY_STEP_S and interpolate distance and
            # gain, which costs a fraction of evaluating the track and shadowing field per sample. The knots
            # sit on multiples of the step after ref_ns, so a sample gets the same value whatever block
            # it is read in (the stream does not depend on the block size).
            first = math.floor(t_rel_s[0] / GEOMETRY_STEP_S)
            last = math.ceil(t_rel_s[-1] / GEOMETRY_STEP_S)
            t_geo = np.arange(first, last + 1) * GEOMETRY_STEP_S
            dist_geo, gain_geo = self._path(r, self._interpolated_positions(ref_ns, t_geo, k))
            dist = np.interp(t_rel_s, t_geo, dist_geo)
            gain_db = np.interp(t_rel_s, t_geo, gain_geo)
        elif tx_en_m is None:
            dist, gain_db = self._path(r, self._interpolated_positions(ref_ns, t_rel_s, k))
        else:
            dist, gain_db = self._path(r, np.broadcast_to(np.asarray(tx_en_m, dtype=np.float64), (1, 2)))
        delay_s = dist / SPEED_OF_LIGHT_MPS
        t_tx_first = ref_ns + int(math.floor((t_rel_s[0] - delay_s.max()) * 1e9)) - 1
        t_tx_last = ref_ns + int(math.ceil(t_rel_s[-1] * 1e9)) + 1
        if transmissions is None:
            transmissions = self.transmissions(t_tx_first, t_tx_last, k)
        out = np.zeros(t_rel_s.shape, dtype=np.complex128)
        if not transmissions:
            return out
        # Carrier: exp(j 2 pi [(f_tx - f_lo) t - f_tx d/c]), f_tx the channel's centre. The constant part
        # (f_tx - f_lo) * ref is reduced mod 1 exactly (Fraction) so the phase is continuous whatever ref a block uses.
        f_tx = self.transmitter_channels[k].centre_hz
        offset_hz = f_tx - lo_freq_hz
        ref_cycles = float((Fraction(offset_hz) * Fraction(int(ref_ns), 10**9)) % 1)
        carrier_cycles = ref_cycles + offset_hz * t_rel_s - f_tx * delay_s
        carrier_cycles -= np.floor(carrier_cycles)
        for tx in transmissions:
            tau = (ref_ns - tx.start_ns) / 1e9 + t_rel_s - delay_s  # seconds since key-up, at the transmitter
            on = (tau > 0.0) & (tau < (tx.end_ns - tx.start_ns) / 1e9)
            if not on.any():
                continue
            tau_on = tau[on]
            amp = tx.envelope(tau_on) * 10.0 ** ((tx.power_dbm + np.broadcast_to(gain_db, tau.shape)[on]) / 20.0)
            out[on] += amp * np.exp(1j * (2.0 * math.pi * carrier_cycles[on] + tx.phase_rad(tau_on)))
        return out

    def _on_air_near(self, ref_ns: int, t_rel_s: np.ndarray, transmitter: int = 0) -> list[Transmission]:
        """The transmitter's transmissions that can reach a receiver at ``ref_ns + t_rel_s`` (any delay within the area)."""
        reach_s = 2.0 * math.hypot(self.area.width_m, self.area.height_m) / SPEED_OF_LIGHT_MPS + 1e-6
        return self.transmissions(ref_ns + math.floor((float(t_rel_s.min()) - reach_s) * 1e9) - 1,
                                  ref_ns + math.ceil(float(t_rel_s.max()) * 1e9) + 1, transmitter)

    def _second_transmitters_baseband(self, r: int, ref_ns: int, t_rel_s: np.ndarray, lo_freq_hz: float,
                                      transmitter: int = 0) -> np.ndarray | None:
        """The baseband at receiver ``r`` of the second transmitters on ``transmitter``'s channel (sqrt(mW), as
        ``received_baseband``); None when none is on."""
        if self.sim.collision_probability <= 0 or t_rel_s.size == 0:
            return None
        reach_s = 2.0 * math.hypot(self.area.width_m, self.area.height_m) / SPEED_OF_LIGHT_MPS + 1e-6
        others = self.second_transmitters(ref_ns + math.floor((float(t_rel_s.min()) - reach_s) * 1e9) - 1,
                                          ref_ns + math.ceil(float(t_rel_s.max()) * 1e9) + 1, transmitter)
        if not others:
            return None
        return sum(self.received_baseband(r, ref_ns, t_rel_s, lo_freq_hz, tx_en_m=np.asarray(tx.position_en_m),
                                          transmissions=[tx], transmitter=transmitter)
                   for tx in others)

    def _path(self, r: int, pos_en_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distance (m) and gain (dB: shadowing minus median path loss) from positions ``[N, 2]`` to receiver ``r``."""
        dist = slant_distance_m(pos_en_m, self.sim.tx_alt_m, self.rx_enu_m[r : r + 1], self.rx_alt_m[r : r + 1])[:, 0]
        shadow_db = self.shadowing(r)(pos_en_m)
        return dist, shadow_db - log_distance_path_loss_db(dist, self.sim.ref_loss_db, self.sim.path_loss_exponent)


def receiver_noise(world: SimulatedWorld, key: tuple[int, ...], n: int, noise_dbm: float) -> np.ndarray:
    """``n`` samples of complex white Gaussian noise of total power ``noise_dbm``, in sqrt(mW)."""
    rng = _rng(world.sim.seed, *key)
    scale = math.sqrt(10.0 ** (noise_dbm / 10.0) / 2.0)
    return scale * (rng.standard_normal(n) + 1j * rng.standard_normal(n))


def window_burst(world: SimulatedWorld, window_id: int, start_ns: int, end_ns: int, power_dbm: float) -> Transmission:
    """The transmission of training window ``window_id``: keyed up from ``start_ns`` to ``end_ns`` (Unix ns) at
    ``power_dbm`` (dBm), its audio drawn from the window's own RNG stream (seed, window id), so the same id always
    gives the same burst (``models.train.render.render_windows``)."""
    return Transmission.draw(start_ns, end_ns, power_dbm, world.sim.fm_deviation_hz, _rng(world.sim.seed, _WINDOW, int(window_id)))


def window_noise(world: SimulatedWorld, window_id: int, r: int, n: int, noise_dbm: float) -> np.ndarray:
    """``n`` samples of receiver ``r``'s thermal noise (total power ``noise_dbm``, in sqrt(mW)) in training window
    ``window_id``, from that window's and receiver's own RNG stream."""
    return receiver_noise(world, (_WINDOW_NOISE, int(window_id), r), n, noise_dbm)


def _sin_knots(tau_knots_s: np.ndarray, freq_hz: float, phase_rad: float, counts: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """sin(2 pi f tau + phase) as float32 at samples where tau is linear between knots: ``counts[k]`` samples
    lie between knots k and k + 1, each ``frac`` (float32, 0..1) of the way along. The angle at each knot is reduced
    mod one cycle in float64; within a segment (less than a few tens of radians) float32 holds it to
    about a microradian."""
    cycles = freq_hz * tau_knots_s
    cycles -= np.floor(cycles)
    start = (2.0 * math.pi * cycles + phase_rad).astype(np.float32)
    turn = (2.0 * math.pi * freq_hz * np.diff(tau_knots_s)).astype(np.float32)
    x = np.repeat(turn, counts)
    x *= frac
    x += np.repeat(start[:-1], counts)
    return np.sin(x, out=x)


def _fm_phase_f32(tx: Transmission, tau_knots_s: np.ndarray, counts: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """``Transmission.phase_rad`` (rad) as float32, for the live stream: each sine through ``_sin_knots``."""
    phase = _sin_knots(tau_knots_s, tx.ctcss_hz, 0.0, counts, frac)
    phase *= np.float32(tx.ctcss_dev_hz / tx.ctcss_hz)
    for f, dev, th, r, psi in zip(tx.tone_hz, tx.tone_dev_hz, tx.tone_phase_rad, tx.syllable_hz, tx.syllable_phase_rad):
        swell = _sin_knots(tau_knots_s, r, psi, counts, frac)
        swell *= np.float32(0.45 * dev / f)
        swell += np.float32(0.55 * dev / f)
        swell *= _sin_knots(tau_knots_s, f, th, counts, frac)
        phase += swell
    return phase


class SimulatedReceiver(ReceiverBase):
    """Adapter ``kind = "simulator"``: one receiver of the seeded ``SimulatedWorld``."""

    #: Held while a real-time stream renders a block. Rendering is some hundred numpy calls per chunk of
    #: ``NOISE_CHUNK`` samples, each dropping and retaking the GIL; sixteen receiver threads doing that at once spent most
    #: of their CPU handing the GIL to each other and starved the daemon's pipeline thread that shares the
    #: process (``benchmarks/bench_simulator_threads.py`` measures it). Taking turns costs no real time:
    #: the rendering needs a fraction of one core. A hardware adapter waits in I/O instead and needs no such
    #: lock; this keeps the simulated load from measuring itself.
    render_lock: ClassVar[AbstractContextManager] = threading.Lock()

    @dataclass(frozen=True)
    class Options:
        sample_rate_hz: float = field(default=240_000.0, metadata=_doc("nominal sample rate (Hz)"))
        center_freq_hz: float | None = field(
            default=None, metadata=_doc("tuned centre frequency (Hz); default network.target_freq_hz - 50 kHz")
        )
        block_s: float = field(default=0.05, metadata=_doc("samples per IQBlock (s)"))
        realtime: bool = field(
            default=True, metadata=_doc("pace blocks to the wall clock (also with a fixed start_ns); false = as fast as consumed")
        )
        start_ns: int | None = field(default=None, metadata=_doc("Unix time of the first sample (ns); default now"))
        duration_s: float | None = field(default=None, metadata=_doc("stop after this much signal (s); default never"))
        gain_db: float | None = field(default=None, metadata=_doc("gain reported in IQBlock.gain_db (dB); levels follow calibration_db"))
        dc_offset_db: float | None = field(default=None, metadata=_doc(
            "a DC offset at the centre frequency, as many SDRs have: this many dB above the receiver's noise in "
            "12.5 kHz (unset: none)"))

        def __post_init__(self) -> None:
            if not self.sample_rate_hz > 0:
                raise ValueError(f"sample_rate_hz must be > 0, got {self.sample_rate_hz}")
            if not self.block_s * self.sample_rate_hz >= 1:
                raise ValueError(f"block_s must hold at least one sample, got {self.block_s}")
            if self.duration_s is not None and self.duration_s < 0:
                raise ValueError(f"duration_s must be >= 0, got {self.duration_s}")
            if self.dc_offset_db is not None and not math.isfinite(self.dc_offset_db):
                raise ValueError(f"dc_offset_db must be a finite number of dB, got {self.dc_offset_db}")

    def __init__(
        self,
        receiver_id: str,
        world: SimulatedWorld,
        options: "SimulatedReceiver.Options | None" = None,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.options = options or self.Options()
        self.world = world
        self.receiver_id = receiver_id
        self.index = world.receiver_index(receiver_id)
        self.realtime = self.options.realtime
        self._clock_ns = clock_ns
        self._sleep = sleep
        opts = self.options
        self.center_freq_hz, self.sample_rate_hz = self.band_hz(opts, world.target_freq_hz)
        ppm = world.clock_ppm[self.index] * 1e-6
        # One reference oscillator drives both: true rate and LO are off by the same fraction.
        self.true_sample_rate_hz = self.sample_rate_hz * (1.0 + ppm)
        self.lo_freq_hz = self.center_freq_hz * (1.0 + ppm)
        # Pacing follows the wall clock from construction, whatever the simulated start time: a fixed
        # ``start_ns`` gives a reproducible world that still arrives in real time.
        self._pace_origin_ns = int(clock_ns())
        self.start_ns = int(opts.start_ns) if opts.start_ns is not None else self._pace_origin_ns
        self.block_len = max(1, int(round(opts.block_s * self.sample_rate_hz)))
        self.total_samples = None if opts.duration_s is None else int(round(opts.duration_s * self.sample_rate_hz))
        self.noise_dbm = world.noise_dbm(self.index, self.sample_rate_hz)
        self._dc = self._dc_offset(opts.dc_offset_db)
        self._closed = False
        self._chunks: dict[int, np.ndarray] = {}
        self._knot_cache: dict[int, dict[int, tuple[np.ndarray, np.ndarray]]] = {}  # transmitter -> span -> knots

    def _dc_offset(self, db_over_noise: float | None) -> np.complex64:
        """The constant (full scale) of a DC offset ``db_over_noise`` dB above the noise in 12.5 kHz; 0 for none."""
        if db_over_noise is None:
            return np.complex64(0.0)
        _, noise_scale = self.world.full_scale_per_sqrt_mw(self.index)
        power_mw = 10.0 ** ((self.world.noise_dbm(self.index, 12_500.0) + db_over_noise) / 10.0)
        return np.complex64(noise_scale * math.sqrt(power_mw))

    @staticmethod
    def band_hz(options: "SimulatedReceiver.Options", target_freq_hz: float) -> tuple[float, float]:
        """(centre, nominal sample rate) in Hz: the centre defaults to 50 kHz below the target."""
        center = float(options.center_freq_hz) if options.center_freq_hz is not None else target_freq_hz - 50e3
        return center, float(options.sample_rate_hz)

    @classmethod
    def configured_band_hz(cls, options: "SimulatedReceiver.Options | None", config) -> tuple[float, float]:
        """(centre, sample rate) in Hz, as the config sets them."""
        return cls.band_hz(options or cls.Options(), config.network.target_freq_hz)

    @classmethod
    def from_config(cls, rx, ctx: ReceiverContext) -> "SimulatedReceiver":
        """Build from a ``ReceiverConfig`` whose ``options`` is ``SimulatedReceiver.Options``."""
        return cls(rx.id, SimulatedWorld(ctx.config), rx.options)

    def read(self, first: int, count: int) -> np.ndarray:
        """Samples ``first .. first+count`` of this receiver's stream (complex64, full scale)."""
        out = np.empty(count, dtype=np.complex64)
        for c in range(first // NOISE_CHUNK, (first + count - 1) // NOISE_CHUNK + 1):
            lo = max(first, c * NOISE_CHUNK)
            hi = min(first + count, (c + 1) * NOISE_CHUNK)
            out[lo - first : hi - first] = self._chunk(c)[lo - c * NOISE_CHUNK : hi - c * NOISE_CHUNK]
        return out

    def _chunk(self, c: int) -> np.ndarray:
        """Samples of chunk ``c`` (``NOISE_CHUNK`` samples from ``c * NOISE_CHUNK``): noise plus signal, complex64.

        Blocks are cut from whole chunks, so the stream does not depend on the block size; the last two
        chunks are kept, as a block spans at most two of them when it is shorter than a chunk."""
        if c not in self._chunks:
            x = self._noise(c)
            self.add_signal(x, c * NOISE_CHUNK)
            if self._dc:
                x += self._dc
            self._chunks[c] = x
            if len(self._chunks) > 2:
                self._chunks.pop(next(iter(self._chunks)))
        return self._chunks[c]

    def _noise(self, c: int) -> np.ndarray:
        """Noise chunk ``c`` in full-scale units: complex Gaussian by Box-Muller in float32, from the RNG stream
        (seed, receiver, chunk): a magnitude sqrt(-2 ln u1) and a uniform phase 2 pi u2 give a circular complex
        Gaussian exactly, from 24-bit uniforms cut from the stream's raw 64-bit words (two per word)."""
        _, noise_scale = self.world.full_scale_per_sqrt_mw(self.index)
        scale = noise_scale * math.sqrt(10.0 ** (self.noise_dbm / 10.0) / 2.0)
        raw = _rng(self.world.sim.seed, _NOISE, self.index, c).bit_generator.random_raw(NOISE_CHUNK).view(np.uint32)
        u = (raw >> np.uint32(8)).astype(np.float32)
        u *= np.float32(2.0**-24)  # [0, 1) on a 2^-24 grid
        radius, angle = u[:NOISE_CHUNK], u[NOISE_CHUNK:]
        np.subtract(np.float32(1.0), radius, out=radius)  # (0, 1]: log is finite
        np.log(radius, out=radius)
        radius *= np.float32(-2.0 * scale * scale)
        np.sqrt(radius, out=radius)
        angle *= np.float32(2.0 * math.pi)
        out = np.empty(NOISE_CHUNK, dtype=np.complex64)
        parts = out.view(np.float32)
        np.multiply(radius, np.cos(angle), out=parts[0::2])
        np.multiply(radius, np.sin(angle), out=parts[1::2])
        return out

    def _knots(self, k_first: int, k_last: int, transmitter: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Distance (m) and gain (dB) from transmitter ``transmitter`` at geometry knots ``k_first .. k_last`` (knot k
        at ``start_ns + k * GEOMETRY_STEP_S``), as ``SimulatedWorld._path`` gives them; computed ``_KNOT_SPAN`` knots
        at a time and kept (each knot's value depends on its index only, so the grouping does not change it)."""
        parts = []
        cache = self._knot_cache.setdefault(transmitter, {})
        for b in range(k_first // _KNOT_SPAN, k_last // _KNOT_SPAN + 1):
            if b not in cache:
                t_geo = np.arange(b * _KNOT_SPAN, (b + 1) * _KNOT_SPAN) * GEOMETRY_STEP_S
                positions = self.world._interpolated_positions(self.start_ns, t_geo, transmitter)
                cache[b] = self.world._path(self.index, positions)
                if len(cache) > 2:
                    cache.pop(next(iter(cache)))
            lo = max(k_first, b * _KNOT_SPAN) - b * _KNOT_SPAN
            hi = min(k_last + 1, (b + 1) * _KNOT_SPAN) - b * _KNOT_SPAN
            parts.append((cache[b][0][lo:hi], cache[b][1][lo:hi]))
        if len(parts) == 1:
            return parts[0]
        return np.concatenate([d for d, _ in parts]), np.concatenate([g for _, g in parts])

    def add_signal(self, out: np.ndarray, first: int) -> None:
        """Add the noise-free signal of samples ``first .. first+len(out)`` to ``out`` (complex64, full scale).

        The same model as ``SimulatedWorld.received_baseband`` (which ``tests/receivers/test_simulator.py``
        compares it with), computed for a long stream: distance and gain at the same ``GEOMETRY_STEP_S``
        knots (``_knots``); what is linear between the knots there (carrier cycles, transmitter time, and here
        also the amplitude, in linear units rather than dB) spread to the samples by ``np.repeat``; the carrier
        reduced mod 1 in float64, the audio's angles reduced at the knots in float64 and carried to the samples
        in float32 (``_sin_knots``), sines and cosines in float32; each transmission's on-air samples found as
        one slice (tau, the time since key-up at the transmitter, increases with the sample index). Every
        transmitter of the world whose channel centre lies inside the sampled band (``in_sampled_band``) adds its
        own, at its channel's offset from the LO; one outside it is left out, as a device's anti-aliasing filter
        removes it (``received_baseband``, the signal at the antenna, keeps every carrier)."""
        world = self.world
        fs = self.true_sample_rate_hz
        # The gain drifts over days: one value per call (a chunk of the stream) is exact to far below a dB.
        signal_scale, _ = world.full_scale_per_sqrt_mw(self.index, self.start_ns + int(first / fs * 1e9))
        for transmitter, channel in enumerate(world.transmitter_channels):
            if in_sampled_band(channel.centre_hz - self.lo_freq_hz, fs):
                self._add_transmitter(out, first, transmitter, signal_scale)

    def _add_transmitter(self, out: np.ndarray, first: int, transmitter: int, signal_scale: float) -> None:
        """``add_signal`` for one transmitter (and the second transmitters on its channel)."""
        world, r = self.world, self.index
        count = len(out)
        fs = self.true_sample_rate_hz
        t_first_s, t_last_s = first / fs, (first + count - 1) / fs
        others = world._second_transmitters_baseband(r, self.start_ns, np.arange(first, first + count) / fs, self.lo_freq_hz,
                                                     transmitter)
        if others is not None:  # rare (collision_probability): the float64 reference form is fast enough
            out += (signal_scale * others).astype(np.complex64)
        if transmitter > 0 and not world._on_air_near(self.start_ns, np.array([t_first_s, t_last_s]), transmitter):
            return  # keyed down over the whole chunk: spare the geometry (transmitter 0 keeps its original order)
        # Knot k sits at sample position k * GEOMETRY_STEP_S * fs; the samples in [ceil(x_k), ceil(x_k+1))
        # lie between knots k and k + 1.
        knot_samples = GEOMETRY_STEP_S * fs
        k_first = math.floor(first / knot_samples)
        k_last = math.floor((first + count - 1) / knot_samples) + 1
        dist_geo, gain_geo = self._knots(k_first, k_last, transmitter)
        delay_max_s = float(dist_geo.max()) / SPEED_OF_LIGHT_MPS
        transmissions = world.transmissions(
            self.start_ns + int(math.floor((t_first_s - delay_max_s) * 1e9)) - 1,
            self.start_ns + int(math.ceil(t_last_s * 1e9)) + 1,
            transmitter,
        )
        if not transmissions:
            return
        x = np.arange(k_first, k_last + 1) * knot_samples
        counts = np.diff(np.clip(np.ceil(x).astype(np.int64) - first, 0, count))
        frac = np.arange(first, first + count, dtype=np.float64)
        frac -= np.repeat(x[:-1], counts)
        frac *= 1.0 / knot_samples  # 0..1 between knots j and j + 1

        def per_sample(at_knots: np.ndarray) -> np.ndarray:
            """Linear interpolation between the knots, of a quantity given at each of them."""
            return np.repeat(at_knots[:-1], counts) + frac * np.repeat(np.diff(at_knots), counts)

        t_geo = np.arange(k_first, k_last + 1) * GEOMETRY_STEP_S
        delay_geo = dist_geo / SPEED_OF_LIGHT_MPS
        amp = per_sample(signal_scale * 10.0 ** (gain_geo / 20.0)).astype(np.float32)
        # Carrier cycles, as in received_baseband: exp(j 2 pi [(f_tx - f_lo) t - f_tx d/c]), linear between
        # the knots like the delay; at the knots reduced mod 1 (ref_cycles exactly, by Fraction).
        f_tx = world.transmitter_channels[transmitter].centre_hz
        offset_hz = f_tx - self.lo_freq_hz
        ref_cycles = float((Fraction(offset_hz) * Fraction(int(self.start_ns), 10**9)) % 1)
        carrier_geo = ref_cycles + offset_hz * t_geo - f_tx * delay_geo
        carrier_geo -= np.floor(carrier_geo[0])
        carrier = per_sample(carrier_geo)
        carrier -= np.floor(carrier)
        tx_time_geo = t_geo - delay_geo  # transmitter time of the knots (s after start_ns)
        tx_time = per_sample(tx_time_geo)
        frac32 = frac.astype(np.float32)
        segment_start = np.concatenate([[0], np.cumsum(counts)])  # samples of knot segment j: [start[j], start[j + 1])
        parts = out.view(np.float32)
        for tx in transmissions:
            tau = tx_time + (self.start_ns - tx.start_ns) / 1e9
            length_s = (tx.end_ns - tx.start_ns) / 1e9
            i0, i1 = int(np.searchsorted(tau, 0.0, side="right")), int(np.searchsorted(tau, length_s, side="left"))
            if i1 <= i0:
                continue
            tau_on = tau[i0:i1]
            # The audio over the knot segments holding samples i0 .. i1 - 1 only (a DMR burst is a fraction of a
            # chunk), from the same knots as over the whole chunk: the same float32 values.
            j0 = int(np.searchsorted(segment_start, i0, side="right")) - 1
            j1 = int(np.searchsorted(segment_start, i1 - 1, side="right")) - 1
            on_counts = counts[j0 : j1 + 1].copy()
            on_counts[0] -= i0 - segment_start[j0]
            on_counts[-1] -= segment_start[j1 + 1] - i1
            angle = _fm_phase_f32(tx, tx_time_geo[j0 : j1 + 2] + (self.start_ns - tx.start_ns) / 1e9, on_counts, frac32[i0:i1])
            angle += (2.0 * math.pi * carrier[i0:i1]).astype(np.float32)
            a = amp[i0:i1] * np.float32(10.0 ** (tx.power_dbm / 20.0))
            if tau_on[0] < KEY_RAMP_S or tau_on[-1] > length_s - KEY_RAMP_S:
                a *= tx.envelope(tau_on).astype(np.float32)
            parts[2 * i0 : 2 * i1 : 2] += a * np.cos(angle)
            parts[2 * i0 + 1 : 2 * i1 : 2] += a * np.sin(angle)

    def block_t0_ns(self, sample_index: int) -> int:
        """Host timestamp of a block's first sample: start + count at the nominal rate + this host's clock error
        (ns) + the stamp's lateness (exponential, mean ``simulator.clock_jitter_ms``; from the RNG stream keyed by
        seed, receiver and ``sample_index``)."""
        t0 = self.start_ns + int(round(sample_index * 1e9 / self.sample_rate_hz)) + int(self.world.clock_offset_ns[self.index])
        jitter_ms = self.world.sim.clock_jitter_ms
        if jitter_ms > 0:
            t0 += int(_rng(self.world.sim.seed, _CLOCK_JITTER, self.index, sample_index).exponential(jitter_ms * 1e6))
        return t0

    def __iter__(self) -> Iterator[IQBlock]:
        first = 0
        while not self._closed:
            count = self.block_len
            if self.total_samples is not None:
                count = min(count, self.total_samples - first)
                if count <= 0:
                    return
            if self.realtime:
                # A real receiver delivers a block once its last sample has been taken.
                due_ns = self._pace_origin_ns + int((first + count) * 1e9 / self.sample_rate_hz)
                wait_s = (due_ns - self._clock_ns()) / 1e9
                if wait_s > 0:
                    self._sleep(wait_s)
            with self.render_lock:
                samples = self.read(first, count)
            yield IQBlock(
                receiver_id=self.receiver_id,
                samples=samples,
                sample_index=first,
                t0_ns=self.block_t0_ns(first),
                time_source="host",
                sample_rate=self.sample_rate_hz,
                center_freq=self.center_freq_hz,
                gain_db=self.options.gain_db,
            )
            first += count

    def close(self) -> None:
        self._closed = True
