"""``heimdall receiver ID --channelize`` end to end: three edge processes channelize their simulated receivers'
48 kS/s band on their own cores and publish the target channel at 24 kS/s; the daemon (subprocess) localizes with
them beside four receivers of its own; one edge killed and started again is reported down and then localized with
again (its new stream starts a new segment); every receiver's sample accounting balances at the daemon, and each
edge's exit line balances its own input samples."""

from __future__ import annotations

import re
import time

import pytest
import zmq

from tests.helpers.daemon import running_daemon
from tests.helpers.edges import Edge, edge_config, running_edges, simulated_receiver, zmq_receiver
from tests.helpers.polling import wait_for
from tests.integration.test_faults import Listener, free_port, scrape, settle_accounting, uses, value

EDGE_IDS = ("torino", "montanaro", "giaveno")
LOCAL_IDS = ("coazze", "giovi", "genova", "milano")
EXIT_RE = re.compile(r"channelizer at exit: input samples received (\d+) = handed on (\d+) \+ in the filter (\d+)"
                     r" \+ dropped (\d+)")


@pytest.mark.slow
def test_channelizing_edges_feed_a_daemon_that_localizes_with_them_at_the_model_rate(tmp_path):
    config = edge_config(tmp_path, EDGE_IDS)
    edges = [Edge(rid, f"tcp://127.0.0.1:{free_port()}", config, args=("--channelize",)) for rid in EDGE_IDS]
    overrides = {
        "receivers": [zmq_receiver(e.receiver_id, e.endpoint) for e in edges] + [simulated_receiver(r) for r in LOCAL_IDS],
        "pipeline": {"min_receivers": 3},
    }
    ctx = zmq.Context()
    listener = None
    try:
        with running_edges(edges), running_daemon(tmp_path, overrides=overrides) as daemon:
            listener = Listener(ctx, daemon.pub_endpoint)
            t_start = time.monotonic()
            wait_for(lambda: sum(all(uses(m, r) for r in EDGE_IDS) for _, m in listener.since(t_start)) >= 5, 60,
                     "5 localizations using all three channelizing edges")
            now = scrape(daemon.metrics_url)
            rates = {r: value(now, "heimdall_sample_rate_hertz", receiver=r) for r in (*EDGE_IDS, *LOCAL_IDS)}
            victim = edges[0]
            victim.kill()
            wait_for(lambda: value(scrape(daemon.metrics_url), "heimdall_receiver_up", receiver=victim.receiver_id) == 0,
                     15, f"{victim.receiver_id} reported down")
            restarted = time.monotonic()
            victim.start()
            wait_for(lambda: any(uses(m, victim.receiver_id) for _, m in listener.since(restarted)), 30,
                     f"a localization using {victim.receiver_id} after its edge restarted")
            for edge in edges:
                edge.stop()
            settle_accounting(daemon.metrics_url, EDGE_IDS)
    finally:
        if listener is not None:
            listener.close()
        ctx.destroy(linger=0)
    # The daemon receives the edges' channel at the model rate and its own receivers' whole band.
    assert rates == {**{r: 24_000.0 for r in EDGE_IDS}, **{r: 48_000.0 for r in LOCAL_IDS}}
    for edge in edges:  # the killed edge's first life left no exit line; its second one did
        found = EXIT_RE.search("".join(edge.log))
        assert found, f"edge {edge.receiver_id} logged no accounting at exit:\n{''.join(edge.log)[-2000:]}"
        received, used, held, dropped = map(int, found.groups())
        assert received > 0 and received == used + held + dropped
