"""Training and evaluation windows of a simulated world: IQ at any rate (e.g. the model's 24 kHz) as the daemon sees
it after its channelizer, through the simulator's own signal model.

Owns ``render_windows``: a fixed transmitter per window, keyed over the window's ``models.train.traffic.Keying`` (by
default the whole window), each receiver sampled with its oscillator error and thermal noise, optionally oversampled
and brought down by ``streamer.dsp.channelizer.Channelizer``. Frequencies in Hz, times in Unix ns, powers in dBm,
IQ in full-scale units (dBFS = dBm - true gain).
"""

from __future__ import annotations

import numpy as np

from models.train.traffic import Keying
from receivers.base import IQBlock
from receivers.simulator import SimulatedWorld, window_burst, window_noise
from streamer.dsp.channelizer import Channelizer


def render_windows(
    world: SimulatedWorld,
    tx_en_m,
    tx_power_dbm,
    start_ns,
    *,
    sample_rate_hz: float,
    n_samples: int,
    window_ids=None,
    receivers=None,
    add_noise: bool = True,
    oversampling: int = 1,
    keyings: list[Keying | None] | None = None,
) -> np.ndarray:
    """IQ windows as the daemon sees them after its channelizer tuned to the target frequency.

    For each window b the transmitter stands at ``tx_en_m[b]`` (east, north in m) keyed up at
    ``tx_power_dbm[b]`` (dBm) with audio drawn from (seed, window id); receiver r samples ``n_samples`` at
    ``sample_rate_hz`` (its oscillator error included) from Unix time ``start_ns[b]`` on, with thermal
    noise over ``sample_rate_hz``. The shadowing fields, calibration errors (at ``start_ns[b]``, drift
    included: ``SimulatedWorld.calibration_error_db_at``) and signal model are the world's, through
    ``SimulatedWorld.received_baseband``.

    Returns complex64 ``[B, R, n_samples]`` in full-scale units (dBFS = dBm - true gain), so
    ``features.mel_frames_dbm(x, spec, world.calibration_db)`` gives dBm as the daemon reads them.
    ``receivers`` selects receiver indices (default all); ``window_ids`` (default 0..B-1) keys the audio
    and noise RNG streams, so the same id always gives the same window.

    ``oversampling=1`` (the default) samples at ``sample_rate_hz``
    directly: a flat spectrum out to +-fs/2. With ``oversampling`` k > 1 each receiver is sampled at
    k x ``sample_rate_hz``, tuned ``sample_rate_hz / 4`` below the target as a real tuner sits off the
    carrier, and brought to ``sample_rate_hz`` by the daemon's own ``streamer.dsp.channelizer.Channelizer``:
    the windows then carry its anti-alias roll-off near +-fs/2 as live data does (its filter scales with
    the output rate, so the shape is the same for any decimation). The difference is measured by
    ``tests/receivers/test_simulator.py``: about -0.3 dB in the two outermost mel bands, nothing elsewhere.

    ``keyings`` (one per window; ``None`` or a ``None`` entry: keyed from 1 s before the window until 1 s after it)
    keys window b's transmitter over each interval of ``keyings[b].intervals_s`` (seconds from ``start_ns[b]``,
    transmitter time), every interval with the window's audio.
    """
    tx = np.atleast_2d(np.asarray(tx_en_m, dtype=np.float64))
    n_win = tx.shape[0]
    power = np.broadcast_to(np.asarray(tx_power_dbm, dtype=np.float64), (n_win,))
    starts = np.broadcast_to(np.asarray(start_ns, dtype=np.int64), (n_win,))
    ids = np.arange(n_win) if window_ids is None else np.asarray(window_ids, dtype=np.int64)
    rx_idx = list(range(len(world.receiver_ids))) if receivers is None else list(receivers)
    if keyings is not None and len(keyings) != n_win:
        raise ValueError(f"keyings: expected one per window ({n_win}), got {len(keyings)}")
    if isinstance(oversampling, bool) or not isinstance(oversampling, (int, np.integer)) or oversampling < 1:
        raise ValueError(f"oversampling: expected an integer >= 1, got {oversampling!r}")
    in_rate_hz = oversampling * sample_rate_hz
    centre_hz = world.target_freq_hz - (sample_rate_hz / 4 if oversampling > 1 else 0.0)
    channelizer, lead, n_in = None, 0, n_samples
    if oversampling > 1:
        channelizer = Channelizer(in_rate_hz, centre_hz, world.target_freq_hz, sample_rate_hz)
        # Outputs whose filter span reaches before the first input are transients (resample_poly pads with
        # zeros): render `lead` outputs' worth before the window and enough after it to emit its last one.
        half_len = (len(channelizer.taps) - 1) // 2
        lead = -(-half_len // channelizer.down) + 1
        n_in = (lead + n_samples) * channelizer.down // channelizer.up + half_len + channelizer.down
    first_input = lead * channelizer.down // channelizer.up if channelizer else 0  # input sample at t0
    out = np.empty((n_win, len(rx_idx), n_samples), dtype=np.complex64)
    for b in range(n_win):
        t0 = int(starts[b])
        keying = None if keyings is None else keyings[b]
        if keying is None:  # keyed well before the window (longer than any propagation delay) until well after it
            on_air = [window_burst(world, int(ids[b]), t0 - 10**9, t0 + 10**9 + int(n_samples / sample_rate_hz * 1e9), power[b])]
        else:
            on_air = [window_burst(world, int(ids[b]), t0 + round(start_s * 1e9), t0 + round(end_s * 1e9), power[b])
                      for start_s, end_s in keying.intervals_s]
        for j, r in enumerate(rx_idx):
            ppm = world.clock_ppm[r] * 1e-6
            t_rel = (np.arange(n_in) - first_input) / (in_rate_hz * (1.0 + ppm))
            signal_scale, noise_scale = world.full_scale_per_sqrt_mw(r, t0)
            x = signal_scale * world.received_baseband(r, t0, t_rel, centre_hz * (1.0 + ppm), tx_en_m=tx[b],
                                                       transmissions=on_air)
            if add_noise:
                x += noise_scale * window_noise(world, int(ids[b]), r, n_in, world.noise_dbm(r, in_rate_hz))
            x = x.astype(np.complex64)
            if channelizer is not None:
                channelizer.reset()
                block = IQBlock(world.receiver_ids[r], x, 0, t0, "host", in_rate_hz, centre_hz)
                x = channelizer.process(block).samples[lead : lead + n_samples]
            out[b, j] = x
    return out
