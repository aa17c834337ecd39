"""``heimdall calibrate``: fitted corrections recover the simulator's hidden calibration errors, and the config
is rewritten with its comments, only the calibrated values changed."""

from __future__ import annotations

import datetime
import json
import tomllib

import numpy as np
import pytest

from receivers.simulator import SimulatedWorld
from streamer.tools.calibrate import calibrate, link_geometry
from streamer.tools.observations import read_observations
from streamer.cli import main
from streamer.config import load
from streamer.core.propagation import log_distance_path_loss_db
from tests.helpers.calibration import observations, write_config, write_csv

N_TX = 300
SIM_EXPONENT = 3.4  # the simulated world's exponent in the --fit-exponent test (estimator.physics keeps 3.0)


@pytest.fixture(scope="module")
def world():
    return SimulatedWorld(load())


@pytest.fixture(scope="module")
def default_obs(world):
    return observations(world, N_TX, seed=7)


def comments(text: str) -> list[str]:
    return [line[line.index("#"):] for line in text.splitlines() if "#" in line]


def test_fitted_corrections_recover_the_hidden_calibration_errors(tmp_path, world, default_obs, capsys):
    cfg = write_config(tmp_path / "site.toml")
    obs = write_csv(tmp_path / "obs.csv", default_obs, world.receiver_ids)
    out = tmp_path / "calibrated.toml"
    assert main(["calibrate", "-c", str(cfg), str(obs), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    hidden = dict(zip(world.receiver_ids, world.calibration_error_db))
    written = load(out)
    for rx in written.receivers:
        r = report["receivers"][rx.id]
        assert r["n"] == N_TX and 0.0 < r["offset_se_db"] < 1.0
        print(f"{rx.id}: recovered {-r['offset_db']:+.2f} hidden {hidden[rx.id]:+.2f} se {r['offset_se_db']:.2f}")
        assert abs(-r["offset_db"] - hidden[rx.id]) < 4 * r["offset_se_db"]
        assert rx.calibration_db == pytest.approx(-r["offset_db"], abs=0.006)  # old calibration_db was 0
    assert report["written"] == str(out) and not report["relative"]
    assert 5.0 < report["sigma_db"] < 7.0  # the simulator's 6 dB shadowing


def test_written_config_keeps_comments_and_changes_only_calibration(tmp_path, world, default_obs, capsys):
    cfg = write_config(tmp_path / "site.toml")
    obs = write_csv(tmp_path / "obs.csv", default_obs, world.receiver_ids)
    before = cfg.read_text()
    assert main(["calibrate", "-c", str(cfg), str(obs), "--in-place"]) == 0
    after = cfg.read_text()
    assert comments(after) == comments(before) and "# bench receiver" in after
    old, new = tomllib.loads(before), tomllib.loads(after)
    cal = [rx.pop("calibration_db") for rx in new["receivers"]]
    when = {rx.pop("calibrated_at") for rx in new["receivers"]}  # calibration age: when (default today, UTC)
    assert new == old and all(isinstance(v, float) for v in cal) and sum(v != 0.0 for v in cal) >= 5
    assert when == {datetime.datetime.now(datetime.UTC).date().isoformat()}
    assert f"wrote {cfg}" in capsys.readouterr().out


def test_without_out_or_in_place_only_the_report_is_printed(tmp_path, world, default_obs, capsys):
    cfg = write_config(tmp_path / "site.toml")
    before = cfg.read_text()
    assert main(["calibrate", "-c", str(cfg), str(write_csv(tmp_path / "o.csv", default_obs, world.receiver_ids))]) == 0
    out = capsys.readouterr().out
    assert cfg.read_text() == before and "nothing written" in out
    assert "giaveno" in out and "path-loss exponent: 3.000 (estimator.physics, fixed)" in out


def test_fit_exponent_recovers_the_simulated_exponent(tmp_path, capsys):
    cfg = write_config(tmp_path / "site.toml", f"path_loss_exponent = {SIM_EXPONENT}\n")
    world = SimulatedWorld(load(cfg))
    obs = write_csv(tmp_path / "obs.csv", observations(world, N_TX, seed=8), world.receiver_ids)
    out = tmp_path / "calibrated.toml"
    assert main(["calibrate", "-c", str(cfg), str(obs), "--fit-exponent", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    n, se = report["path_loss_exponent"], report["path_loss_exponent_se"]
    print(f"exponent: fitted {n:.3f} +- {se:.3f}, simulated {SIM_EXPONENT}")
    assert 0.0 < se < 0.1 and abs(n - SIM_EXPONENT) < 4 * se
    written = load(out)
    assert written.estimator.physics.path_loss_exponent == pytest.approx(n, abs=5e-4)
    assert written.estimator.kind == load(cfg).estimator.kind
    for rx, err in zip(written.receivers, world.calibration_error_db):
        assert abs(rx.calibration_db - err) < 4 * report["receivers"][rx.id]["offset_se_db"] + 0.005


def test_without_transmit_power_offsets_are_relative_with_mean_zero(tmp_path, world):
    obs_path = write_csv(tmp_path / "obs.csv", observations(world, N_TX, seed=9, tx_power_dbm=40.0), world.receiver_ids,
                         with_power=False)
    cal = calibrate(load(), read_observations(obs_path, world.receiver_ids))
    assert cal.fit.relative and abs(cal.fit.offsets_db.mean()) < 1e-6
    assert cal.fit.level_db + load().estimator.physics.ref_loss_db == pytest.approx(40.0, abs=1.0)
    hidden = world.calibration_error_db - world.calibration_error_db.mean()
    assert np.all(np.abs(-cal.fit.offsets_db - hidden) < 4 * cal.fit.offset_se_db)


def test_a_receiver_with_fewer_than_three_observations_is_left_unchanged(tmp_path, world, default_obs, capsys):
    cfg = write_config(tmp_path / "site.toml")
    cfg.write_text(cfg.read_text().replace('id = "milano"\n', 'id = "milano"\ncalibration_db = 1.25\n'))
    blank = {(i, "milano") for i in range(2, N_TX)} | {(i, "torino") for i in range(0, N_TX, 3)}
    obs = write_csv(tmp_path / "obs.csv", default_obs, world.receiver_ids, blank=blank)
    out = tmp_path / "calibrated.toml"
    assert main(["calibrate", "-c", str(cfg), str(obs), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "error: receiver 'milano': 2 observation(s), need at least 3; its calibration_db is left unchanged" in captured.err
    written = {rx.id: rx for rx in load(out).receivers}
    assert written["milano"].calibration_db == 1.25
    assert written["torino"].calibration_db != 0.0 and "torino" in captured.out


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace("giaveno", "nowhere", 1), "obs.csv:2: column 5 (nowhere): unknown receiver id 'nowhere'"),
        (lambda t: t.replace("lat,lon,", "lat,lat,", 1), "obs.csv:2: column 2 (lat): duplicate column"),
        (lambda t: _cell(t, 3, 5, "nan"), "obs.csv:3: column 5 (giaveno): 'nan' is not a finite number"),
        (lambda t: _cell(t, 4, 6, "strong"), "obs.csv:4: column 6 (montanaro): expected a number, got 'strong'"),
        (lambda t: _cell(t, 3, 1, ""), "obs.csv:3: column 1 (lat): empty; lat is required on every row"),
        (lambda t: _cell(t, 3, 2, "191.0"), "obs.csv:3: column 2 (lon): 191.0 is outside [-180, 180] degrees"),
        (lambda t: _cell(t, 3, 11, "-80,-81"), "obs.csv:3: 12 fields, the header has 11"),
        (lambda t: t.replace("lat,lon", "latitude,lon", 1), "obs.csv:2: column 1 (latitude): unknown receiver id"),
        (lambda t: "\n".join(t.split("\n")[:2]), "obs.csv: no observation rows after the header (line 2)"),
    ],
)
def test_malformed_observations_are_refused_with_file_line_and_column(tmp_path, world, default_obs, capsys, edit, message):
    cfg = write_config(tmp_path / "site.toml")
    small = {k: v[:5] for k, v in default_obs.items()}
    obs = tmp_path / "obs.csv"
    obs.write_text(edit(write_csv(obs, small, world.receiver_ids).read_text()))
    assert main(["calibrate", "-c", str(cfg), str(obs), "--in-place"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("heimdall: error: ") and message in err, err


def test_missing_lat_column_is_named(tmp_path, world, default_obs, capsys):
    cfg = write_config(tmp_path / "site.toml")
    obs = tmp_path / "obs.csv"
    text = write_csv(obs, {k: v[:4] for k, v in default_obs.items()}, world.receiver_ids).read_text()
    obs.write_text("\n".join(",".join(line.split(",")[1:]) if not line.startswith("#") else line for line in text.splitlines()))
    assert main(["calibrate", "-c", str(cfg), str(obs)]) == 2
    assert "obs.csv:2: required column 'lat' is missing" in capsys.readouterr().err


def test_help_documents_the_observations_format(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["calibrate", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "tx_power_dbm" in out and "empty cell = not heard" in out and "--fit-exponent" in out


def _cell(text: str, line_no: int, col: int, value: str) -> str:
    lines = text.split("\n")
    cells = lines[line_no - 1].split(",")
    cells[col - 1] = value
    lines[line_no - 1] = ",".join(cells)
    return "\n".join(lines)


def test_fit_sigma_writes_the_residual_sigma_as_the_shadowing(tmp_path, world, default_obs, capsys):
    cfg = write_config(tmp_path / "site.toml")
    obs = write_csv(tmp_path / "obs.csv", default_obs, world.receiver_ids)
    out = tmp_path / "calibrated.toml"
    assert main(["calibrate", "-c", str(cfg), str(obs), "--fit-exponent", "--fit-sigma", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sigma_fitted"] and 5.0 < report["sigma_db"] < 7.0  # the simulator's 6 dB shadowing
    physics = load(out).estimator.physics
    assert physics.shadowing_db == pytest.approx(report["sigma_db"], abs=0.005)
    assert physics.path_loss_exponent == pytest.approx(report["path_loss_exponent"], abs=5e-4)
    assert main(["calibrate", "-c", str(cfg), str(obs), "--fit-sigma"]) == 0
    assert "(written as estimator.physics.shadowing_db)" in capsys.readouterr().out


def test_fit_sigma_from_readings_that_fit_exactly_is_refused(tmp_path, world, capsys):
    cfg = write_config(tmp_path / "site.toml")
    config = load(cfg)
    exact = observations(world, N_TX, seed=10)
    first = write_csv(tmp_path / "first.csv", exact, world.receiver_ids)
    _, distance_m, _ = link_geometry(config, read_observations(first, world.receiver_ids))
    # readings exactly on the log-distance law (to the CSV's 0.001 dB): nothing left to measure shadowing with
    exact["measured"] = exact["tx_power_dbm"][:, None] - log_distance_path_loss_db(
        distance_m, config.estimator.physics.ref_loss_db, config.estimator.physics.path_loss_exponent)
    obs = write_csv(tmp_path / "obs.csv", exact, world.receiver_ids)
    assert main(["calibrate", "-c", str(cfg), str(obs), "--fit-sigma"]) == 2
    assert "cannot fit the shadowing sigma" in capsys.readouterr().err
