"""heimdall bench censoring: both paths timed on censored windows of one network, and their estimates equal."""

from __future__ import annotations

import re

import pytest

from streamer.cli import main
from streamer.estimators import physics


def test_the_bench_times_both_paths_and_prints_how_far_their_estimates_differ(capsys):
    assert main(["bench", "censoring", "--receivers", "14", "--windows", "4", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "14 receivers" in out and "4 censored windows" in out and "load average" in out
    assert re.search(r"pruned +p50 .* ms per window", out) and re.search(r"every entry +p50 .* ms per window", out)
    assert "pruned / every entry" in out
    moved = float(re.search(r"largest difference +position (\S+) m", out).group(1))
    assert moved < 1e-3
    # The bench puts the module's limits back.
    assert (physics.NEGLIGIBLE_NATS, physics.NEGLIGIBLE_CENSORING_Z) == (40.0, 8.3)


@pytest.mark.parametrize("bad", ["0", "-3", "many"])
def test_counts_below_one_are_refused_by_name(bad, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "censoring", "--receivers", bad])
    assert exit_.value.code == 2
    assert f"argument --receivers: expected a whole number of receivers >= 1, got '{bad}'" in capsys.readouterr().err
