"""Emissions on a band of channels: when each channel's transmission starts and ends, window after window.

``EmissionTracker`` is fed, for every aligned window, each channel's per-frame in-channel SNR (dB) and noise
(dBm) at each receiver, as the detection rule measures them (``channel_frame_levels``), the receivers present and
the frames' times (``frame_times_ns``). It owns, per channel and receiver, a tracked noise floor, and per channel
the state of the emission on it; it returns what happened in the window (``WindowEmissions``).

- **Noise floor**: the rule's in-channel noise estimate (dBm over the channel bandwidth, from the out-of-channel
  bands), averaged in mW with an exponential time constant of ``floor_time_constant_s`` of idle time. Only idle
  frames move it: the channel carries no emission (open or being confirmed) and the receiver reads below the off
  threshold, so a burst whose sidebands reach the noise bands does not raise its own floor. It starts from the
  median of a receiver's first present window and restarts after a gap in the data much longer than the
  time constant. The floor a window is judged against is the one tracked up to that window's start.
- **Level**: a frame's signal (the rule's in-channel power minus noise, dBm) over the tracked floor, in dB.
- **Hysteresis**: an emission opens on the first frame in which at least ``min_receivers`` present receivers reach
  ``on_snr_db`` (the rule's threshold, ``EmissionTracker.from_rule``); a frame is active while at least
  ``min_receivers`` stay at or above ``off_snr_db``; the emission ends when no frame has been active for longer
  than ``hangover_s``. It starts at its first frame's time and ends at its last active frame's time.
- **Lone carriers**: a receiver that reads at or above the off threshold on a channel while no other present
  receiver does, for ``lone_carrier_s`` of frames in all (a DC offset at its centre frequency, a birdie,
  interference at its site: nothing a transmitter heard by one receiver alone would be localized from), is left out
  of that channel (``left_out``: its levels count as not heard) until it reads below the off threshold in more than
  half of a window's frames. Without this one receiver's carrier would hold the channel's emission open for as
  long as it lasts, and every transmission on the channel would merge into it.
- **Minimum duration**: an emission is confirmed (``EmissionStart``, an id) once its active frames span
  ``min_duration_s``; one that ends sooner is dropped and counted in ``dropped_short`` (per channel). Ids are
  given at confirmation, so they increase in the order of the start events and none is skipped.

Each window's ``active`` lists the confirmed emissions with the frames of that window they were active in
(bool ``[T]``), for an interim estimate per window; ``EmissionEnd`` carries what a final estimate over the whole
emission needs. Frames of an emission that fell in the window before the one that confirmed it are not reported
(at most ``min_duration_s`` of it). A gap between windows counts as silence: an emission that spans a gap longer
than ``hangover_s`` is split in two. Memory is fixed by the number of channels and receivers.

Times are Unix ns (frame centres), levels dB, powers dBm; nothing here counts metrics or reads the config.

Examples
--------
>>> import numpy as np
>>> tracker = EmissionTracker([Channel("ch1", 446_006_250.0)], ["rx0", "rx1"], on_snr_db=6.0)
>>> times = frame_times_ns(0, FeatureSpec())
>>> snr = np.full((1, 2, times.size), -20.0)
>>> snr[0, 0, 10:40] = 12.0                       # rx0 hears a 0.3 s burst
>>> noise = np.full((1, 2, times.size), -110.0)
>>> result = tracker.update(snr, noise, np.array([True, True]), times)
>>> [type(event).__name__ for event in result.events], int(result.active[0].frames.sum())
(['EmissionStart'], 30)
>>> end = tracker.flush().events[0]
>>> end.receivers, round(end.duration_s, 3)
(('rx0',), 0.309)
"""


from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from streamer.dsp.detection import DetectionRule
from streamer.dsp.features import FeatureSpec

#: How long (s of frames) a receiver may hear a channel that no other receiver hears before it is left out of it: a DC
#: offset or a birdie holds the channel (and undoes the active-frame decision) for this long; a transmission that only
#: one receiver hears, which could not be localized anyway, ends for it after this long.
LONE_CARRIER_S = 10.0
#: A gap between frames longer than this many time constants restarts the floor from the next idle frame
#: (exp(-50) of the old floor would be left anyway); capping keeps the floor's log-domain sums finite.
_FLOOR_RESTART_TIME_CONSTANTS = 50.0


@dataclass(frozen=True)
class Channel:
    """One watched channel: ``name`` (unique, used in events) and ``centre_hz`` (its centre frequency, Hz)."""

    name: str
    centre_hz: float


@dataclass(frozen=True)
class EmissionStart:
    """An emission has lasted ``min_duration_s``: it started at ``start_ns`` (Unix ns, its first frame)."""

    emission_id: int
    channel: str
    start_ns: int


@dataclass(frozen=True)
class EmissionEnd:
    """An emission has ended.

    start_ns, end_ns : its first frame and its last active frame (Unix ns, frame centres).
    peak_snr_db : the receivers that heard it (reached ``on_snr_db`` in at least one frame) -> their peak level
        over the tracked floor (dB), in receiver order.
    active_frames : how many frames it was active in (at least ``min_receivers`` at or above ``off_snr_db``).
    """

    emission_id: int
    channel: str
    start_ns: int
    end_ns: int
    peak_snr_db: dict[str, float]
    active_frames: int

    @property
    def receivers(self) -> tuple[str, ...]:
        """The receivers that heard it, in receiver order."""
        return tuple(self.peak_snr_db)

    @property
    def duration_s(self) -> float:
        """end_ns - start_ns, in s."""
        return (self.end_ns - self.start_ns) / 1e9


@dataclass(frozen=True)
class ActiveEmission:
    """A confirmed emission in one window: ``frames`` (bool ``[T]``) are the window's frames it was active in."""

    emission_id: int
    channel: str
    frames: np.ndarray


@dataclass(frozen=True)
class WindowEmissions:
    """What one ``update`` (or ``flush``) found: start and end events in the order of the frames that decided them
    (an end is decided a hangover after its last active frame), and the active emissions."""

    events: tuple[EmissionStart | EmissionEnd, ...]
    active: tuple[ActiveEmission, ...]


def frame_times_ns(t_start_ns: int, spec: FeatureSpec) -> np.ndarray:
    """Centre time (Unix ns, int64 ``[T]``) of each mel frame of the window that starts at ``t_start_ns``."""
    centres_samples = np.arange(spec.n_frames) * spec.hop + spec.n_fft / 2
    return int(t_start_ns) + np.round(centres_samples / spec.sample_rate_hz * 1e9).astype(np.int64)


def channel_frame_levels(rule: DetectionRule, frames_dbm: np.ndarray, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """The rule's in-channel SNR (dB) and noise (dBm over the channel bandwidth) of each frame.

    ``frames_dbm`` is ``[..., M, T]`` dBm mel frames of one channel (centred at 0 Hz); both results are ``[..., T]``.
    Both come from one ``DetectionRule.frame_levels``: the SNR is ``frame_snr_db``, the noise ``channel_power``'s
    estimate with each frame taken as a window of one.
    """
    frames = np.asarray(frames_dbm)
    if frames.ndim < 2 or frames.shape[-2] != spec.n_mels:
        raise ValueError(f"channel_frame_levels: expected [..., {spec.n_mels}, T] mel frames, got shape {list(frames.shape)}")
    levels = rule.frame_levels(frames, spec)
    return levels.snr_db, levels.noise_dbm


class _ChannelState:
    """One channel's emission in progress (open: a candidate or a confirmed emission), fixed size in receivers."""

    def __init__(self, n_receivers: int) -> None:
        self.open = False
        self.emission_id: int | None = None
        self.start_ns = 0
        self.last_active_ns = 0
        self.active_frames = 0
        self.peak_snr_db = np.full(n_receivers, -np.inf)

    def begin(self, t_ns: int) -> None:
        self.open, self.emission_id = True, None
        self.start_ns = self.last_active_ns = t_ns
        self.active_frames = 0
        self.peak_snr_db.fill(-np.inf)


class LoneCarriers:
    """Which receivers hear a channel alone (module doc, "Lone carriers"): per channel and receiver, the frames in
    which it read loud while no other present receiver did, added up; once they reach ``lone_carrier_s`` (s; ``None``:
    never) it is left out of that channel (``left_out``, bool ``[C, R]``) from the next window on, until it reads quiet
    in more than half of a window's frames; ``starting`` marks those of ``left_out`` that were not left out in the
    window before. The emission tracker and the single-channel pipeline both keep one."""

    def __init__(self, n_channels: int, n_receivers: int, lone_carrier_s: float | None = LONE_CARRIER_S) -> None:
        self.lone_carrier_ns = None if lone_carrier_s is None else _duration_ns("lone_carrier_s", lone_carrier_s,
                                                                                 allow_zero=False)
        self._alone_ns = np.zeros((n_channels, n_receivers), dtype=np.int64)
        self.left_out = np.zeros((n_channels, n_receivers), dtype=bool)
        self.starting = np.zeros((n_channels, n_receivers), dtype=bool)

    def update(self, loud: np.ndarray, usable: np.ndarray, frame_times_ns: np.ndarray) -> None:
        """Take one window: ``loud`` and ``usable`` bool ``[C, R, T]`` (at or above the level that keeps an emission,
        and measured at all), ``frame_times_ns`` ``[T]``; ``left_out`` becomes the next window's."""
        if self.lone_carrier_ns is None:
            return
        alone = loud & (loud.sum(axis=1, keepdims=True) - loud == 0)
        times = np.asarray(frame_times_ns)
        frame_ns = int(np.median(np.diff(times))) if times.size > 1 else 0
        self._alone_ns += alone.sum(axis=-1) * frame_ns
        quiet = 2 * (usable & ~loud).sum(axis=-1) > times.size
        self._alone_ns[quiet] = 0
        left_out = (self.left_out | (self._alone_ns >= self.lone_carrier_ns)) & ~quiet
        self.starting = left_out & ~self.left_out
        self.left_out = left_out


class EmissionTracker:
    """Per-channel emission detection across receivers, with tracked noise floors (see the module docstring).

    Parameters
    ----------
    channels : the watched channels, in the order of the first axis of ``update``'s arrays.
    receiver_ids : the receivers, in the order of its second axis.
    on_snr_db : level (dB over the floor) at which a receiver hears; an emission opens when ``min_receivers`` do.
    off_snr_db : level (dB) at or above which a receiver keeps an emission active; default ``on_snr_db - 3``.
    min_receivers : how many present receivers must reach the thresholds in the same frame (default 1).
    hangover_s : an emission ends after this long (s) without an active frame (default 0.1 s).
    min_duration_s : shorter emissions are dropped and counted (s; default 0.05 s).
    floor_time_constant_s : time constant (s of idle frames) of the noise floor's average (default 2 s).
    lone_carrier_s : how long (s of frames) a receiver may hear a channel alone before it is left out of it (default
        ``LONE_CARRIER_S``; ``None``: never).

    Attributes
    ----------
    left_out : bool ``[C, R]``, the receivers left out of each channel in the last window ``update`` took (lone
        carriers, module doc); the caller leaves them out of that window's estimates too.
    left_out_starting : bool ``[C, R]``, those of ``left_out`` that this window is the first to leave out.
    """

    def __init__(
        self,
        channels: Sequence[Channel],
        receiver_ids: Sequence[str],
        *,
        on_snr_db: float,
        off_snr_db: float | None = None,
        min_receivers: int = 1,
        hangover_s: float = 0.1,
        min_duration_s: float = 0.05,
        floor_time_constant_s: float = 2.0,
        lone_carrier_s: float | None = LONE_CARRIER_S,
    ) -> None:
        self.channels = tuple(channels)
        self.receiver_ids = tuple(str(rx) for rx in receiver_ids)
        _check_names(self.channels, self.receiver_ids)
        self.on_snr_db = _finite("on_snr_db", on_snr_db)
        self.off_snr_db = self.on_snr_db - 3.0 if off_snr_db is None else _finite("off_snr_db", off_snr_db)
        if self.off_snr_db > self.on_snr_db:
            raise ValueError(f"off_snr_db: expected at most on_snr_db ({self.on_snr_db} dB), got {self.off_snr_db} dB")
        if isinstance(min_receivers, bool) or not isinstance(min_receivers, int) or not 1 <= min_receivers <= len(
                self.receiver_ids):
            raise ValueError(f"min_receivers: expected an integer from 1 to {len(self.receiver_ids)} (the receivers), "
                             f"got {min_receivers!r}")
        self.min_receivers = min_receivers
        self.hangover_ns = _duration_ns("hangover_s", hangover_s, allow_zero=True)
        self.min_duration_ns = _duration_ns("min_duration_s", min_duration_s, allow_zero=True)
        self.floor_time_constant_s = _duration_ns("floor_time_constant_s", floor_time_constant_s, allow_zero=False) / 1e9
        n_channels, n_receivers = len(self.channels), len(self.receiver_ids)
        self._floor_mw = np.zeros((n_channels, n_receivers))
        self._floor_seeded = np.zeros((n_channels, n_receivers), dtype=bool)
        self._states = [_ChannelState(n_receivers) for _ in self.channels]
        self._lone = LoneCarriers(n_channels, n_receivers, lone_carrier_s)
        self.lone_carrier_ns = self._lone.lone_carrier_ns
        self.left_out = np.zeros((n_channels, n_receivers), dtype=bool)
        self.left_out_starting = np.zeros((n_channels, n_receivers), dtype=bool)
        self._last_frame_ns: int | None = None
        self._next_id = 0
        #: Emissions dropped for being shorter than ``min_duration_s``, per channel (in channel order).
        self.dropped_short = np.zeros(n_channels, dtype=np.int64)

    @classmethod
    def from_rule(cls, rule: DetectionRule, channels: Sequence[Channel], receiver_ids: Sequence[str],
                  **options) -> EmissionTracker:
        """A tracker that hears at the detection rule's threshold (``rule.snr_db``); ``options`` as the constructor's."""
        return cls(channels, receiver_ids, on_snr_db=rule.snr_db, **options)

    @property
    def floor_dbm(self) -> np.ndarray:
        """The tracked noise floor (dBm over the channel bandwidth), ``[C, R]``; NaN where not yet seen."""
        with np.errstate(divide="ignore"):
            floor = 10.0 * np.log10(self._floor_mw)
        return np.where(self._floor_seeded, floor, np.nan)

    def update(self, snr_db: np.ndarray, noise_dbm: np.ndarray, present: np.ndarray,
               frame_times_ns: np.ndarray) -> WindowEmissions:
        """Take one window: the rule's per-frame SNR (dB) and noise (dBm), both ``[C, R, T]``
        (``channel_frame_levels``), ``present`` (bool ``[R]``) and the frames' centre times (Unix ns, ``[T]``,
        increasing, after the previous window's). Non-finite values of a present receiver count as not heard and
        leave its floor alone."""
        snr, noise, present, times = self._checked(snr_db, noise_dbm, present, frame_times_ns)
        # Absurd values (overflowing mW) count as non-finite rather than warn.
        with np.errstate(over="ignore", invalid="ignore"):
            noise_mw = 10.0 ** (noise / 10.0)
            usable = present[None, :, None] & np.isfinite(snr) & np.isfinite(noise) & np.isfinite(noise_mw)
        self._seed_floors(noise_mw, usable)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            level_db = np.where(usable, snr + noise - self.floor_dbm[:, :, None], -np.inf)
        loud = level_db >= self.off_snr_db  # before leaving anyone out: how lone carriers are followed
        self.left_out, self.left_out_starting = self._lone.left_out.copy(), self._lone.starting.copy()
        level_db[self.left_out] = -np.inf
        events: list[EmissionStart | EmissionEnd] = []
        active: list[ActiveEmission] = []
        busy = self._track_channels(level_db, times, events, active)
        idle = usable & ~busy[:, None, :] & (level_db < self.off_snr_db)
        self._follow_floors(noise_mw, idle, times)
        self._lone.update(loud, usable, times)
        self._last_frame_ns = int(times[-1])
        return WindowEmissions(tuple(events), tuple(active))

    def flush(self) -> WindowEmissions:
        """Close every open emission (at shutdown): confirmed ones end at their last active frame, shorter ones are
        dropped and counted."""
        events: list[EmissionStart | EmissionEnd] = []
        for c, state in enumerate(self._states):
            if state.open:
                ended = self._close(c, state)
                if ended is not None:
                    events.append(ended)
        return WindowEmissions(tuple(sorted(events, key=lambda event: event.end_ns)), ())

    # ------------------------------------------------------------------------------------------------

    def _checked(self, snr_db, noise_dbm, present, frame_times_ns):
        """The inputs as arrays of the expected shapes, or a ValueError that names the one that is not."""
        times = np.asarray(frame_times_ns)
        if times.ndim != 1 or times.size == 0 or not np.issubdtype(times.dtype, np.integer):
            raise ValueError(f"frame_times_ns: expected a non-empty 1-D integer array (Unix ns), got "
                             f"{times.dtype} shape {list(times.shape)}")
        times = times.astype(np.int64)
        expected = [len(self.channels), len(self.receiver_ids), times.size]
        snr = np.asarray(snr_db, dtype=np.float64)
        noise = np.asarray(noise_dbm, dtype=np.float64)
        for name, array in (("snr_db", snr), ("noise_dbm", noise)):
            if list(array.shape) != expected:
                raise ValueError(f"{name}: expected shape [channels, receivers, frames] = {expected}, "
                                 f"got {list(array.shape)}")
        present = np.asarray(present)
        if present.dtype != bool or present.shape != (len(self.receiver_ids),):
            raise ValueError(f"present: expected a bool array of shape [{len(self.receiver_ids)}], "
                             f"got {present.dtype} shape {list(present.shape)}")
        if np.any(np.diff(times) <= 0):
            raise ValueError("frame_times_ns: expected strictly increasing frame times")
        if self._last_frame_ns is not None and times[0] <= self._last_frame_ns:
            raise ValueError(f"frame_times_ns: the window's first frame ({int(times[0])} ns) is not after the previous "
                             f"window's last ({self._last_frame_ns} ns)")
        return snr, noise, present, times

    def _seed_floors(self, noise_mw: np.ndarray, usable: np.ndarray) -> None:
        """A receiver's first present window seeds its floor with the median of its usable frames' noise (mW)."""
        fresh = ~self._floor_seeded & usable.any(axis=-1)
        if fresh.any():
            self._floor_mw[fresh] = np.nanmedian(np.where(usable, noise_mw, np.nan)[fresh], axis=-1)
            self._floor_seeded |= fresh

    def _follow_floors(self, noise_mw: np.ndarray, idle: np.ndarray, times: np.ndarray) -> None:
        """Move each floor towards its idle frames' noise (mW): f <- d f + (1 - d) x per idle frame, d = exp(-dt/tau),
        dt the time since the previous frame; summed in closed form over the window."""
        previous_ns = times[0] if self._last_frame_ns is None else self._last_frame_ns
        dt_s = np.diff(times, prepend=previous_ns) / 1e9
        log_decay = np.where(idle, -np.minimum(dt_s / self.floor_time_constant_s, _FLOOR_RESTART_TIME_CONSTANTS), 0.0)
        later = log_decay.sum(axis=-1, keepdims=True) - np.cumsum(log_decay, axis=-1)
        weights = -np.expm1(log_decay) * np.exp(later)
        idle_noise_mw = np.where(idle, noise_mw, 0.0)
        self._floor_mw = np.exp(log_decay.sum(axis=-1)) * self._floor_mw + (weights * idle_noise_mw).sum(axis=-1)

    def _track_channels(self, level_db: np.ndarray, times: np.ndarray, events: list, active: list) -> np.ndarray:
        """Run every channel's state over one window's frames (``level_db`` is ``[C, R, T]``), frame by frame so that
        events come in time order and ids in the order of the start events; return the frames in which each channel
        carried an emission (open, confirmed or not), ``[C, T]``, and add the events and active frames."""
        heard = (level_db >= self.on_snr_db).sum(axis=1) >= self.min_receivers
        holding = (level_db >= self.off_snr_db).sum(axis=1) >= self.min_receivers
        busy = np.zeros(heard.shape, dtype=bool)
        # A channel with nothing open and no frame heard has nothing to do this window.
        watched = [c for c, state in enumerate(self._states) if state.open or heard[c].any()]
        frames = {c: np.zeros(times.size, dtype=bool) for c in watched}
        for t, t_ns in enumerate(times.tolist()):
            for c in watched:
                busy[c, t] = self._step(c, t_ns, heard[c, t], holding[c, t], level_db[c, :, t], frames[c], events,
                                        active)
                frames[c][t] = holding[c, t] and busy[c, t]
        for c in watched:
            if self._states[c].open:
                self._report_frames(c, self._states[c], frames[c], active)
        return busy

    def _step(self, c: int, t_ns: int, heard: bool, holding: bool, level_db: np.ndarray, frames: np.ndarray,
              events: list, active: list) -> bool:
        """Channel ``c``'s state at one frame (``level_db`` is ``[R]``): whether an emission is open at it."""
        state = self._states[c]
        if state.open and not holding and t_ns - state.last_active_ns > self.hangover_ns:
            self._report_frames(c, state, frames, active)
            ended = self._close(c, state)
            if ended is not None:
                events.append(ended)
        if not state.open and heard:
            state.begin(t_ns)
        if not state.open:
            return False
        np.maximum(state.peak_snr_db, level_db, out=state.peak_snr_db)
        if holding:
            state.last_active_ns = t_ns
            state.active_frames += 1
        if state.emission_id is None and state.last_active_ns - state.start_ns >= self.min_duration_ns:
            state.emission_id = self._next_id
            self._next_id += 1
            events.append(EmissionStart(state.emission_id, self.channels[c].name, state.start_ns))
        return True

    def _report_frames(self, c: int, state: _ChannelState, frames: np.ndarray, active: list) -> None:
        """Add a confirmed emission's frames of this window to ``active``, and clear ``frames`` for the next one."""
        if state.emission_id is not None and frames.any():
            active.append(ActiveEmission(state.emission_id, self.channels[c].name, frames.copy()))
        frames[:] = False

    def _close(self, c: int, state: _ChannelState) -> EmissionEnd | None:
        """End channel ``c``'s open emission: its ``EmissionEnd``, or ``None`` (counted) for one never confirmed."""
        state.open = False
        if state.emission_id is None:
            self.dropped_short[c] += 1
            return None
        heard = state.peak_snr_db >= self.on_snr_db
        peaks = {rx: float(peak) for rx, peak, loud in zip(self.receiver_ids, state.peak_snr_db, heard) if loud}
        return EmissionEnd(state.emission_id, self.channels[c].name, state.start_ns, state.last_active_ns, peaks,
                           state.active_frames)


def _check_names(channels: tuple[Channel, ...], receiver_ids: tuple[str, ...]) -> None:
    """Channels and receivers: at least one each, unique names, finite channel centres (Hz)."""
    if not channels:
        raise ValueError("channels: expected at least one channel")
    if not receiver_ids:
        raise ValueError("receiver_ids: expected at least one receiver")
    for index, channel in enumerate(channels):
        if not isinstance(channel, Channel):
            raise TypeError(f"channels[{index}]: expected a Channel(name, centre_hz), got {channel!r}")
        if not isinstance(channel.centre_hz, (int, float)) or not math.isfinite(channel.centre_hz):
            raise ValueError(f"channels[{index}].centre_hz: expected a finite frequency (Hz), got {channel.centre_hz!r}")
    for what, names in (("channels", [channel.name for channel in channels]), ("receiver_ids", list(receiver_ids))):
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"{what}: expected unique names, got {', '.join(map(repr, repeated))} more than once")


def _finite(name: str, value: float) -> float:
    """``value`` as a float, or a ValueError naming the parameter."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number (dB), got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name}: expected a finite number (dB), got {value!r}")
    return number


def _duration_ns(name: str, seconds: float, *, allow_zero: bool) -> int:
    """A duration given in s, as int ns; a ValueError naming the parameter when it is negative (or zero), or not a number."""
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a duration in s, got {seconds!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0 s" if allow_zero else "> 0 s"
        raise ValueError(f"{name}: expected a finite duration {bound}, got {seconds!r}")
    return round(value * 1e9)
