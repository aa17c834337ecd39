"""Survey maps (streamer.estimators.survey): ``heimdall calibrate --survey-map`` krige the simulated network's correlated
shadowing, a config naming the map builds its estimators, the physics estimator localizes held-out transmissions
better with the map, and a map that does not fit the config is refused by file and key."""

from __future__ import annotations

import contextlib
import dataclasses
import io

import numpy as np
import pytest

from receivers.simulator import SimulatedWorld
from streamer.cli import main
from streamer.config import load
from streamer.core.errors import ConfigError
from streamer.estimators.build import build_estimators
from streamer.core.geodesy import geodetic_to_enu_m
from streamer.estimators.physics import PhysicsGrid
from streamer.estimators.survey import load_map
from tests.helpers.calibration import observations, write_config, write_csv

N_SURVEY = 600   # transmissions at known positions in the survey
N_HELD_OUT = 60  # other positions, localized with and without the map
KEY = "estimator.physics.shadowing_map"


#: The simulated site's shadowing decorrelates over this distance (km; the default 5 km would need a far denser
#: survey over the default network's ~200 km area for the map to know much between surveyed positions).
SHADOWING_CORR_KM = 20.0


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The uncalibrated site config (default network, shadowing correlated over ``SHADOWING_CORR_KM``)."""
    return write_config(tmp_path_factory.mktemp("site") / "site.toml", f"shadowing_corr_km = {SHADOWING_CORR_KM}\n")


@pytest.fixture(scope="module")
def world(site):
    return SimulatedWorld(load(site))


@pytest.fixture(scope="module")
def surveyed(tmp_path_factory, site, world):
    """(calibrated config path, map path, printed report) of one calibrate --survey-map run."""
    tmp = tmp_path_factory.mktemp("survey")
    cfg = site
    obs = write_csv(tmp / "obs.csv", observations(world, N_SURVEY, seed=11), world.receiver_ids)
    out, survey = tmp / "calibrated.toml", tmp / "site-survey.npz"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["calibrate", "-c", str(cfg), str(obs), "--out", str(out), "--survey-map", str(survey)]) == 0
    return out, survey, printed.getvalue()


def with_map(path, value: str) -> str:
    text = path.read_text()
    return text.replace("[estimator]\n", f'[estimator]\nphysics.shadowing_map = "{value}"\n', 1)


def test_calibrate_writes_a_map_of_every_receiver(surveyed, world):
    _, survey, printed = surveyed
    assert survey.is_file()
    assert f"{len(world.receiver_ids)} of {len(world.receiver_ids)} receivers mapped" in printed
    for rx_id in world.receiver_ids:
        assert f"{rx_id}" in printed and f"{N_SURVEY} links  mapped" in printed
    with np.load(survey) as m:
        assert list(m["receiver_ids"]) == list(world.receiver_ids)
        assert m["mean_db"].shape == (len(world.receiver_ids), len(m["east_m"]), len(m["north_m"]))
        assert np.all(m["sd_db"] > 0) and m["mapped"].all()


def test_a_receiver_with_too_few_links_gets_no_map(tmp_path, site, world):
    obs = observations(world, 200, seed=5)
    obs["measured"][10:, 0] = np.nan  # the first receiver hears 10 of them
    blank = {(i, world.receiver_ids[0]) for i in range(10, 200)}
    csv = write_csv(tmp_path / "obs.csv", obs, world.receiver_ids, blank=blank)
    cfg = site
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["calibrate", "-c", str(cfg), str(csv), "--survey-map", str(tmp_path / "m.npz")]) == 0
    assert f"{world.receiver_ids[0]}" in printed.getvalue()
    assert "10 links  no map (fewer than 30 links): mean 0, sd 6.00 dB" in printed.getvalue()
    with np.load(tmp_path / "m.npz") as m:
        assert not m["mapped"][0] and m["mapped"][1:].all()
        assert np.all(m["mean_db"][0] == 0.0) and np.all(m["sd_db"][0] == 6.0)


def test_a_config_naming_the_map_builds_its_estimators(surveyed, tmp_path):
    calibrated, survey, _ = surveyed
    cfg = tmp_path / "with-map.toml"
    cfg.write_text(with_map(calibrated, str(survey)))
    config = load(cfg)
    assert config.estimator.physics.shadowing_map == str(survey)
    names = [e.name for e in build_estimators(dataclasses.replace(config, estimator=dataclasses.replace(
        config.estimator, kind="physics")))]
    assert names == ["physics"]


def test_a_relative_map_path_resolves_against_the_config_folder(surveyed):
    calibrated, survey, _ = surveyed
    cfg = survey.parent / "relative.toml"
    cfg.write_text(with_map(calibrated, survey.name))
    assert load(cfg).estimator.physics.shadowing_map == str(survey)


def held_out_errors_m(world, config, shadowing_map, site) -> np.ndarray:
    """Localization errors (m) of ``N_HELD_OUT`` transmissions at fresh positions, read with ``config``'s calibration."""
    est = PhysicsGrid.from_config(config, shadowing_map=shadowing_map)
    obs = observations(world, N_HELD_OUT, seed=99)
    tx_en_m = geodetic_to_enu_m(obs["lat"], obs["lon"], obs["alt_m"], world.origin)[:, :2]
    # The test's observations read with the uncalibrated config; the calibrated one adds (new - old).
    shift = np.array([rx.calibration_db for rx in config.receivers]) - np.array([rx.calibration_db for rx in load(site).receivers])
    on = np.ones(len(config.receivers), bool)
    errors = []
    for i in range(N_HELD_OUT):
        res = est.estimate(obs["measured"][i] + shift, heard=on, present=on, detection_level_dbm=np.full(len(on), -200.0))
        errors.append(float(np.hypot(*(np.asarray(res.position_en_m) - tx_en_m[i]))))
    return np.array(errors)


def test_the_map_improves_held_out_localization(surveyed, world, site):
    calibrated, survey, _ = surveyed
    config = load(calibrated)
    config = dataclasses.replace(config, estimator=dataclasses.replace(
        config.estimator, physics=dataclasses.replace(config.estimator.physics, shadowing_map=str(survey))))
    without = held_out_errors_m(world, config, None, site)
    mapped = held_out_errors_m(world, config, load_map(config), site)
    print(f"held-out median error: without map {np.median(without) / 1e3:.1f} km, with map {np.median(mapped) / 1e3:.1f} km "
          f"(mean {np.mean(without) / 1e3:.1f} vs {np.mean(mapped) / 1e3:.1f} km, {N_HELD_OUT} transmissions)")
    assert np.median(mapped) < 0.8 * np.median(without)
    assert np.mean(mapped) < 0.8 * np.mean(without)


def bad_map_config(tmp_path, calibrated, survey, edit) -> str:
    """Path of a config naming a copy of ``survey`` changed by ``edit(dict of arrays)``."""
    with np.load(survey) as m:
        arrays = {k: m[k] for k in m.files}
    edit(arrays)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    cfg = tmp_path / "bad.toml"
    cfg.write_text(with_map(calibrated, str(bad)))
    return str(cfg)


def _drop(arrays, key):
    del arrays[key]


def _crop_east(arrays, cells: int = 5):
    """The grid, means and sds without their ``cells`` westmost columns: consistent, but short of the area."""
    arrays["east_m"] = arrays["east_m"][cells:]
    for key in ("mean_db", "sd_db"):
        arrays[key] = arrays[key][:, cells:]


@pytest.mark.parametrize("edit, problem", [
    (lambda a: a.__setitem__("receiver_ids", np.array(["x"] + list(a["receiver_ids"][1:]))), "maps receivers"),
    (lambda a: a.__setitem__("east_m", a["east_m"][5:]), "mean_db"),
    (_crop_east, "does not cover the search area"),
    (lambda a: a.__setitem__("path_loss_exponent", np.array(3.5)), "path_loss_exponent = 3.5"),
    (lambda a: a.__setitem__("calibration_db", a["calibration_db"] + 1.0), "calibration_db"),
    (lambda a: a.__setitem__("lat", a["lat"] + 0.01), "was mapped at"),
    (lambda a: _drop(a, "sd_db"), "is not a survey map"),
    (lambda a: a["mean_db"].__setitem__((0, 0, 0), np.nan), "mean_db must be finite and sd_db > 0"),
    (lambda a: a.__setitem__("ref_loss_db", a["ref_loss_db"] + 1.0), "estimator.physics.ref_loss_db"),
    (lambda a: a.__setitem__("origin", a["origin"] + np.array([0.01, 0.0, 0.0])), "ENU origin"),
])
def test_a_map_that_does_not_fit_the_config_is_refused_by_file_and_key(tmp_path, surveyed, edit, problem):
    calibrated, survey, _ = surveyed
    cfg = bad_map_config(tmp_path, calibrated, survey, edit)
    with pytest.raises(ConfigError) as err:
        build_estimators(load(cfg))
    assert f"{cfg}: {KEY}" in str(err.value) and problem in str(err.value) and "bad.npz" in str(err.value)


@pytest.mark.parametrize("content", [None, b"not a zip file"])
def test_a_missing_or_unreadable_map_is_refused(tmp_path, surveyed, content):
    calibrated, _, _ = surveyed
    bad = tmp_path / "survey.npz"
    if content is not None:
        bad.write_bytes(content)
    cfg = tmp_path / "site.toml"
    cfg.write_text(with_map(calibrated, "survey.npz"))
    with pytest.raises(ConfigError, match=("no such file" if content is None else "cannot read")) as err:
        build_estimators(load(cfg))
    assert f"{cfg}: {KEY}" in str(err.value) and str(bad) in str(err.value)


def test_the_physics_posterior_names_the_map_by_its_sha256(surveyed, tmp_path):
    import hashlib

    calibrated, survey, _ = surveyed
    cfg = tmp_path / "physics.toml"
    cfg.write_text(with_map(calibrated, str(survey)).replace('kind = "onnx"', 'kind = "physics"', 1))
    (physics,) = build_estimators(load(cfg))
    assert physics.info["sha256"] == hashlib.sha256(survey.read_bytes()).hexdigest()


def test_a_map_made_with_a_fitted_exponent_matches_the_config_written_with_it(tmp_path, site, world):
    obs = write_csv(tmp_path / "obs.csv", observations(world, 200, seed=3), world.receiver_ids)
    out, survey = tmp_path / "calibrated.toml", tmp_path / "m.npz"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["calibrate", "-c", str(site), str(obs), "--fit-exponent", "--out", str(out),
                     "--survey-map", str(survey)]) == 0
    text = out.read_text()
    assert "[estimator.physics]\n" in text
    out.write_text(text.replace("[estimator.physics]\n", f'[estimator.physics]\nshadowing_map = "{survey}"\n', 1))
    config = load(out)
    with np.load(survey) as m:
        assert float(m["path_loss_exponent"]) == config.estimator.physics.path_loss_exponent != 3.0
    mean, sd = load_map(config)(np.zeros((1, 2)))
    assert mean.shape == sd.shape == (1, len(world.receiver_ids))


def test_calibrate_says_why_it_cannot_make_or_write_a_map(tmp_path, site, world):
    few = write_csv(tmp_path / "few.csv", observations(world, 20, seed=5), world.receiver_ids)  # < 30 links each
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["calibrate", "-c", str(site), str(few), "--survey-map", str(tmp_path / "m.npz")]) == 2
    assert f"{few}: cannot make a survey map: no receiver has 30 or more links" in err.getvalue()
    obs = write_csv(tmp_path / "obs.csv", observations(world, 200, seed=5), world.receiver_ids)
    nowhere = tmp_path / "missing-folder" / "m.npz"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["calibrate", "-c", str(site), str(obs), "--survey-map", str(nowhere)]) == 2
    assert f"{nowhere}: cannot write the survey map" in err.getvalue()


@pytest.mark.slow
def test_the_daemon_starts_with_a_map_and_publishes_posteriors_that_name_it(surveyed, tmp_path):
    """``heimdall run`` on the calibrated site with its map: schema-valid localizations from the physics
    posterior, each naming the map by its sha256, and a clean stop."""
    import hashlib
    import tomllib

    from tests.helpers.daemon import check_localization_schema, collect_messages, reproducible_receivers, running_daemon

    calibrated, survey, _ = surveyed
    site_cfg = tomllib.loads(calibrated.read_text())
    receivers = reproducible_receivers()
    calibration_db = {rx["id"]: rx.get("calibration_db", 0.0) for rx in site_cfg["receivers"]}
    assert set(calibration_db) == {rx["id"] for rx in receivers}
    for rx in receivers:
        rx["calibration_db"] = calibration_db[rx["id"]]
    overrides = {"receivers": receivers, "simulator": site_cfg["simulator"],
                 "estimator": {"kind": "physics", "physics": {"shadowing_map": str(survey)}}}
    with running_daemon(tmp_path, overrides=overrides) as d:
        got = collect_messages(d.pub_endpoint, n_loc=5, timeout_s=90)
        log = d.stderr
    assert len(got["loc"]) >= 5, f"{len(got['loc'])} localizations in 90 s; daemon log:\n{log[-3000:]}"
    digest = hashlib.sha256(survey.read_bytes()).hexdigest()
    for msg in got["loc"]:
        check_localization_schema(msg)
        assert msg["estimator"] == "physics" and msg["model"]["sha256"] == digest
