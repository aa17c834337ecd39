"""ZmqPublisher: the PUB side of the output (topic frame, then msgpack payload frame).

It is an XPUB so that it can count subscribers. Sends never block: ZeroMQ queues up to ``send_hwm``
messages per subscriber and then drops, per subscriber, silently — libzmq does not report which
subscriber lost what, so subscribers detect loss from gaps in ``seq`` (``heimdall listen`` reports them).
``heimdall_subscriber_drops_total`` counts the sends the socket refused as a whole.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import msgpack
import zmq

from streamer.core.security import OUTPUT_DOMAIN, KeyPair, SocketEvents, make_curve_server

log = logging.getLogger(__name__)


class ZmqPublisher:
    """Bind an XPUB at ``endpoint`` in ``context``; ``send(topic, payload)`` serialises with msgpack and never blocks."""

    def __init__(
        self,
        endpoint: str,
        *,
        context: zmq.Context,
        send_hwm: int = 1000,
        send_buffer_bytes: int = 0,
        on_sent: Callable[[str], None] = lambda topic: None,
        on_dropped: Callable[[str], None] = lambda topic: None,
        on_subscribers: Callable[[int], None] = lambda n: None,
        curve_keys: KeyPair | None = None,
        on_auth_failure: Callable[[str], None] = lambda socket: None,
    ) -> None:
        self._sock = context.socket(zmq.XPUB)
        if curve_keys is not None:  # CURVE server; the CurveAuthenticator on ``context`` checks the clients
            make_curve_server(self._sock, curve_keys, OUTPUT_DOMAIN)
        self._events = SocketEvents(self._sock, "output", on_auth_failure, curve=curve_keys is not None)
        self._sock.setsockopt(zmq.SNDHWM, send_hwm)
        if send_buffer_bytes > 0:  # SO_SNDBUF of each subscriber's connection; 0 leaves the OS default
            self._sock.setsockopt(zmq.SNDBUF, send_buffer_bytes)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.XPUB_VERBOSER, 1)  # see every (un)subscribe, to count subscribers
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self._events.close()
            self._sock.close()
            raise OSError(f"output.endpoint: cannot bind {endpoint!r}: {exc}") from exc
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._on_sent = on_sent
        self._on_dropped = on_dropped
        self._on_subscribers = on_subscribers
        self._subscriptions = 0

    def send(self, topic: str, payload: dict[str, Any]) -> bool:
        """Publish one message; False when the socket refused it (counted)."""
        self._drain_subscriptions()
        body = msgpack.packb(payload, use_bin_type=True)
        try:
            self._sock.send_multipart([topic.encode(), body], flags=zmq.NOBLOCK)
        except zmq.Again:
            self._on_dropped(topic)
            return False
        self._on_sent(topic)
        return True

    def _drain_subscriptions(self) -> None:
        self._events.drain()  # counts refused peers (on_auth_failure)
        while True:
            try:
                event = self._sock.recv(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            if event[:1] == b"\x01":
                self._subscriptions += 1
            elif event[:1] == b"\x00":
                self._subscriptions = max(0, self._subscriptions - 1)
        self._on_subscribers(self._subscriptions)

    def close(self) -> None:
        self._events.close()
        self._sock.close(linger=0)
