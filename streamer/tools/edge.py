"""``heimdall receiver ID``: the edge runtime. One configured receiver runs alone on its host and publishes
its IQ blocks as framed IQ on a ZeroMQ PUB socket (receivers/framing.py), for a daemon's ``zmq`` receiver
to subscribe to; drops are reported every 5 s when they change.

With ``--channelize`` it publishes the config's target channel at the model rate instead of the whole band
(``daemon.edge_channelizer``): the block checks and the channelizer run on the edge, with their accounting
reported in the same log lines."""

from __future__ import annotations

import argparse
import logging
import threading

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
    parser.add_argument("--channelize", action="store_true",
                        help="publish the config's target channel at features.sample_rate_hz (a single-channel config)"
                             " instead of the receiver's whole band")


def run(args: argparse.Namespace) -> int:
    """Run receiver ``args.id`` of ``args.config`` until SIGTERM or SIGINT; exit status 0."""
    from receivers.base import ReceiverContext, TallyDropCounter
    from receivers.zmq_framed import FramedPublisher
    from streamer import config as config_mod
    from streamer.core.errors import HeimdallError
    from streamer.core.security import edge_curve
    from streamer.daemon.edge_channelizer import EdgeChannelizer
    from streamer.daemon.lane import LaneSettings
    from streamer.daemon.preflight import preflight_edge
    from streamer.daemon.runner import ReceiverRunner

    if args.channelize and args.dtype == "cu8":
        raise HeimdallError("heimdall receiver --channelize --dtype cu8: 8-bit samples of the channel would add their"
                            " quantization noise across it, above the noise that channelizing left; expected"
                            " --dtype cf32 or ci16")
    cfg = config_mod.load(args.config)
    for note in preflight_edge(cfg, args.id, channelize=args.channelize):  # `heimdall check --receiver ID`'s verdict
        log.warning("%s", note)
    rx = cfg.receiver(args.id)
    drops = TallyDropCounter()
    publisher = FramedPublisher(args.publish, bind=True, dtype=args.dtype, **edge_curve(cfg))
    channelizer = EdgeChannelizer(rx.id, LaneSettings.of(cfg)) if args.channelize else None
    lock = threading.Lock()
    if channelizer is None:
        log.info("receiver %s (%s): publishing framed IQ on %s", rx.id, rx.kind, publisher.endpoint)
    else:
        log.info("receiver %s (%s): publishing framed IQ on %s, channelized to %.9g Hz at %.9g Hz", rx.id, rx.kind,
                 publisher.endpoint, cfg.network.target_freq_hz, cfg.features.sample_rate_hz)

    def sink(block, realtime):
        # Only the runner's thread sends; the subscriber sees a dropped block as an index gap.
        if channelizer is None:
            publisher.send(block)
            return
        with lock:
            blocks = channelizer.push(block)
        for out in blocks:
            publisher.send(out)

    def edge_state():
        if channelizer is None:
            return None
        with lock:
            return channelizer.accounting()

    stop = stop_on_signals()
    runner = ReceiverRunner(rx, ReceiverContext(config=cfg, drops=drops), sink)
    runner.start()
    reported = None
    try:
        while not stop.wait(REPORT_EVERY_S):
            edge = edge_state()
            losses = (edge["dropped"], edge["source_lost"], edge["bad_frames"]) if edge is not None else None
            state = (dict(drops.bad_frames), dict(drops.dropped), publisher.dropped, losses)
            if state != reported and (drops.bad_frames or drops.dropped or publisher.dropped or any(losses or ())):
                log.warning("receiver %s: bad frames %s, source drops %s, blocks dropped at the PUB high-water mark %d",
                            rx.id, *state[:3])
                if edge is not None:
                    log.warning("receiver %s channelizer: %s", rx.id, _accounting_line(edge))
                reported = state
    finally:
        runner.stop()
        if channelizer is not None:
            with lock:
                for out in channelizer.flush():  # what it held: the subscriber gets every sample that is ready
                    publisher.send(out)
        publisher.close()
        edge = edge_state()
        if edge is not None:
            log.info("receiver %s channelizer at exit: %s", rx.id, _accounting_line(edge))
    return 0


def _accounting_line(state: dict) -> str:
    return (f"input samples received {state['received']} = handed on {state['used']} + in the filter"
            f" {state['buffered']} + dropped {sum(state['dropped'].values())} {state['dropped']}; lost at the source"
            f" {state['source_lost']}; bad blocks {state['bad_frames']}; output samples {state['samples_out']}")
