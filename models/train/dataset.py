"""Training and evaluation data: random simulated networks -> receiver IQ -> ``streamer.dsp.features`` mel frames.

Nothing here re-implements a signal or a feature. Each draw goes through:

1. ``random_network_config``: a streamer ``Config`` for a random receiver network (3-16 receivers, bounding
   box 3-200 km, 2 m or 70 cm) with a randomised ``[simulator]`` section: transmit power range, path-loss
   exponent and 1 km loss, shadowing sigma and decorrelation distance (spatially correlated field per
   receiver), per-receiver calibration error sigma, noise figure and its spread over the receivers, transmitter
   and receiver heights.
2. ``receivers.simulator.SimulatedWorld`` + ``models.train.render.render_windows``: per-receiver IQ at the model rate for the
   drawn transmitter positions and powers, through the same signal code as the live simulator adapter
   (path loss, the world's shadowing fields, hidden calibration errors, thermal noise, oscillator errors).
3. ``streamer.dsp.features.mel_frames_dbm`` with the receivers' configured ``calibration_db``: the daemon's
   feature implementation, so the model sees what the daemon will give it.
4. Outages: each receiver is absent from a window with a random per-world probability (at least three
   stay); absent receivers are not rendered and get mask 0 and zero features, as ``OnnxSession`` fills them.
5. Traffic (``models.train.traffic``): each window is keyed as its ``Traffic`` mix draws it (whole window,
   partly, or in bursts), from the window's own stream (world seed, ``KEYING_STREAM``, window id); the
   truth records the keyed fraction. The frames that carried the transmitter are the daemon's decision,
   ``DETECTION.frame_activity`` over the present receivers, and are what both estimators are given.

Draws are kept only when at least ``min_heard`` present receivers hear the transmitter by the daemon's own
rule (``DETECTION``, the ``streamer.dsp.detection.DetectionRule`` of the config defaults) over the window's
active frames: windows the daemon would not localize are not trained or scored on.

Everything is a function of ``seed`` and the traffic (world ``w`` of a run uses ``SeedSequence([seed, w])``,
``world_config``), so a run with the same arguments gives the same arrays whatever the number of worker processes, and
``world_sites`` and ``world_areas`` can give each window its world's true propagation and search area (what the
model is told in training) again from the seed.

Examples
--------
>>> from streamer.dsp.features import FeatureSpec
>>> data = generate(4, seed=3, spec=FeatureSpec(), windows_per_world=4)
>>> data.features_dbm.shape, data.rx_mask.shape, data.tx_enu_km.shape
((4, 16, 32, 45), (4, 16), (4, 2))
"""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from models.train.traffic import Traffic, traffic_named
from streamer.config import Config, PhysicsConfig, from_dict
from streamer.core.geodesy import Origin, enu_to_geodetic
from streamer.dsp import features as feature_module
from streamer.dsp.detection import DetectionRule
from streamer.dsp.features import FeatureSpec

MAX_RECEIVERS = 16
#: The daemon's detection rule under the config defaults (``network.channel_bandwidth_hz``,
#: ``pipeline.detection_snr_db``): which receivers hear a training or evaluation draw.
DETECTION = DetectionRule.from_config(Config())
BANDS_HZ = ((144e6, 148e6), (430e6, 440e6))
UNIX_2026_NS = 1_767_225_600 * 10**9
#: When drawn windows start (Unix ns, [first, last)): about 11.6 days from 2026-01-01.
WINDOW_START_NS_RANGE = (UNIX_2026_NS, UNIX_2026_NS + 10**15)
#: Second entry of a window's keying stream (world seed, KEYING_STREAM, window id), apart from the simulator's own.
KEYING_STREAM = 1_000_001


@dataclass
class Windows:
    """A batch of draws, receivers padded to ``max_receivers`` slots (absent slots: mask 0, zeros).

    features_dbm : float32 [N, R, M, T] mel frames (dBm at the antenna, as far as calibration_db is right).
    rx_enu_km : float32 [N, R, 3] receiver east, north, up from the network origin (km).
    rx_mask : float32 [N, R] 1 = present.
    tx_enu_km : float32 [N, 2] true transmitter east, north (km).
    rx_alt_m : float32 [N, R] receiver heights above the ellipsoid (m) (for the physics estimator).
    world : int32 [N] index of the network a draw came from.
    heard : float32 [N, R] 1 = present and heard by the daemon's rule over the active frames.
    active_frames : bool [N, T] frames that carried the transmitter by the daemon's rule
        (``DETECTION.frame_activity`` over the present receivers); what the model's ``frame_mask`` is fed.
        Not given: every frame (rows measured over whole windows, as POWDER's).
    keyed_fraction : float32 [N] truth: the share of the window the transmitter was keyed (0..1). Not given: 1.
    """

    features_dbm: np.ndarray
    rx_enu_km: np.ndarray
    rx_mask: np.ndarray
    tx_enu_km: np.ndarray
    rx_alt_m: np.ndarray
    world: np.ndarray
    heard: np.ndarray
    active_frames: np.ndarray | None = None
    keyed_fraction: np.ndarray | None = None

    def __post_init__(self) -> None:
        n, n_frames = self.features_dbm.shape[0], self.features_dbm.shape[-1]
        if self.active_frames is None:
            self.active_frames = np.ones((n, n_frames), bool)
        if self.keyed_fraction is None:
            self.keyed_fraction = np.ones(n, np.float32)

    def __len__(self) -> int:
        return int(self.tx_enu_km.shape[0])

    @staticmethod
    def concat(parts: list[Windows]) -> Windows:
        return Windows(*(np.concatenate([getattr(p, f) for p in parts]) for f in Windows.__dataclass_fields__))

    def subset(self, idx) -> Windows:
        return Windows(*(getattr(self, f)[idx] for f in Windows.__dataclass_fields__))

    def save(self, path) -> None:
        np.savez(path, **{f: getattr(self, f) for f in Windows.__dataclass_fields__})

    @staticmethod
    def load(path) -> Windows:
        with np.load(path) as z:
            missing = [f for f in Windows.__dataclass_fields__ if f not in z.files]
            if missing:
                raise ValueError(f"{path}: no {', '.join(missing)}: written before these fields existed; delete it "
                                 "and it is drawn again")
            return Windows(*(z[f] for f in Windows.__dataclass_fields__))


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def free_space_loss_1km_db(freq_hz: float) -> float:
    """ITU-R P.525 free-space loss at 1 km: 32.45 + 20 log10(f / MHz) (dB)."""
    return 32.45 + 20.0 * math.log10(freq_hz / 1e6)


def random_receiver_layout(rng: np.random.Generator, n_rx: int, extent_km: float) -> np.ndarray:
    """``[n_rx, 2]`` east/north (km): uniform in a random-aspect box, or a few clusters, or a ring."""
    aspect = rng.uniform(0.4, 1.0)
    w, h = (extent_km, extent_km * aspect) if rng.random() < 0.5 else (extent_km * aspect, extent_km)
    kind = rng.choice(3, p=[0.6, 0.25, 0.15])
    if kind == 0:
        xy = rng.uniform(0, 1, (n_rx, 2)) * [w, h]
    elif kind == 1:
        centres = rng.uniform(0, 1, (int(rng.integers(2, 4)), 2)) * [w, h]
        xy = centres[rng.integers(len(centres), size=n_rx)] + rng.normal(0, 0.12, (n_rx, 2)) * [w, h]
    else:
        angle = np.sort(rng.uniform(0, 2 * math.pi, n_rx))
        radius = rng.uniform(0.7, 1.0, n_rx)
        xy = 0.5 * np.stack([w * radius * np.cos(angle), h * radius * np.sin(angle)], axis=-1)
    return xy - xy.mean(axis=0)


def random_network_config(rng: np.random.Generator, *, n_rx: int | None = None, extent_km: float | None = None,
                          seed: int = 1) -> Config:
    """A ``Config`` of a random simulated network with a randomised propagation world (module doc, step 1)."""
    n_rx = int(rng.integers(3, MAX_RECEIVERS + 1)) if n_rx is None else n_rx
    extent_km = _log_uniform(rng, 3.0, 200.0) if extent_km is None else extent_km
    band = BANDS_HZ[int(rng.integers(2))]
    freq_hz = float(rng.uniform(*band))
    xy_km = random_receiver_layout(rng, n_rx, extent_km)
    alt_m = rng.uniform(0.0, 800.0, n_rx)
    origin = Origin(float(rng.uniform(-55, 60)), float(rng.uniform(-180, 180)), 0.0)
    lat, lon, _ = enu_to_geodetic(xy_km[:, 0] * 1e3, xy_km[:, 1] * 1e3, 0.0, origin)
    tx_min = float(rng.uniform(15.0, 40.0))
    # One window sees each receiver's field at one point, so the decorrelation distance hardly changes a draw;
    # it is kept >= extent/40 so that a field's grid (step corr/8) stays small and cheap to build.
    corr_lo, corr_hi = max(0.05, extent_km / 40.0), max(0.1, min(20.0, extent_km / 4.0))
    receivers = [
        {"id": f"rx{i}", "kind": "simulator", "lat": float(lat[i]), "lon": float(lon[i]), "alt_m": float(alt_m[i]),
         "calibration_db": float(rng.uniform(-30.0, 30.0))}
        for i in range(n_rx)
    ]
    return from_dict({
        "network": {"target_freq_hz": freq_hz, "area_margin_km": extent_km * float(rng.uniform(0.05, 0.35))},
        "simulator": {
            "seed": seed,
            "tx_power_min_dbm": tx_min,
            "tx_power_max_dbm": tx_min + float(rng.uniform(5.0, 20.0)),
            "path_loss_exponent": float(rng.uniform(2.0, 4.0)),
            "ref_loss_db": free_space_loss_1km_db(freq_hz) + float(rng.uniform(-3.0, 25.0)),
            "shadowing_db": float(rng.uniform(3.0, 9.0)),
            "shadowing_corr_km": _log_uniform(rng, corr_lo, corr_hi),
            "calibration_sigma_db": float(rng.uniform(0.0, 4.0)),
            "noise_figure_db": float(rng.uniform(3.0, 12.0)),
            "tx_alt_m": float(rng.uniform(2.0, 300.0)),
            "noise_figure_sigma_db": float(rng.uniform(0.0, 4.0)),
        },
        "receivers": receivers,
    }, source="<random network>")


def heard_mask(frames_dbm: np.ndarray, spec: FeatureSpec, active_frames: np.ndarray | None = None) -> np.ndarray:
    """The daemon's detection rule on ``[..., R, M, T]`` frames: ``DETECTION.apply(...).heard``, over the
    ``active_frames`` (``[..., T]`` bool) only when given."""
    return DETECTION.apply(frames_dbm, spec, active=active_frames).heard


def window_keying_rng(world, window_id: int) -> np.random.Generator:
    """The generator window ``window_id`` of ``world`` draws its keying from (world seed, ``KEYING_STREAM``, id):
    the same window is keyed the same way whatever else was drawn before it."""
    return np.random.default_rng(np.random.SeedSequence([int(world.sim.seed), KEYING_STREAM, int(window_id)]))


def draw_windows(config: Config, n: int, rng: np.random.Generator, spec: FeatureSpec, *, outage_prob: float = 0.0,
                 min_heard: int = 3, max_receivers: int = MAX_RECEIVERS, shuffle_slots: bool = True,
                 max_tries: int = 6, first_window_id: int = 0, oversampling: int = 1,
                 traffic: Traffic | str = "full",
                 start_ns_range: tuple[int, int] = WINDOW_START_NS_RANGE) -> Windows:
    """Up to ``n`` windows of ``config``'s simulated world with the transmitter uniform over its search area.

    Transmit power is uniform in the simulator's ``[tx_power_min_dbm, tx_power_max_dbm]``. Returns fewer than
    ``n`` only if ``max_tries`` rounds of candidates do not give ``n`` draws heard by ``min_heard`` receivers.
    Rendered windows are numbered from ``first_window_id`` (it keys their audio and noise streams): calls on
    the same world that must not share noise use disjoint ranges. ``oversampling`` > 1 renders through the
    daemon's channelizer (``models.train.render.render_windows``). ``traffic`` (a ``Traffic`` or a name of
    ``models.train.traffic.TRAFFIC``) keys each rendered window (module doc, step 5). Windows start at Unix times
    (ns) uniform in ``start_ns_range`` (``WINDOW_START_NS_RANGE``), which sets how far a drifting
    world's calibrations have moved (``SimulatedWorld.calibration_error_db_at``).
    """
    from models.train.render import render_windows  # the simulator's fast path
    from receivers.simulator import SimulatedWorld

    traffic = traffic_named(traffic)
    world = SimulatedWorld(config)
    n_rx = len(world.receiver_ids)
    if n_rx > max_receivers:
        raise ValueError(f"{n_rx} receivers, but the model takes at most {max_receivers}")
    sim, area = world.sim, world.area
    noise_channel_dbm = np.array([world.noise_dbm(r, DETECTION.channel_bandwidth_hz) for r in range(n_rx)])
    kept: list[Windows] = []
    got, next_id = 0, int(first_window_id)
    for _ in range(max_tries):
        if got >= n:
            break
        m = 2 * (n - got) + 2
        tx = np.stack([rng.uniform(area.east_min_m, area.east_max_m, m), rng.uniform(area.north_min_m, area.north_max_m, m)], -1)
        power = rng.uniform(sim.tx_power_min_dbm, sim.tx_power_max_dbm, m)
        present = rng.random((m, n_rx)) >= outage_prob
        # Cheap pre-screen on the true received power (the final test is the daemon's rule on the frames).
        snr = world.received_power_dbm(tx, power) - noise_channel_dbm
        plausible = ((snr > DETECTION.snr_db - 3.0) & present).sum(axis=1) >= min_heard
        present &= present.sum(axis=1, keepdims=True) >= min(3, n_rx)
        for b in np.flatnonzero(plausible & present.any(axis=1)):
            if got >= n:
                break
            rx_idx = np.flatnonzero(present[b])
            keying = traffic.draw(window_keying_rng(world, next_id), spec.window_s)
            start_ns = start_ns_range[0] + int(rng.integers(0, start_ns_range[1] - start_ns_range[0]))
            iq = render_windows(world, tx[b], power[b], start_ns,
                                sample_rate_hz=spec.sample_rate_hz, n_samples=spec.n_samples,
                                window_ids=[next_id], receivers=rx_idx, oversampling=oversampling,
                                keyings=[None if keying.kind == "full" else keying])
            next_id += 1
            frames = feature_module.mel_frames_dbm(iq[0], spec, world.calibration_db[rx_idx])
            active = DETECTION.frame_activity(frames, spec)
            heard = heard_mask(frames, spec, active)
            if heard.sum() < min_heard:
                continue
            slots = rng.permutation(max_receivers)[: len(rx_idx)] if shuffle_slots else np.arange(len(rx_idx))
            part = _padded(frames, world.rx_enu_m[rx_idx], world.rx_alt_m[rx_idx], tx[b], heard, slots, max_receivers, spec)
            part.active_frames[0] = active
            part.keyed_fraction[0] = keying.keyed_fraction(spec.window_s)
            kept.append(part)
            got += 1
    if not kept:
        return _empty(max_receivers, spec)
    return Windows.concat(kept)


def _padded(frames, rx_enu_m, rx_alt_m, tx_en_m, heard, slots, max_receivers: int, spec: FeatureSpec) -> Windows:
    feats = np.zeros((1, max_receivers, spec.n_mels, spec.n_frames), np.float32)
    enu = np.zeros((1, max_receivers, 3), np.float32)
    mask = np.zeros((1, max_receivers), np.float32)
    alt = np.zeros((1, max_receivers), np.float32)
    feats[0, slots] = frames
    enu[0, slots] = rx_enu_m / 1000.0
    mask[0, slots] = 1.0
    alt[0, slots] = rx_alt_m
    heard_slots = np.zeros((1, max_receivers), np.float32)
    heard_slots[0, slots] = heard
    return Windows(feats, enu, mask, (np.asarray(tx_en_m, np.float32) / 1000.0)[None], alt, np.zeros(1, np.int32),
                   heard_slots)


def _empty(max_receivers: int, spec: FeatureSpec) -> Windows:
    r = max_receivers
    return Windows(np.zeros((0, r, spec.n_mels, spec.n_frames), np.float32), np.zeros((0, r, 3), np.float32),
                   np.zeros((0, r), np.float32), np.zeros((0, 2), np.float32), np.zeros((0, r), np.float32),
                   np.zeros(0, np.int32), np.zeros((0, r), np.float32))


def physics_config_for(config: Config) -> PhysicsConfig:
    """The true propagation parameters of a simulated world, as a ``PhysicsConfig`` (what the oracle physics
    estimator of ``evaluate`` is told, and the site a model is given in training)."""
    from streamer.core.geodesy import network_geometry

    sim = config.simulator
    _, _, area = network_geometry(config)
    return PhysicsConfig(path_loss_exponent=sim.path_loss_exponent, ref_loss_db=sim.ref_loss_db,
                         shadowing_db=sim.shadowing_db, calibration_sigma_db=max(sim.calibration_sigma_db, 0.5),
                         tx_power_min_dbm=sim.tx_power_min_dbm, tx_power_max_dbm=sim.tx_power_max_dbm,
                         grid_step_km=max(area.width_m, area.height_m) / 1000.0 / 100.0, tx_alt_m=sim.tx_alt_m)


def world_config(seed: int, w: int, top_up: int = 0) -> tuple[Config, np.random.Generator]:
    """World ``w`` of ``seed`` (``top_up`` > 0: a fresh world drawn to top up a short chunk) and the generator
    its windows are then drawn with."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, w] + ([top_up] if top_up else [])))
    return random_network_config(rng, seed=int(rng.integers(1, 2**31))), rng


def window_worlds(data: Windows, seed: int, max_top_up: int = 64) -> list[Config]:
    """The world ``Config`` each window of ``generate(..., seed=seed)`` was drawn from.

    A window's world is ``data.world`` unless a top-up world took that index too, so each window is matched to
    the candidate world whose receiver heights include every present receiver's (heights are continuous
    random draws: one world's set matches no other's)."""
    configs: list[Config | None] = [None] * len(data)
    found = np.zeros(len(data), bool)
    for w in np.unique(data.world):
        idx = np.flatnonzero(data.world == w)
        for top_up in range(max_top_up + 1):
            config, _ = world_config(seed, int(w), top_up)
            alts = np.array([rx.alt_m for rx in config.receivers])
            for i in idx[~found[idx]]:
                present = data.rx_alt_m[i][data.rx_mask[i] > 0.5]
                if np.all(np.min(np.abs(present[:, None] - alts[None, :]), axis=1) < 1e-3):
                    configs[i], found[i] = config, True
            if found[idx].all():
                break
    if not found.all():
        raise ValueError(f"{int((~found).sum())} windows match no world of seed {seed} (world indices "
                         f"{sorted(set(data.world[~found].tolist()))[:5]}...)")
    return configs


def world_sites(data: Windows, seed: int) -> np.ndarray:
    """``site_propagation`` [N, 5] of each window of ``generate(..., seed=seed)``: its world's true propagation."""
    from streamer.estimators.contract import SITE_PROPAGATION_WIDTH, site_propagation

    worlds = window_worlds(data, seed)
    rows = {id(c): site_propagation(physics_config_for(c)) for c in worlds}
    return np.array([rows[id(c)] for c in worlds], np.float32).reshape(-1, SITE_PROPAGATION_WIDTH)


def world_areas(data: Windows, seed: int) -> np.ndarray:
    """``search_area_row`` [N, 5] of each window of ``generate(..., seed=seed)``: its world's search area (km, in
    the windows' ENU frame), where the transmitter was drawn and the physics estimator puts its prior."""
    from streamer.estimators.contract import SEARCH_AREA_WIDTH, network_search_area_row

    worlds = window_worlds(data, seed)
    rows = {id(c): network_search_area_row(c) for c in worlds}
    return np.array([rows[id(c)] for c in worlds], np.float32).reshape(-1, SEARCH_AREA_WIDTH)


def _world_job(args) -> Windows:
    seed, w, n, spec_dict, top_up, oversampling, traffic = args
    spec = FeatureSpec(**{k: v for k, v in spec_dict.items() if k != "n_frames"})
    config, rng = world_config(seed, w, top_up)
    outage = float(rng.uniform(0.0, 0.3)) if rng.random() < 0.6 else 0.0
    data = draw_windows(config, n, rng, spec, outage_prob=outage, oversampling=oversampling, traffic=traffic)
    data.world[:] = w
    return data


def generate(n_samples: int, *, seed: int, spec: FeatureSpec, windows_per_world: int = 64, workers: int = 1,
             first_world: int = 0, progress=None, oversampling: int = 1, traffic: Traffic | str = "full") -> Windows:
    """``n_samples`` draws from random networks (module doc); worlds ``first_world, first_world+1, ...`` of ``seed``,
    each window keyed as ``traffic`` (a ``Traffic`` or a name of ``models.train.traffic.TRAFFIC``) draws it."""
    traffic = traffic_named(traffic)
    n_worlds = max(1, math.ceil(n_samples / windows_per_world))
    jobs = [(seed, first_world + w, windows_per_world, spec.as_dict(), 0, oversampling, traffic) for w in range(n_worlds)]
    parts: list[Windows] = []
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for part in pool.map(_world_job, jobs):
                parts.append(part)
                if progress:
                    progress(sum(len(p) for p in parts))
    else:
        for job in jobs:
            parts.append(_world_job(job))
            if progress:
                progress(sum(len(p) for p in parts))
    data = Windows.concat(parts)
    top_up = 0
    while len(data) < n_samples:  # some worlds gave fewer draws: top up from fresh worlds keyed (seed, w, k)
        top_up += 1
        more = _world_job((seed, first_world + top_up % n_worlds, windows_per_world, spec.as_dict(), top_up, oversampling,
                           traffic))
        data = Windows.concat([data, more])
    return data.subset(slice(0, n_samples))


def _spec_tag(spec: FeatureSpec, oversampling: int = 1, traffic: Traffic | str = "full") -> str:
    """Cache key of what besides the seed determines a window: the feature spec, the rendering when it goes
    through the channelizer, the traffic (``Traffic.as_dict``) and the simulator's signal model
    (``receivers.simulator.SIGNAL_MODEL``), so a cache made by an earlier simulator or for other traffic is never
    read as this one's."""
    import hashlib
    import json

    from receivers.simulator import SIGNAL_MODEL

    key = {**spec.as_dict(), "render_oversampling": oversampling, "signal_model": SIGNAL_MODEL,
           "traffic": traffic_named(traffic).as_dict()}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


def generate_cached(n_samples: int, *, seed: int, spec: FeatureSpec, cache_dir=None, windows_per_world: int = 64,
                    worlds_per_chunk: int = 16, workers: int = 1, progress=None, oversampling: int = 1,
                    traffic: Traffic | str = "full") -> Windows:
    """``generate`` in chunks of ``worlds_per_chunk`` worlds, each saved under ``cache_dir`` (if given) and reused.

    A chunk's file name holds everything that determines it (seed, spec and traffic hash, worlds, windows per world), so
    a cached chunk is bit-for-bit what ``generate`` would make again. Features are cached as float16
    (0.03 dB resolution at -100 dBm) and returned as float32.
    """
    from pathlib import Path

    chunk = worlds_per_chunk * windows_per_world
    parts: list[Windows] = []
    done = 0
    first_world = 0
    while done < n_samples:
        path = None
        if cache_dir is not None:
            tag = _spec_tag(spec, oversampling, traffic)
            path = Path(cache_dir) / f"sim-{seed}-{tag}-w{first_world}+{worlds_per_chunk}x{windows_per_world}.npz"
        if path is not None and path.is_file():
            part = Windows.load(path)
        else:
            part = generate(chunk, seed=seed, spec=spec, windows_per_world=windows_per_world, workers=workers,
                            first_world=first_world, oversampling=oversampling, traffic=traffic)
            part.features_dbm = part.features_dbm.astype(np.float16)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp.npz")
                part.save(tmp)
                tmp.replace(path)
        part.features_dbm = part.features_dbm.astype(np.float32)
        parts.append(part)
        done += len(part)
        first_world += worlds_per_chunk
        if progress:
            progress(done)
    return Windows.concat(parts).subset(slice(0, n_samples))
