"""KiwiSDR: one IQ channel of a KiwiSDR over its websocket sound stream (no third-party client).

Transport: RFC 6455 websocket on ``ws://HOST:PORT/<unix seconds>/SND`` (``/wb/<ts>/SND`` on the
wideband firmware), written here over a plain socket (client frames masked, server frames not).

Control (client -> server, text frames), in this order::

    SET auth t=kiwi p=<password>                     on connect
    SET AR OK in=<audio_rate> out=44100              when the server announces audio_rate
    SET mod=iq low_cut=<Hz> high_cut=<Hz> freq=<kHz, 3 decimals>     when it announces sample_rate
    SET agc=0 hang=0 thresh=-100 slope=6 decay=1000 manGain=<dB>      (agc=1 with agc = true)
    SET compression=0
    SET little_endian                                (only with little_endian = true)
    SET keepalive                                    about every keepalive_s, from the iterating thread

Server messages start with a 3-byte ASCII tag (binary or text frames): ``MSG key=value ...``
(values URL-encoded; ``sample_rate``, ``audio_rate``, ``badp``, ``too_busy``, ``down``, ``load_cfg``)
or an IQ frame::

    offset  size  field
    0       3     "SND"
    3       u8    flags: 0x01 LPF, 0x02 ADC overflow, 0x04 new frequency, 0x08 IQ mode,
                  0x10 compressed, 0x20 restart, 0x40 squelch/masked, 0x80 samples little-endian
    4       u32LE seq, +1 per frame (a gap is loss)
    8       u16BE S-meter: RSSI dBm = 0.1 * v - 127
    10      u8    last_gps_solution: s since the last GNSS fix (<= 254); 255 = GPS clock not running
    11      u8    0
    12      u32LE GPS time of week of the first sample (s, mod 604800)
    16      u32LE nanoseconds
    20      2048  512 x (I, Q) int16, big-endian unless flag 0x80

Mapping to IQBlock: one block per frame, samples / 32768 (full scale 1.0); ``center_freq`` = the
configured frequency; ``sample_rate`` = the server's ``sample_rate`` (``sample_rate_hz`` until it
arrives); a seq gap of g frames is counted as ``samples_dropped(id, "seq_gap", 512 * g)`` and
advances ``sample_index`` by as much, so the stream stays aligned with seq; the next block carries
``Flags.OVERFLOW`` (as after a masked frame). ADC overflow (clipping, not loss) -> ``Flags.CLIPPED``; new frequency or a changed rate -> ``Flags.RETUNE``; restart and the first
block of a connection -> ``Flags.DISCONTINUITY``; agc = true -> ``Flags.AGC`` and ``gain_db=None``.

Time: with a running GPS clock (last_gps_solution < 255 and a non-zero timestamp) ``t0_ns`` is the
frame's GPS time of week placed in the GPS week nearest the host clock, minus 18 leap seconds
(``time_source="gps"``); otherwise the receive time minus the frame duration (``"host"``).

Failures: frames that cannot be used are counted with ``bad_frame``: ``truncated`` (shorter than
20 + 2048 bytes), ``oversize``, ``bad_tag`` (neither SND nor MSG), ``not_iq`` (flag 0x08 missing),
``compressed``; masked frames (0x40) are dropped as ``samples_dropped(id, "masked", 512)``. A bad
frame still consumed a seq number, so it also shows as a ``seq_gap`` of its samples. ``badp=1`` is
``ReceiverFatalError`` (wrong password); ``too_busy``, ``down``, other ``badp`` values, a closed
connection or no frame for ``timeout_s`` are ``ReceiverTransientError``.

Examples
--------
>>> frame = b"SND" + bytes([0x08]) + (7).to_bytes(4, "little") + (1270).to_bytes(2, "big") + bytes(2058)
>>> f = parse_snd(frame)
>>> f.seq, f.smeter_dbm, len(f.samples)
(7, 0.0, 512)
>>> parse_snd(frame[:100])
'truncated'
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator
from urllib.parse import unquote

import numpy as np

from receivers.base import DropCounter, Flags, IQBlock, ReceiverBase, ReceiverContext
from receivers.tcp import ClosableConnection, ClosedWhileConnecting
from streamer.core.docs import doc as _doc
from streamer.core.errors import ConfigError, ReceiverFatalError, ReceiverTransientError

log = logging.getLogger(__name__)

HEADER_BYTES = 20
FRAME_SAMPLES = 512
FRAME_BYTES = HEADER_BYTES + 4 * FRAME_SAMPLES

FLAG_LPF = 0x01
FLAG_ADC_OVERFLOW = 0x02
FLAG_NEW_FREQ = 0x04
FLAG_IQ = 0x08
FLAG_COMPRESSED = 0x10
FLAG_RESTART = 0x20
FLAG_MASKED = 0x40
FLAG_LITTLE_ENDIAN = 0x80

GPS_EPOCH_UNIX_S = 315_964_800  # 1980-01-06T00:00:00Z
GPS_UTC_LEAP_S = 18
WEEK_S = 604_800
GPS_CLOCK_NOT_RUNNING = 255
MAX_KIWI_FREQ_HZ = 32e6

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_MESSAGE_BYTES = 1 << 20

_SND_HEADER = struct.Struct("<3sBIHBBII")  # SMETER is BE: fixed below
_BE_I16 = np.dtype(">i2")
_LE_I16 = np.dtype("<i2")


@dataclass(frozen=True)
class KiwiSdrOptions:
    """Keys of a ``kind = "kiwisdr"`` receiver table."""

    host: str = field(metadata=_doc("KiwiSDR host name or address (required)"))
    port: int = field(default=8073, metadata=_doc("KiwiSDR HTTP/websocket port"))
    password: str = field(default="", metadata=_doc("user password ('' for a public Kiwi)"))
    center_freq_hz: float | None = field(
        default=None, metadata=_doc("tuned frequency (Hz, sent in kHz); network.target_freq_hz if unset")
    )
    low_cut_hz: int = field(default=-5000, metadata=_doc("IQ passband lower edge relative to the centre (Hz)"))
    high_cut_hz: int = field(default=5000, metadata=_doc("IQ passband upper edge relative to the centre (Hz)"))
    agc: bool = field(default=False, metadata=_doc("let the Kiwi AGC run (power is then not absolute)"))
    gain_db: int = field(default=50, metadata=_doc("manual gain with agc = false (dB, manGain)"))
    sample_rate_hz: float = field(
        default=12_000.0, metadata=_doc("sample rate used until the server reports its exact sample_rate (Hz)")
    )
    little_endian: bool = field(default=False, metadata=_doc("ask for little-endian samples (SET little_endian)"))
    wideband: bool = field(default=False, metadata=_doc("wideband firmware: use the /wb/<ts>/SND path"))
    keepalive_s: float = field(default=1.0, metadata=_doc("interval between SET keepalive messages (s)"))
    timeout_s: float = field(
        default=10.0, metadata=_doc("connect timeout, and silence after which the stream counts as stalled (s)")
    )

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port: expected 1..65535, got {self.port!r}")
        if self.low_cut_hz >= self.high_cut_hz:
            raise ValueError(f"low_cut_hz: expected < high_cut_hz ({self.high_cut_hz}), got {self.low_cut_hz!r}")
        if self.center_freq_hz is not None and not 0 <= self.center_freq_hz <= MAX_KIWI_FREQ_HZ:
            raise ValueError(f"center_freq_hz: expected 0..32e6 Hz (KiwiSDR range), got {self.center_freq_hz!r}")
        for name in ("sample_rate_hz", "keepalive_s", "timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: expected > 0, got {getattr(self, name)!r}")


# -- pure parsing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SndFrame:
    """One parsed IQ frame (samples already scaled to full scale 1.0)."""

    flags: int
    seq: int
    smeter_raw: int
    last_gps_solution: int
    gps_tow_s: int
    gps_ns: int
    samples: np.ndarray

    @property
    def smeter_dbm(self) -> float:
        return round(0.1 * self.smeter_raw - 127.0, 1)

    @property
    def has_gps_time(self) -> bool:
        return self.last_gps_solution != GPS_CLOCK_NOT_RUNNING and (self.gps_tow_s or self.gps_ns) != 0


def parse_snd(data: bytes | bytearray | memoryview) -> SndFrame | str:
    """Parse one SND message; returns the frame or the ``bad_frame`` reason. Never raises."""
    data = bytes(data)
    if len(data) < 3:
        return "truncated"
    if data[:3] != b"SND":
        return "bad_tag"
    if len(data) < FRAME_BYTES:
        return "truncated"
    if len(data) > FRAME_BYTES:
        return "oversize"
    _, flags, seq, _, lgs, _, tow, ns = _SND_HEADER.unpack_from(data)
    smeter = int.from_bytes(data[8:10], "big")
    if not flags & FLAG_IQ:
        return "not_iq"
    if flags & FLAG_COMPRESSED:
        return "compressed"
    dtype = _LE_I16 if flags & FLAG_LITTLE_ENDIAN else _BE_I16
    iq = np.frombuffer(data, dtype=dtype, offset=HEADER_BYTES).astype(np.float32)
    iq *= np.float32(1.0 / 32768.0)
    return SndFrame(flags, seq, smeter, lgs, tow, ns, iq.view(np.complex64))


def parse_msg(text: str) -> dict[str, str | None]:
    """``"key=value key2 ..."`` (after the ``MSG`` tag) -> dict; values URL-decoded.

    >>> parse_msg("audio_init=0 audio_rate=12000 sample_rate=12001.135 foo")
    {'audio_init': '0', 'audio_rate': '12000', 'sample_rate': '12001.135', 'foo': None}
    """
    out: dict[str, str | None] = {}
    for item in text.split():
        key, eq, value = item.partition("=")
        out[key] = unquote(value) if eq else None
    return out


def gps_to_unix_ns(tow_s: int, ns: int, host_unix_ns: int, leap_s: int = GPS_UTC_LEAP_S) -> int:
    """Unix ns of a GPS time of week, in the GPS week nearest ``host_unix_ns``.

    >>> gps_to_unix_ns(0, 0, 1_700_000_000 * 10**9) // 10**9  # Sunday 2023-11-12 00:00:00 GPS
    1699747182
    """
    host_gps_ns = host_unix_ns - (GPS_EPOCH_UNIX_S - leap_s) * 10**9
    tow_ns = (tow_s % WEEK_S) * 10**9 + ns
    week = round((host_gps_ns - tow_ns) / (WEEK_S * 10**9))
    return (GPS_EPOCH_UNIX_S - leap_s + week * WEEK_S) * 10**9 + tow_ns


# -- stateful decoding (no sockets: fuzzed directly) ------------------------------------------------


class SndDecoder:
    """SND frames -> IQBlocks: seq gaps, flags, S-meter gauge and timestamps; counts what it drops."""

    def __init__(
        self,
        receiver_id: str,
        *,
        drops: DropCounter,
        gauge: Callable[[str, str, float], None],
        center_freq_hz: float,
        sample_rate_hz: float,
        gain_db: float | None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.receiver_id = receiver_id
        self.drops = drops
        self.gauge = gauge
        self.center_freq_hz = float(center_freq_hz)
        self.sample_rate_hz = float(sample_rate_hz)
        self.gain_db = gain_db
        self.clock_ns = clock_ns
        self.next_index = 0
        self._last_seq: int | None = None
        self._pending = Flags.DISCONTINUITY

    def set_sample_rate(self, rate_hz: float) -> None:
        """The server's exact rate; the next block is flagged RETUNE if it changed."""
        if rate_hz > 0 and rate_hz != self.sample_rate_hz:
            if self._last_seq is not None:
                self._pending |= Flags.RETUNE
            self.sample_rate_hz = float(rate_hz)

    def decode(self, message: bytes | bytearray | memoryview) -> IQBlock | None:
        """One binary SND message -> IQBlock, or None (counted) when it cannot be used."""
        frame = parse_snd(message)
        if isinstance(frame, str):
            self.drops.bad_frame(self.receiver_id, frame)
            return None
        self._account_seq(frame)
        self.gauge(self.receiver_id, "smeter_dbm", frame.smeter_dbm)
        if frame.flags & FLAG_MASKED:
            self.drops.samples_dropped(self.receiver_id, "masked", len(frame.samples))
            self.next_index += len(frame.samples)
            self._pending |= Flags.OVERFLOW
            return None
        flags = self._pending
        self._pending = Flags.NONE
        if frame.flags & FLAG_ADC_OVERFLOW:
            flags |= Flags.CLIPPED
        if frame.flags & FLAG_NEW_FREQ:
            flags |= Flags.RETUNE
        if frame.flags & FLAG_RESTART:
            flags |= Flags.DISCONTINUITY
        if self.gain_db is None:
            flags |= Flags.AGC
        t0_ns, source = self._time(frame)
        block = IQBlock(
            receiver_id=self.receiver_id,
            samples=frame.samples,
            sample_index=self.next_index,
            t0_ns=t0_ns,
            time_source=source,
            sample_rate=self.sample_rate_hz,
            center_freq=self.center_freq_hz,
            gain_db=self.gain_db,
            flags=flags,
        )
        self.next_index += len(frame.samples)
        return block

    def _account_seq(self, frame: SndFrame) -> None:
        last, self._last_seq = self._last_seq, frame.seq
        if last is None:
            return
        gap = (frame.seq - last - 1) & 0xFFFFFFFF
        if gap == 0:
            return
        if gap >= 1 << 31 or frame.flags & FLAG_RESTART:
            # seq went backwards (duplicate or server-side restart): nothing to count, mark it
            log.warning("%s: KiwiSDR seq went from %d to %d", self.receiver_id, last, frame.seq)
            self._pending |= Flags.DISCONTINUITY
            return
        self.drops.samples_dropped(self.receiver_id, "seq_gap", FRAME_SAMPLES * gap)
        self.next_index += FRAME_SAMPLES * gap
        self._pending |= Flags.OVERFLOW  # samples lost before the next block, counted, index jumped

    def _time(self, frame: SndFrame) -> tuple[int, str]:
        now = self.clock_ns()
        if frame.has_gps_time:
            self.gauge(self.receiver_id, "gps_fix_age_s", float(frame.last_gps_solution))
            return gps_to_unix_ns(frame.gps_tow_s, frame.gps_ns, now), "gps"
        return now - int(round(len(frame.samples) * 1e9 / self.sample_rate_hz)), "host"


# -- websocket (RFC 6455 client, the subset a Kiwi needs) -------------------------------------------


def ws_accept(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 section 1.3).

    >>> ws_accept("dGhlIHNhbXBsZSBub25jZQ==")
    's3pPLMBiTxaQ9kYGzzhZRbK+xOo='
    """
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + WS_GUID).digest()).decode("ascii")


def ws_frame(opcode: int, payload: bytes, mask_key: bytes | None = None) -> bytes:
    """One final websocket frame; masked when ``mask_key`` (4 bytes) is given (clients must mask).

    >>> ws_frame(0x1, b"Hello", bytes.fromhex("37fa213d")).hex()
    '818537fa213d7f9f4d5158'
    """
    n = len(payload)
    mask_bit = 0x80 if mask_key is not None else 0
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, mask_bit | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, mask_bit | 127, n)
    if mask_key is None:
        return head + payload
    return head + mask_key + apply_mask(payload, mask_key)


def apply_mask(payload: bytes, mask_key: bytes) -> bytes:
    """XOR ``payload`` with the repeated 4-byte key (masking and unmasking are the same)."""
    if not payload:
        return b""
    reps = mask_key * (len(payload) // 4 + 1)
    return (int.from_bytes(payload, "big") ^ int.from_bytes(reps[: len(payload)], "big")).to_bytes(len(payload), "big")


class _Closed(Exception):
    """close() was called while reading."""


class _WebSocket:
    """Buffered, poll-timeout socket reader with websocket framing; calls ``on_idle`` while waiting."""

    def __init__(self, sock: socket.socket, *, closed: threading.Event, on_idle: Callable[[], None], what: str):
        self.sock = sock
        self._closed = closed
        self._on_idle = on_idle
        self._what = what
        self._buf = bytearray()
        self._pos = 0

    def _fill(self) -> None:
        while True:
            if self._closed.is_set():
                raise _Closed
            try:
                chunk = self.sock.recv(1 << 16)
            except socket.timeout:
                self._on_idle()
                continue
            except OSError as exc:
                if self._closed.is_set():
                    raise _Closed from None
                raise ReceiverTransientError(f"{self._what}: connection lost: {exc}") from exc
            if not chunk:
                if self._closed.is_set():
                    raise _Closed  # our own close() shut the socket down
                raise ReceiverTransientError(f"{self._what}: server closed the connection")
            if self._pos > 1 << 16:
                del self._buf[: self._pos]
                self._pos = 0
            self._buf += chunk
            self._on_idle()
            return

    def read_exact(self, n: int) -> bytes:
        while len(self._buf) - self._pos < n:
            self._fill()
        out = bytes(self._buf[self._pos : self._pos + n])
        self._pos += n
        return out

    def read_http_head(self) -> bytes:
        while True:
            end = self._buf.find(b"\r\n\r\n", self._pos)
            if end >= 0:
                return self.read_exact(end + 4 - self._pos)
            if len(self._buf) - self._pos > 16384:
                raise ReceiverFatalError(f"{self._what}: HTTP response head larger than 16 KiB")
            self._fill()

    def send(self, opcode: int, payload: bytes) -> None:
        try:
            self.sock.sendall(ws_frame(opcode, payload, os.urandom(4)))
        except OSError as exc:
            if self._closed.is_set():
                raise _Closed from None
            raise ReceiverTransientError(f"{self._what}: send failed: {exc}") from exc

    def receive(self) -> tuple[int, bytes]:
        """Next complete data message ``(opcode, payload)``; answers pings, raises on close."""
        parts: list[bytes] = []
        opcode = 0
        while True:
            b0, b1 = self.read_exact(2)
            op, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self.read_exact(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self.read_exact(8))[0]
            if n > MAX_MESSAGE_BYTES:
                raise ReceiverTransientError(f"{self._what}: websocket frame of {n} bytes is not a Kiwi message")
            key = self.read_exact(4) if b1 & 0x80 else None
            payload = self.read_exact(n)
            if key is not None:
                payload = apply_mask(payload, key)
            if op == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                raise ReceiverTransientError(f"{self._what}: server closed the websocket (code {code})")
            if op == 0x9:
                self.send(0xA, payload)
                continue
            if op == 0xA:
                continue
            if op != 0:
                opcode, parts = op, []
            parts.append(payload)
            if b0 & 0x80:
                return opcode, b"".join(parts)


# -- the adapter ------------------------------------------------------------------------------------


class KiwiSdrReceiver(ReceiverBase):
    """One KiwiSDR IQ channel; see the module docstring for the protocol and mapping."""

    Options = KiwiSdrOptions
    realtime = True

    def __init__(
        self,
        receiver_id: str,
        options: KiwiSdrOptions,
        *,
        center_freq_hz: float,
        drops: DropCounter,
        gauge: Callable[[str, str, float], None],
        clock_ns: Callable[[], int] = time.time_ns,
        poll_s: float = 0.1,
    ) -> None:
        self.receiver_id = receiver_id
        self.options = options
        self.center_freq_hz = float(center_freq_hz)
        self.msg: dict[str, str | None] = {}  # latest value of every MSG key, for inspection
        self._clock_ns = clock_ns
        self._poll_s = min(poll_s, options.keepalive_s, options.timeout_s)
        self.decoder = SndDecoder(
            receiver_id,
            drops=drops,
            gauge=gauge,
            center_freq_hz=center_freq_hz,
            sample_rate_hz=options.sample_rate_hz,
            gain_db=None if options.agc else float(options.gain_db),
            clock_ns=clock_ns,
        )
        self._conn = ClosableConnection()
        self._closed = self._conn.closed
        self._ws: _WebSocket | None = None
        self._last_keepalive = 0.0
        self._last_frame = 0.0
        self._configured = False

    @classmethod
    def from_config(cls, rx, ctx: ReceiverContext) -> "KiwiSdrReceiver":
        opts = rx.options
        freq = opts.center_freq_hz if opts.center_freq_hz is not None else ctx.config.network.target_freq_hz
        if not 0 <= freq <= MAX_KIWI_FREQ_HZ:
            raise ConfigError(
                f"receiver {rx.id!r}: frequency {freq / 1e6:g} MHz is outside the KiwiSDR's 0-32 MHz range; "
                "set center_freq_hz"
            )
        return cls(rx.id, opts, center_freq_hz=freq, drops=ctx.drops, gauge=ctx.gauge)

    @property
    def path(self) -> str:
        prefix = "/wb" if self.options.wideband else ""
        return f"{prefix}/{int(time.time())}/SND"

    def close(self) -> None:
        """Stop iteration (from any thread) and release the socket."""
        self._conn.close()

    def __iter__(self) -> Iterator[IQBlock]:
        try:
            ws = self._open()
            self._send("SET auth t=kiwi p=" + self.options.password)
            while True:
                opcode, payload = ws.receive()
                tag = payload[:3]
                if tag == b"MSG":
                    self._on_msg(payload[3:].decode("utf-8", "replace"))
                    continue
                block = self.decoder.decode(payload)
                if tag == b"SND":
                    self._last_frame = time.monotonic()
                if block is not None:
                    yield block
        except _Closed:
            return
        finally:
            self.close()

    # -- connection ----------------------------------------------------------------------------

    def _open(self) -> _WebSocket:
        o = self.options
        what = f"{self.receiver_id}: KiwiSDR {o.host}:{o.port}"
        try:
            sock = self._conn.connect(o.host, o.port, timeout_s=o.timeout_s, poll_s=self._poll_s, what=what)
        except ClosedWhileConnecting:
            raise _Closed from None
        self._last_frame = time.monotonic()
        ws = _WebSocket(sock, closed=self._closed, on_idle=self._on_idle, what=what)
        self._ws = ws
        self._handshake(ws, what)
        return ws

    def _handshake(self, ws: _WebSocket, what: str) -> None:
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        path = self.path
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {self.options.host}:{self.options.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        try:
            ws.sock.sendall(request.encode("ascii"))
        except OSError as exc:
            raise ReceiverTransientError(f"{what}: cannot send the websocket upgrade: {exc}") from exc
        head = ws.read_http_head().decode("latin-1")
        status_line, _, rest = head.partition("\r\n")
        parts = status_line.split(" ", 2)
        status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0
        if status != 101:
            err = ReceiverTransientError if status >= 500 else ReceiverFatalError
            raise err(f"{what}: websocket upgrade of {path} refused: {status_line!r}")
        headers = {}
        for line in rest.split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if headers.get("sec-websocket-accept") != ws_accept(key):
            raise ReceiverFatalError(f"{what}: bad Sec-WebSocket-Accept {headers.get('sec-websocket-accept')!r}")

    def _send(self, text: str) -> None:
        assert self._ws is not None
        self._ws.send(0x1, text.encode("utf-8"))

    def _on_idle(self) -> None:
        """Called by the reader after every recv or poll timeout: keepalive and stall check."""
        now = time.monotonic()
        if self._configured and now - self._last_keepalive >= self.options.keepalive_s:
            self._last_keepalive = now
            self._send("SET keepalive")
        if now - self._last_frame > self.options.timeout_s:
            raise ReceiverTransientError(
                f"{self.receiver_id}: KiwiSDR sent no IQ frame for {self.options.timeout_s} s"
            )

    # -- messages ------------------------------------------------------------------------------

    def _on_msg(self, text: str) -> None:
        params = parse_msg(text)
        self.msg.update(params)
        if "badp" in params and params["badp"] not in ("0", None):
            if params["badp"] == "1":
                raise ReceiverFatalError(f"{self.receiver_id}: KiwiSDR rejected the password (badp=1)")
            raise ReceiverTransientError(f"{self.receiver_id}: KiwiSDR refused the login (badp={params['badp']})")
        if "too_busy" in params:
            raise ReceiverTransientError(
                f"{self.receiver_id}: KiwiSDR too busy: all {params['too_busy']} channels in use"
            )
        if "down" in params:
            raise ReceiverTransientError(f"{self.receiver_id}: KiwiSDR is down for maintenance")
        if params.get("audio_rate"):
            self._send(f"SET AR OK in={int(float(params['audio_rate']))} out=44100")
        if params.get("sample_rate"):
            try:
                rate = float(params["sample_rate"])
            except ValueError:
                rate = 0.0
            self.decoder.set_sample_rate(rate)
            if not self._configured:
                self._configure()

    def _configure(self) -> None:
        o = self.options
        self._send(f"SET mod=iq low_cut={o.low_cut_hz} high_cut={o.high_cut_hz} freq={self.center_freq_hz / 1e3:.3f}")
        self._send(f"SET agc={int(o.agc)} hang=0 thresh=-100 slope=6 decay=1000 manGain={o.gain_db}")
        self._send("SET compression=0")
        if o.little_endian:
            self._send("SET little_endian")
        self._send("SET keepalive")
        self._last_keepalive = time.monotonic()
        self._configured = True
