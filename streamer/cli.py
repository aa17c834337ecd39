"""``heimdall`` command line: run, listen, check, receiver, record, bench, train, evaluate, calibrate, calibrate-ellipses, soak,
keys, kinds.

Examples
--------
>>> build_parser().parse_args(["run", "-c", "site.toml"]).config
'site.toml'
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from streamer import __version__
from streamer.core.errors import HeimdallError, MissingDependencyError

log = logging.getLogger("heimdall")

DEFAULT_LISTEN = "tcp://127.0.0.1:5557"
TRAIN_INSTALL = "pip install -e '.[train]'"
BASE_INSTALL = "pip install -e ."
#: Foreign modules that daemon-side commands import lazily, all base dependencies in pyproject.toml.
BASE_FOREIGN_MODULES = ("sigmf", "jsonschema")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="heimdall", description="Heimdall streamer: IQ from many receivers -> transmitter positions")
    parser.add_argument("--version", action="version", version=f"heimdall {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon (embedded default config: a simulated 7-receiver network)")
    run.add_argument("-c", "--config", help="TOML config (default: the embedded config/default.toml)")

    listen = sub.add_parser("listen", help="subscribe and print localizations")
    listen.add_argument("endpoint", nargs="?", default=DEFAULT_LISTEN, help=f"PUB endpoint (default {DEFAULT_LISTEN})")
    listen.add_argument("--json", action="store_true", help="one JSON object per line")
    listen.add_argument("--topic", default="loc", help="topic prefix (default 'loc')")
    listen.add_argument("--count", type=int, default=0, help="stop after this many messages (0 = forever)")
    listen.add_argument("--hint-after", type=float, default=5.0, metavar="SECONDS",
                        help="say on stderr, once, that nothing has arrived after this many seconds (default 5; 0: never)")

    check = sub.add_parser("check", help="validate a config (and its model)")
    check.add_argument("-c", "--config", required=True, help="TOML config")
    check.add_argument("--receiver", metavar="ID",
                       help="check the config as `heimdall receiver ID` on an edge host uses it (not as a daemon's)")

    receiver = sub.add_parser("receiver", help="run one configured receiver alone, publishing framed IQ over ZeroMQ")
    receiver.add_argument("id", help="receiver id in the config")
    receiver.add_argument("-c", "--config", required=True, help="TOML config")
    receiver.add_argument("--publish", default="tcp://127.0.0.1:5560", help="PUB bind endpoint for framed IQ")
    receiver.add_argument("--dtype", default="cf32", choices=["cf32", "ci16", "cu8"], help="sample format on the wire")

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    pipe = bench_sub.add_parser("pipeline", help="channelizer + features + estimator as fast as possible")
    pipe.add_argument("--receivers", type=int, default=7)
    pipe.add_argument("--rate", type=float, default=2.4e6, help="input rate per receiver (samples/s)")
    pipe.add_argument("--windows", type=int, default=40)
    pipe.add_argument("-c", "--config", help="config whose features and estimator to use (default: embedded)")

    bench_sub.add_parser("model", help="batch-1 model latency: OnnxEstimator vs raw ONNX Runtime", add_help=False)
    bench_sub.add_parser("receivers", help="each adapter against its peer (needs a source checkout)", add_help=False)

    record = sub.add_parser("record", help="record what the configured receivers hear as a SigMF collection")
    record.add_argument("-c", "--config", help="TOML config (default: the embedded default)")
    record.add_argument("--seconds", type=float, required=True, help="seconds of signal per receiver")
    record.add_argument("out", help="output folder (must not exist)")

    # Subcommands implemented elsewhere parse their own options (`heimdall train --help`), so that the
    # daemon's CLI never imports torch.
    for name, text in (("train", "train the localization model (needs the [train] extra: torch)"),
                       ("evaluate", "score models and the physics estimator on simulated and real data"),
                       ("calibrate", "fit receivers' calibration_db (and the path-loss exponent) from transmissions at known positions"),
                       ("calibrate-ellipses", "fit each estimator's ellipse size from its localizations of transmitters at known positions"),
                       ("soak", "run the daemon under load and check memory, accounting, rate and latency")):
        sub.add_parser(name, help=text, add_help=False)

    sub.add_parser("kinds", help="list receiver kinds")

    keys = sub.add_parser("keys", help="CURVE key files (docs/security.md)")
    keys_sub = keys.add_subparsers(dest="keys", required=True)
    generate = keys_sub.add_parser("generate", help="write NAME.key (public) and NAME.key_secret (secret, mode 0600)")
    generate.add_argument("dir", help="folder to write into (created if missing)")
    generate.add_argument("--name", default="heimdall", help="file name stem (default 'heimdall')")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command in DELEGATED or getattr(args, "bench", None) in ("model", "receivers"):
        args.rest = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    level = logging.WARNING if args.verbose == 0 and args.command == "listen" else logging.INFO
    if args.verbose >= 2:
        level = logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return COMMANDS[args.command](args)
    except HeimdallError as exc:
        print(f"heimdall: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing not in BASE_FOREIGN_MODULES:
            raise
        # A base dependency gone from the environment is a broken install, not a bug: say how to repair it.
        print(f"heimdall: error: heimdall {args.command} needs {missing!r}, a dependency of heimdall-streamer "
              f"missing from {sys.prefix}: {BASE_INSTALL}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def cmd_run(args) -> int:
    # Handlers before anything slow (imports, config, model): a SIGHUP or SIGTERM while the daemon starts must not
    # end the process with the default action.
    stop = _stop_on_signals()
    reload_requested = threading.Event()
    signal.signal(signal.SIGHUP, lambda signum, frame: reload_requested.set())
    log.info("starting with %s", args.config or "the embedded default config")
    from streamer import config as config_mod
    from streamer.daemon.app import Daemon

    cfg = config_mod.load(args.config)
    daemon = Daemon(cfg, reload_requested=reload_requested)
    daemon.run(stop)
    return 0


def cmd_check(args) -> int:
    from streamer import config as config_mod
    from streamer.daemon.preflight import busy_port_notes, preflight, provider_summary
    from streamer.estimators.build import build_estimators

    cfg = config_mod.load(args.config)
    if args.receiver is not None:
        from streamer.daemon.preflight import preflight_edge

        preflight_edge(cfg, args.receiver)
        rx = cfg.receiver(args.receiver)
        print(f"{cfg.source}: ok for heimdall receiver {rx.id} (kind {rx.kind})")
        return 0
    notes = preflight(cfg) + busy_port_notes(cfg)  # the checks `heimdall run` makes before it starts, and its ports now
    estimators = build_estimators(cfg)  # loads and checks the model against the contract, if one is named
    print(f"{cfg.source}: ok ({len(cfg.receivers)} receivers, estimator {cfg.estimator.kind})")
    for estimator in estimators:
        if hasattr(estimator, "site_summary"):
            print(f"model {estimator.info['name']} {estimator.info['version']}: {estimator.site_summary()}")
    if cfg.estimator.kind == "onnx":
        print(provider_summary(cfg, running=estimators[0].provider))
    for note in notes:
        print(f"warning: {note}")
    return 0


def cmd_receiver(args) -> int:
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

    stop = _stop_on_signals()
    runner = ReceiverRunner(rx, ReceiverContext(config=cfg, drops=drops), sink)
    runner.start()
    reported = None
    try:
        while not stop.wait(5.0):
            state = (dict(drops.bad_frames), dict(drops.dropped), publisher.dropped)
            if state != reported and (drops.bad_frames or drops.dropped or publisher.dropped):
                log.warning("receiver %s: bad frames %s, source drops %s, blocks dropped at the PUB high-water mark %d",
                            rx.id, *state)
                reported = state
    finally:
        runner.stop()
        publisher.close()
    return 0


def format_localization(msg: dict) -> str:
    """One human line: UTC end of the window, latitude and longitude (degrees), the credible ellipse as its
    probability, semi-major axis ``a`` and semi-minor axis ``b`` (km) and the azimuth of ``a`` (degrees from
    north), the receivers used, the estimator, and ``proc``: the daemon's processing time for the window (ms),
    not the message's age."""
    t = dt.datetime.fromtimestamp(msg["t_end_ns"] / 1e9, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"
    e = msg["ellipse"]
    return (
        f"{t} {msg['lat']:.5f} {msg['lon']:.5f} "
        f"{int(round(e['p'] * 100))}% a={e['semi_major_m'] / 1000:.1f} km b={e['semi_minor_m'] / 1000:.1f} km "
        f"az {e['azimuth_deg']:.0f} rx={','.join(msg['receivers'])} {msg['estimator']} "
        f"proc {msg['latency_ms']['processing']:.1f} ms"
    )


def no_message_hint(endpoint: str, topic: str, seconds: float) -> str:
    """What ``heimdall listen`` says when nothing has arrived: a SUB socket cannot tell a missing publisher
    from a quiet one, so it names the two usual causes."""
    return (f"heimdall listen: no message on topic {topic!r} from {endpoint} in {seconds:g} s: is the daemon running "
            f"(`heimdall run`), and is {endpoint} its output.endpoint? Still waiting.")


def cmd_listen(args) -> int:
    import msgpack
    import zmq

    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(args.endpoint)
    sock.setsockopt_string(zmq.SUBSCRIBE, args.topic)
    stop = _stop_on_signals()
    seen = 0
    last_seq = None
    hint_at = time.monotonic() + args.hint_after if args.hint_after > 0 else None
    try:
        while not stop.is_set():
            if not sock.poll(200):
                if hint_at is not None and seen == 0 and time.monotonic() >= hint_at:
                    print(no_message_hint(args.endpoint, args.topic, args.hint_after), file=sys.stderr, flush=True)
                    hint_at = None
                continue
            frames = sock.recv_multipart()
            if len(frames) != 2:
                continue
            topic = frames[0].decode(errors="replace")
            try:
                msg = msgpack.unpackb(frames[1], raw=False)
            except Exception as exc:
                print(f"heimdall listen: undecodable message on {topic!r}: {exc}", file=sys.stderr)
                continue
            if topic.startswith("loc") and isinstance(msg, dict) and "seq" in msg:
                if last_seq is not None and msg["seq"] > last_seq + 1:
                    print(f"heimdall listen: missed {msg['seq'] - last_seq - 1} localizations", file=sys.stderr)
                last_seq = msg["seq"]
            if args.json:
                print(json.dumps({"topic": topic, **msg}), flush=True)
            elif topic.startswith("loc"):
                print(format_localization(msg), flush=True)
            else:
                print(f"{topic} {json.dumps(msg)}", flush=True)
            seen += 1
            if args.count and seen >= args.count:
                break
    finally:
        sock.close()
    return 0


def cmd_bench(args) -> int:
    if args.bench == "model":
        from streamer.tools.bench_model import main as bench_model

        return bench_model(args.rest)
    if args.bench == "receivers":
        script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_receivers.py"
        if not script.is_file():
            raise HeimdallError(f"{script} not found: `heimdall bench receivers` needs a source checkout (its peers live in tests/)")
        return subprocess.call([sys.executable, str(script), *args.rest])
    from streamer.tools.bench_pipeline import bench_pipeline

    return bench_pipeline(args)


def cmd_record(args) -> int:
    from streamer.tools.record import main as record

    return record(args)


def cmd_train(args) -> int:
    from models.train.commands import add_train_arguments, run_train

    # Options are parsed before torch is imported, so `heimdall train --help` and a bad option answer without it.
    parser = argparse.ArgumentParser(prog="heimdall train", description="train the localization network from scratch on simulated networks, export it, score it")
    add_train_arguments(parser)
    options = parser.parse_args(args.rest)
    try:
        return run_train(options)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "torch":
            raise MissingDependencyError(f"heimdall train needs torch: {TRAIN_INSTALL}") from exc
        raise


def cmd_evaluate(args) -> int:
    from models.train.evaluate import main as evaluate

    return evaluate(args.rest)


def cmd_calibrate(args) -> int:
    from streamer.tools.calibrate import main as calibrate

    return calibrate(args.rest)


def cmd_calibrate_ellipses(args) -> int:
    from streamer.tools.calibrate_ellipses import main as calibrate_ellipses

    return calibrate_ellipses(args.rest)


def cmd_soak(args) -> int:
    from streamer.tools.soak import main as soak

    return soak(args.rest)


def cmd_kinds(args) -> int:
    from receivers.registry import KINDS

    for kind, target in sorted(KINDS.items()):
        print(f"{kind:14s} {target}")
    return 0


def cmd_keys(args) -> int:
    from streamer.core.security import generate_keys

    public, secret = generate_keys(args.dir, args.name)
    print(f"public key {public} (give it to peers; allow-lists are folders of these)\nsecret key {secret} (mode 0600; keep it on this host)")
    return 0


DELEGATED = ("train", "evaluate", "calibrate", "calibrate-ellipses", "soak")  # parse their own options

COMMANDS = {
    "run": cmd_run,
    "listen": cmd_listen,
    "check": cmd_check,
    "receiver": cmd_receiver,
    "bench": cmd_bench,
    "record": cmd_record,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "calibrate": cmd_calibrate,
    "calibrate-ellipses": cmd_calibrate_ellipses,
    "soak": cmd_soak,
    "kinds": cmd_kinds,
    "keys": cmd_keys,
}
