"""Calibration test data from ``receivers.simulator``: transmissions at known positions as the daemon would
read them, written as an observations CSV, and a copy of the default config for ``heimdall calibrate`` to rewrite."""

from __future__ import annotations

import numpy as np

from receivers.simulator import SimulatedWorld
from streamer.config import default_config_path
from streamer.core.geodesy import enu_to_geodetic, geodetic_to_enu_m


def observations(world: SimulatedWorld, n: int, seed: int, *, tx_power_dbm: float | None = None) -> dict:
    """``n`` transmissions uniform over the world's area, read as the daemon would (hidden offsets included)."""
    rng = np.random.default_rng(seed)
    area = world.area
    lat, lon, _ = enu_to_geodetic(rng.uniform(area.east_min_m, area.east_max_m, n),
                                  rng.uniform(area.north_min_m, area.north_max_m, n), 0.0, world.origin)
    lat, lon = np.round(lat, 8), np.round(lon, 8)
    alt_m = np.full(n, world.sim.tx_alt_m)
    tx_en_m = geodetic_to_enu_m(lat, lon, alt_m, world.origin)[:, :2]
    power = (np.full(n, tx_power_dbm) if tx_power_dbm is not None
             else np.round(rng.uniform(world.sim.tx_power_min_dbm, world.sim.tx_power_max_dbm, n), 2))
    measured = world.received_power_dbm(tx_en_m, power) + world.measured_offset_db()
    return {"lat": lat, "lon": lon, "alt_m": alt_m, "tx_power_dbm": power, "measured": measured}


def write_csv(path, obs: dict, ids, *, with_power: bool = True, blank=()):
    """The observations file; ``blank`` = (row, receiver id) cells left empty (not heard)."""
    head = ["lat", "lon", "alt_m"] + (["tx_power_dbm"] if with_power else []) + list(ids)
    lines = ["# transmissions at known positions (test data from receivers.simulator)", ",".join(head)]
    for i in range(len(obs["lat"])):
        cells = [repr(float(obs["lat"][i])), repr(float(obs["lon"][i])), f"{obs['alt_m'][i]:.1f}"]
        cells += [f"{obs['tx_power_dbm'][i]:.2f}"] if with_power else []
        cells += ["" if (i, rx_id) in blank else f"{obs['measured'][i, r]:.3f}" for r, rx_id in enumerate(ids)]
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_config(path, extra_simulator: str = ""):
    text = default_config_path().read_text()
    text = text.replace("[simulator]\nseed = 1\n", f"[simulator]\nseed = 1\n{extra_simulator}")
    path.write_text(text.replace('kind = "simulator"\n', 'kind = "simulator"  # bench receiver\n', 1))
    return path
