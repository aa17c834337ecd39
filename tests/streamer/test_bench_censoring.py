"""heimdall bench censoring: both paths timed on censored windows of one network, and their estimates equal."""

from __future__ import annotations

import re

import pytest

from streamer.cli import main
from streamer.estimators import normal_tail, physics


def test_the_bench_times_the_three_paths_and_prints_how_far_their_estimates_differ(capsys):
    assert main(["bench", "censoring", "--receivers", "14", "--windows", "4", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "14 receivers" in out and "4 censored windows" in out and "load average" in out
    for path in ("now", "log_ndtr", "every entry"):
        assert re.search(rf"{path} +p50 .* ms per window", out)
    assert "now / log_ndtr" in out and "now / every entry" in out
    for path in ("now", "log_ndtr"):
        moved = float(re.search(rf"{path} - every entry +largest: position (\S+) m", out).group(1))
        assert moved < 1e-2
    # The bench puts the module's limit and its log Phi back.
    assert physics.add_log_ndtr_outer is normal_tail.add_log_ndtr_outer
    assert physics.NEGLIGIBLE_NATS == 40.0


@pytest.mark.parametrize("bad", ["0", "-3", "many"])
def test_counts_below_one_are_refused_by_name(bad, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "censoring", "--receivers", bad])
    assert exit_.value.code == 2
    assert f"argument --receivers: expected a whole number of receivers >= 1, got '{bad}'" in capsys.readouterr().err
