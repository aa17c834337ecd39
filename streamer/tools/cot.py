"""``heimdall cot``: a subscriber of the daemon's output that sends each localization to TAK clients or a TAK
server as a Cursor-on-Target event (``streamer.tools.geoformats.cot_event_xml``; docs/protocol.md, "Cursor on
Target").

Transports:

- ``--udp HOST:PORT``: one datagram per event. A multicast group reaches every ATAK/WinTAK/iTAK on the LAN
  (their situational-awareness default is ``239.2.3.1:6969``); ``--ttl`` sets how many routers it crosses.
  ``--protobuf`` sends TAK Protocol Version 1 mesh (takproto, ``pip install -e '.[tak]'``) instead of XML.
- ``--tcp HOST:PORT``: a TAK server's plain streaming input (often port 8087), XML events one after another.
  A lost connection is retried at the next event; events that find it down are counted and dropped, never
  queued, since a late position is worth less than the next one.

Examples
--------
>>> host_port("239.2.3.1:6969"), host_port("[::1]:8087")
(('239.2.3.1', 6969), ('::1', 8087))
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import socket
import sys
import time

from streamer.tools.geoformats import (
    COT_TYPE,
    DEFAULT_STALE_S,
    cot_event_xml,
    cot_mesh_protobuf,
    import_takproto,
)
from streamer.tools.listen import DEFAULT_ENDPOINT, decode_message
from streamer.tools.signals import stop_on_signals

log = logging.getLogger(__name__)

#: How long a TCP connect may take before the event is dropped (s).
TCP_CONNECT_TIMEOUT_S = 2.0


def host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (an IPv6 host in brackets) as ``(host, port)``; an argparse error that shows the form."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT with a port 1-65535, e.g. 239.2.3.1:6969")
    return host, int(port)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``heimdall cot``."""
    parser.add_argument("endpoint", nargs="?", default=DEFAULT_ENDPOINT,
                        help=f"the daemon's output endpoint (default {DEFAULT_ENDPOINT})")
    to = parser.add_mutually_exclusive_group(required=True)
    to.add_argument("--udp", type=host_port, metavar="HOST:PORT",
                    help="send datagrams (unicast or multicast; ATAK's SA group is 239.2.3.1:6969)")
    to.add_argument("--tcp", type=host_port, metavar="HOST:PORT", help="stream to a TAK server's TCP input")
    parser.add_argument("--stale-s", type=float, default=DEFAULT_STALE_S, metavar="S",
                        help=f"seconds a TAK client shows a position after it is sent (default {DEFAULT_STALE_S:g})")
    parser.add_argument("--type", default=COT_TYPE, dest="cot_type", help=f"CoT type of the events (default {COT_TYPE})")
    parser.add_argument("--protobuf", action="store_true",
                        help="UDP only: TAK Protocol Version 1 mesh instead of XML (needs takproto)")
    parser.add_argument("--ttl", type=int, default=1, help="multicast hops (default 1: this network only)")
    parser.add_argument("--topic", default="loc", help="topic prefix (default 'loc')")
    parser.add_argument("--count", type=int, default=0, help="stop after sending this many events (0 = forever)")


class UdpSender:
    """Datagrams to one address; multicast groups get ``ttl`` hops."""

    def __init__(self, host: str, port: int, *, ttl: int = 1):
        family, kind, proto, _, self.address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        self.sock = socket.socket(family, kind, proto)
        if ipaddress.ip_address(self.address[0]).is_multicast:
            level, option = ((socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS) if family == socket.AF_INET6
                             else (socket.IPPROTO_IP, socket.IP_MULTICAST_TTL))
            self.sock.setsockopt(level, option, ttl)

    def send(self, payload: bytes) -> bool:
        """Send one event; False when the OS refused it (the event is lost)."""
        try:
            self.sock.sendto(payload, self.address)
            return True
        except OSError as exc:
            log.warning("cot: UDP send to %s:%s failed: %s", self.address[0], self.address[1], exc)
            return False

    def close(self) -> None:
        self.sock.close()


class TcpSender:
    """One TCP connection, opened at the first event and again at the next event after it breaks."""

    def __init__(self, host: str, port: int, *, connect_timeout_s: float = TCP_CONNECT_TIMEOUT_S):
        self.address = (host, port)
        self.connect_timeout_s = connect_timeout_s
        self.sock: socket.socket | None = None

    def send(self, payload: bytes) -> bool:
        """Send one event; False when the server cannot be reached or the connection broke (the event is lost)."""
        try:
            if self.sock is None:
                self.sock = socket.create_connection(self.address, timeout=self.connect_timeout_s)
            self.sock.sendall(payload)
            return True
        except OSError as exc:
            log.warning("cot: TCP %s:%s: %s; retrying at the next event", *self.address, exc)
            self.close()
            return False

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def run(args: argparse.Namespace) -> int:
    """Subscribe to ``args.endpoint`` and send each ``loc`` message as a CoT event until ``args.count`` events,
    SIGTERM or SIGINT; say on stderr what was sent and dropped. Exit status 0."""
    import zmq

    if args.protobuf and args.tcp:
        raise argparse.ArgumentError(None, "--protobuf is for --udp (TAK mesh); a TAK server's TCP input takes XML")
    if not (args.stale_s > 0):
        raise argparse.ArgumentError(None, f"--stale-s must be positive, got {args.stale_s:g}")
    if args.protobuf:
        import_takproto()  # fail now, with the install command, when takproto is missing
    try:
        sender = UdpSender(*args.udp, ttl=args.ttl) if args.udp else TcpSender(*args.tcp)
    except OSError as exc:  # a host name that does not resolve, a TTL the OS refuses
        raise argparse.ArgumentError(None, f"--udp {args.udp[0]}:{args.udp[1]}: {exc}") from exc
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(args.endpoint)
    sock.setsockopt_string(zmq.SUBSCRIBE, args.topic)
    stop = stop_on_signals()
    sent = dropped = refused = 0
    try:
        while not stop.is_set() and not (args.count and sent >= args.count):
            if not sock.poll(200):
                continue
            frames = sock.recv_multipart()
            if not frames[0].startswith(b"loc"):
                continue
            topic = frames[0].decode(errors="replace")
            try:
                _, msg = decode_message(frames)
                event = cot_event_xml(msg, sent_ns=time.time_ns(), stale_s=args.stale_s, cot_type=args.cot_type)
            except ValueError as exc:  # undecodable (UndecodableMessage) or incomplete: skip it, serve the next
                refused += 1
                print(f"heimdall cot: skipped a message on {topic!r}: {exc}", file=sys.stderr, flush=True)
                continue
            if sender.send(cot_mesh_protobuf(event) if args.protobuf else event):
                sent += 1
            else:
                dropped += 1
    finally:
        sock.close()
        sender.close()
        print(f"heimdall cot: {sent} events sent, {dropped} dropped (transport), {refused} messages skipped",
              file=sys.stderr, flush=True)
    return 0
