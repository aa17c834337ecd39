"""BoundedLog: bad input from a peer logs at a bounded rate, with what was suppressed reported."""

import logging

from streamer.core.boundedlog import BoundedLog


def test_a_flood_of_one_kind_logs_a_few_lines_per_interval_and_reports_the_rest(caplog):
    now = [0.0]
    limiter = BoundedLog(logging.getLogger("t.bounded"), per_interval=3, interval_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="t.bounded"):
        logged = sum(limiter.warning("k", "bad block %d", i) for i in range(2000))
        assert logged == 3 and len(caplog.records) == 3
        now[0] = 10.0
        assert limiter.warning("k", "bad block again")
    assert "1997 similar lines suppressed" in caplog.records[-1].getMessage()


def test_keys_are_limited_independently_and_once_logs_once(caplog):
    limiter = BoundedLog(logging.getLogger("t.bounded2"), per_interval=1, interval_s=60.0)
    with caplog.at_level(logging.WARNING, logger="t.bounded2"):
        assert limiter.warning("a", "a") and limiter.warning("b", "b")
        assert not limiter.warning("a", "a")
        assert limiter.once("untunable:rx1", "rx1 cannot tune")
        assert not limiter.once("untunable:rx1", "rx1 cannot tune")
    assert [r.getMessage() for r in caplog.records] == ["a", "b", "rx1 cannot tune"]
