"""``heimdall calibrate`` and calibration age: it records when a calibration was made, and ``--drift-survey`` fits
the drift rate from repeated surveys of a network whose offsets walk at a known rate."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from receivers.simulator import SimulatedWorld
from streamer.cli import main
from streamer.config import load
from tests.helpers.calibration import observations, write_config, write_csv

N_TX = 200
SURVEY_DAYS = (0, 9, 23, 41, 64, 92, 125, 163, 206, 254)
WALK_DB_PER_SQRT_DAY = 0.4


@pytest.fixture(scope="module")
def world():
    return SimulatedWorld(load())


def test_calibrate_writes_and_prints_calibrated_at(tmp_path, world, capsys):
    cfg = write_config(tmp_path / "site.toml")
    obs = write_csv(tmp_path / "obs.csv", observations(world, N_TX, seed=7), world.receiver_ids)
    out = tmp_path / "calibrated.toml"
    assert main(["calibrate", "-c", str(cfg), str(obs), "--calibrated-at", "2026-03-01T09:30:00Z", "--out", str(out)]) == 0
    assert "calibrated_at = '2026-03-01T09:30:00Z'" in capsys.readouterr().out
    assert {rx.calibrated_at for rx in load(out).receivers} == {"2026-03-01T09:30:00Z"}


def test_calibrated_at_defaults_to_today_and_a_bad_one_is_refused(tmp_path, world, capsys):
    import datetime as dt

    cfg = write_config(tmp_path / "site.toml")
    obs = write_csv(tmp_path / "obs.csv", observations(world, N_TX, seed=7), world.receiver_ids)
    assert main(["calibrate", "-c", str(cfg), str(obs), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["calibrated_at"] == dt.datetime.now(dt.UTC).date().isoformat()
    assert main(["calibrate", "-c", str(cfg), str(obs), "--calibrated-at", "last tuesday"]) == 2
    assert "--calibrated-at: expected an ISO-8601 date (2026-03-01)" in capsys.readouterr().err


def drifting_surveys(tmp_path, world, seed: int) -> list[str]:
    """Surveys on SURVEY_DAYS of a network whose receivers' offsets walk at WALK_DB_PER_SQRT_DAY (readings with the
    same calibration_db), as ``--drift-survey DATE=FILE`` arguments."""
    rng = np.random.default_rng(seed)
    n_rx = len(world.receiver_ids)
    steps = rng.normal(0.0, WALK_DB_PER_SQRT_DAY, (len(SURVEY_DAYS), n_rx)) * np.sqrt(np.diff(np.r_[0, SURVEY_DAYS]))[:, None]
    walk = np.cumsum(steps, axis=0)
    args = []
    for k, day in enumerate(SURVEY_DAYS):
        obs = observations(world, N_TX, seed=100 + k)
        obs["measured"] = obs["measured"] + walk[k][None, :]
        date = (np.datetime64("2026-01-05") + np.timedelta64(day, "D")).astype(str)
        args += ["--drift-survey", f"{date}={write_csv(tmp_path / f'survey{k}.csv', obs, world.receiver_ids)}"]
    return args


def test_drift_surveys_recover_a_known_random_walk(tmp_path, world, capsys):
    cfg = write_config(tmp_path / "site.toml")
    assert main(["calibrate", "-c", str(cfg), *drifting_surveys(tmp_path, world, seed=3), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    q, se = report["calibration_drift_db_per_sqrt_day"], report["calibration_drift_se"]
    print(f"fitted {q:.3f} +- {se:.3f} dB/sqrt(day), true {WALK_DB_PER_SQRT_DAY}")
    assert report["receivers"] == len(world.receiver_ids) and report["changes"] == len(world.receiver_ids) * (len(SURVEY_DAYS) - 1)
    assert 0 < se < 0.3 * WALK_DB_PER_SQRT_DAY
    assert abs(q - WALK_DB_PER_SQRT_DAY) < 3 * se
    assert report["seasonal_fitted"] and report["calibration_seasonal_db"] < 3 * report["calibration_seasonal_se"] + 0.5


def test_drift_report_prints_the_lines_to_paste(tmp_path, world, capsys):
    cfg = write_config(tmp_path / "site.toml")
    assert main(["calibrate", "-c", str(cfg), *drifting_surveys(tmp_path, world, seed=4)[:6]]) == 0
    out = capsys.readouterr().out
    assert "[estimator.physics]\ncalibration_drift_db_per_sqrt_day = " in out and "calibration_seasonal_db = " in out
    assert "separations 9, 14, 23 days" in out
    q = float(out.split("calibration_drift_db_per_sqrt_day = ")[1].split()[0])
    assert math.isfinite(q) and q > 0


@pytest.mark.parametrize("args, message", [
    (["--drift-survey", "2026-01-01=a.csv"], "--drift-survey: given 1 time(s)"),
    (["--drift-survey", "a.csv", "--drift-survey", "b.csv"], "--drift-survey 'a.csv': expected DATE=FILE"),
    (["--drift-survey", "2026-01-xx=a.csv", "--drift-survey", "2026-02-01=b.csv"],
     "--drift-survey '2026-01-xx=a.csv': expected an ISO-8601 date"),
])
def test_bad_drift_surveys_are_refused_with_what_was_expected(tmp_path, capsys, args, message):
    cfg = write_config(tmp_path / "site.toml")
    assert main(["calibrate", "-c", str(cfg), *args]) == 2
    assert message in capsys.readouterr().err
