"""SigMF replay with ``realtime = false`` through `heimdall run`: three receivers replayed as fast as the
pipeline takes them must stay in step (streamer.daemon.pacing), so every window is cut with every receiver's
data, nothing is dropped ``late`` or ``overwrite``, and the sample accounting is exact.

Needs ``sigmf``, a base dependency (pip install -e .).
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

sigmf = pytest.importorskip("sigmf", reason="needs the sigmf package, a base dependency: pip install -e .")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from receivers.sigmf_file import format_datetime_ns  # noqa: E402
from receivers.simulator import SimulatedReceiver, SimulatedWorld  # noqa: E402
from streamer.config import from_dict  # noqa: E402
from tests.helpers.daemon import default_config, running_daemon  # noqa: E402

RATE_HZ = 48_000.0
#: On the 0.5 s window grid, while the seed-1 simulated transmitter is keyed (about 2 s to 9 s after
#: 1_700_000_000) and heard by these three receivers.
START_NS = 1_700_000_003_500_000_000
SECONDS = 5.0
RECEIVERS = ("giaveno", "montanaro", "torino")
TIMEOUT_S = 90.0


def write_network_recordings(directory: Path) -> list[dict]:
    """Simulate RECEIVERS for SECONDS from START_NS and write each as a SigMF recording with ``sigmf``;
    returns their ``[[receivers]]`` tables, replayed with ``realtime = false``."""
    cfg = default_config()
    cfg["receivers"] = [rx for rx in cfg["receivers"] if rx["id"] in RECEIVERS]
    for rx in cfg["receivers"]:
        rx.update(realtime=False, sample_rate_hz=RATE_HZ, center_freq_hz=145.49e6, start_ns=START_NS)
    sim = from_dict(cfg)
    world = SimulatedWorld(sim)
    n = int(SECONDS * RATE_HZ)
    tables = []
    for rx in sim.receivers:
        live = SimulatedReceiver(rx.id, world, rx.options)
        data_path = directory / f"{rx.id}{sigmf.SIGMF_DATASET_EXT}"
        live.read(0, n).astype(np.complex64).tofile(data_path)
        meta = sigmf.SigMFFile(data_file=data_path, global_info={
            sigmf.DATATYPE_KEY: "cf32_le", sigmf.SAMPLE_RATE_KEY: RATE_HZ, sigmf.DESCRIPTION_KEY: rx.id})
        meta.add_capture(0, metadata={sigmf.FREQUENCY_KEY: 145.49e6, sigmf.GLOBAL_INDEX_KEY: 0,
                                      sigmf.DATETIME_KEY: format_datetime_ns(live.block_t0_ns(0))})
        meta.tofile(directory / rx.id)
        tables.append({"id": rx.id, "kind": "sigmf", "lat": rx.lat, "lon": rx.lon, "alt_m": rx.alt_m,
                       "calibration_db": rx.calibration_db, "path": str(directory / rx.id), "realtime": False})
    return tables


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples, name: str, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def test_receivers_replayed_as_fast_as_possible_stay_in_step_and_lose_no_window(tmp_path):
    receivers = write_network_recordings(tmp_path)
    n = int(SECONDS * RATE_HZ)
    windows_expected = int(SECONDS / 0.5)  # the recording lies on the window grid
    overrides = {"receivers": receivers, "pipeline": {"min_receivers": 3}, "output": {"status_interval_s": 0.5}}
    with running_daemon(tmp_path, overrides=overrides) as d:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            m = scrape(d.metrics_url)
            # Done once every sample is in and the tail window (cut when the ended sources go offline) is out.
            if (all(total(m, "heimdall_samples_received_total", receiver=r) == n for r in RECEIVERS)
                    and total(m, "heimdall_windows_total") >= windows_expected):
                break
            assert time.monotonic() < deadline, f"replay did not finish in {TIMEOUT_S} s; stderr:\n{d.stderr[-3000:]}"
            time.sleep(0.2)
    dropped = {(dict(lab)["receiver"], dict(lab)["reason"]): v for (name, lab), v in m.items()
               if name == "heimdall_samples_dropped_total" and v}
    masked = {(dict(lab)["receiver"], dict(lab)["reason"]): v for (name, lab), v in m.items()
              if name == "heimdall_window_masked_receivers_total" and v}
    outcomes = {dict(lab)["outcome"]: v for (name, lab), v in m.items() if name == "heimdall_windows_total" and v}
    print("windows", outcomes, "masked", masked, "dropped", dropped)
    assert not [k for k in dropped if k[1] in ("late", "overwrite", "gap", "queue_full")], dropped
    # Every window but the last had all three receivers' data and was localized. The last one is complete
    # in the files but not out of the channelizer (its filter holds the final samples back), so it is cut
    # only when the ended sources go offline.
    assert outcomes == {"localized": windows_expected - 1, "too_few_receivers": 1}, outcomes
    assert masked == {(r, "offline"): 1 for r in RECEIVERS}, masked
    for r in RECEIVERS:
        residual = (total(m, "heimdall_samples_received_total", receiver=r)
                    - total(m, "heimdall_samples_used_total", receiver=r)
                    - total(m, "heimdall_samples_buffered", receiver=r)
                    - total(m, "heimdall_samples_dropped_total", receiver=r, stage="pipeline"))
        assert residual == 0, (r, residual)
        assert total(m, "heimdall_samples_used_total", receiver=r) == (windows_expected - 1) * 0.5 * RATE_HZ
