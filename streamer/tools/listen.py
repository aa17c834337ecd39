"""``heimdall listen``: a ZeroMQ SUB client of the daemon's output that prints each message, as one human
line per localization, as JSON lines, or as GeoJSON Features (``--geojson``, one per line). Times are UTC;
distances in the human line are km."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time

from streamer.tools.signals import stop_on_signals


class UndecodableMessage(ValueError):
    """A message on the daemon's PUB socket that is not a topic frame and a msgpack frame."""


def decode_message(frames: list[bytes]) -> tuple[str, object]:
    """One message of the daemon's PUB socket (docs/protocol.md: a topic frame, a msgpack frame) -> (topic, payload).

    Raises ``UndecodableMessage`` naming what is wrong (the frame count, or the payload's msgpack error and topic):
    every subscriber here (listen, score-live, cot, map) reports or counts it and goes on with the next message.

    >>> import msgpack
    >>> decode_message([b"loc", msgpack.packb({"seq": 1})])
    ('loc', {'seq': 1})
    """
    import msgpack

    if len(frames) != 2:
        raise UndecodableMessage(f"expected 2 frames (topic, payload), got {len(frames)}")
    topic = frames[0].decode(errors="replace")
    try:
        return topic, msgpack.unpackb(frames[1], raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise UndecodableMessage(f"undecodable message on {topic!r}: {exc}") from exc

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5557"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``heimdall listen``."""
    parser.add_argument("endpoint", nargs="?", default=DEFAULT_ENDPOINT, help=f"PUB endpoint (default {DEFAULT_ENDPOINT})")
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="one JSON object per line")
    form.add_argument("--geojson", action="store_true",
                      help="one GeoJSON Feature per line and localization: the estimate and its 95%% ellipse "
                           "(docs/protocol.md, GeoJSON); other topics are not printed")
    parser.add_argument("--topic", default="loc", help="topic prefix (default 'loc')")
    parser.add_argument("--count", type=int, default=0, help="stop after this many messages (0 = forever)")
    parser.add_argument("--hint-after", type=float, default=5.0, metavar="SECONDS",
                        help="say on stderr, once, that nothing has arrived after this many seconds (default 5; 0: never)")


def format_localization(msg: dict) -> str:
    """One human line: UTC end of the window, latitude and longitude (degrees), the credible ellipse as its
    probability, semi-major axis ``a`` and semi-minor axis ``b`` (km) and the azimuth of ``a`` (degrees from
    north), the receivers used, the estimator, and ``proc``: the daemon's processing time for the window (ms),
    not the message's age."""
    t = dt.datetime.fromtimestamp(msg["t_end_ns"] / 1e9, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"
    e = msg["ellipse"]
    return (
        f"{t} {msg['lat']:.5f} {msg['lon']:.5f} "
        f"{round(e['p'] * 100)}% a={e['semi_major_m'] / 1000:.1f} km b={e['semi_minor_m'] / 1000:.1f} km "
        f"az {e['azimuth_deg']:.0f} rx={','.join(msg['receivers'])} {msg['estimator']} "
        f"proc {msg['latency_ms']['processing']:.1f} ms"
    )


def no_message_hint(endpoint: str, topic: str, seconds: float) -> str:
    """What ``heimdall listen`` says when nothing has arrived: a SUB socket cannot tell a missing publisher
    from a quiet one, so it names the two usual causes."""
    return (f"heimdall listen: no message on topic {topic!r} from {endpoint} in {seconds:g} s: is the daemon running "
            f"(`heimdall run`), and is {endpoint} its output.endpoint? Still waiting.")


def run(args: argparse.Namespace) -> int:
    """Subscribe to ``args.endpoint`` and print until ``args.count`` messages, SIGTERM or SIGINT; exit status 0."""
    import zmq

    from streamer.tools.geoformats import localization_feature

    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(args.endpoint)
    sock.setsockopt_string(zmq.SUBSCRIBE, args.topic)
    stop = stop_on_signals()
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
            try:
                topic, msg = decode_message(sock.recv_multipart())
            except UndecodableMessage as exc:
                print(f"heimdall listen: {exc}", file=sys.stderr)
                continue
            if topic.startswith("loc") and isinstance(msg, dict) and "seq" in msg:
                if last_seq is not None and msg["seq"] > last_seq + 1:
                    print(f"heimdall listen: missed {msg['seq'] - last_seq - 1} localizations", file=sys.stderr)
                last_seq = msg["seq"]
            if args.geojson:
                if not topic.startswith("loc"):
                    continue
                try:
                    print(json.dumps(localization_feature(msg)), flush=True)
                except ValueError as exc:
                    print(f"heimdall listen: no GeoJSON for a message on {topic!r}: {exc}", file=sys.stderr)
                    continue
            elif args.json:
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
