"""``heimdall receiver ID``: the edge runtime. One configured receiver runs alone on its host and publishes
its IQ blocks as framed IQ on a ZeroMQ PUB socket (receivers/framing.py), for a daemon's ``zmq`` receiver
to subscribe to; drops are reported every 5 s when they change."""

from __future__ import annotations

import argparse
import logging

from streamer.tools.signals import stop_on_signals

log = logging.getLogger("heimdall")

#: Seconds between checks of the drop tallies.
REPORT_EVERY_S = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``heimdall receiver``."""
    parser.add_argument("id", help="receiver id in the config")
    parser.add_argument("-c", "--config", required=True, help="TOML config")
    parser.add_argument("--publish", default="tcp://127.0.0.1:5560", help="PUB bind endpoint for framed IQ")
    parser.add_argument("--dtype", default="cf32", choices=["cf32", "ci16", "cu8"], help="sample format on the wire")


def run(args: argparse.Namespace) -> int:
    """Run receiver ``args.id`` of ``args.config`` until SIGTERM or SIGINT; exit status 0."""
    from receivers.base import ReceiverContext, TallyDropCounter
    from receivers.zmq_framed import FramedPublisher
    from streamer import config as config_mod
    from streamer.core.security import edge_curve
    from streamer.daemon.preflight import preflight_edge
    from streamer.daemon.runner import ReceiverRunner

    cfg = config_mod.load(args.config)
    preflight_edge(cfg, args.id)  # the verdict `heimdall check --receiver ID` gives
    rx = cfg.receiver(args.id)
    drops = TallyDropCounter()
    publisher = FramedPublisher(args.publish, bind=True, dtype=args.dtype, **edge_curve(cfg))
    log.info("receiver %s (%s): publishing framed IQ on %s", rx.id, rx.kind, publisher.endpoint)

    def sink(block, realtime):
        # Only the runner's thread sends; the subscriber sees a dropped block as an index gap.
        publisher.send(block)

    stop = stop_on_signals()
    runner = ReceiverRunner(rx, ReceiverContext(config=cfg, drops=drops), sink)
    runner.start()
    reported = None
    try:
        while not stop.wait(REPORT_EVERY_S):
            state = (dict(drops.bad_frames), dict(drops.dropped), publisher.dropped)
            if state != reported and (drops.bad_frames or drops.dropped or publisher.dropped):
                log.warning("receiver %s: bad frames %s, source drops %s, blocks dropped at the PUB high-water mark %d",
                            rx.id, *state)
                reported = state
    finally:
        runner.stop()
        publisher.close()
    return 0
