"""Protocol-speaking fake peers for the network adapters: an rtl_tcp server and a KiwiSDR.

Both listen on 127.0.0.1 port 0, serve each connection in its own thread, record what the client
sent (raw 5-byte rtl_tcp commands; KiwiSDR websocket text messages), stream a known tone whose
sample ``k`` (absolute, counted from 0 on each connection) is a pure function of ``k``, and
misbehave on request. The websocket side is written here from RFC 6455 (not shared with the
adapter's client code) so the two can disagree.

Tone sample k: ``A * exp(2j*pi*f*k/fs)`` quantised as the real peer would send it (u8 with offset
127.5 for rtl_tcp, int16 for the Kiwi); ``expected_u8(...)`` / ``expected_i16(...)`` give the
exact values so tests compare bit for bit.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
import threading
import time
from urllib.parse import quote

import numpy as np

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# -- tones --------------------------------------------------------------------------------------------


def expected_u8(start: int, n: int, *, fs: float, tone_hz: float, amplitude: float) -> np.ndarray:
    """Interleaved u8 I/Q of tone samples start..start+n (what the fake rtl_tcp sends)."""
    k = np.arange(start, start + n, dtype=np.float64)
    ph = 2 * np.pi * tone_hz * k / fs
    out = np.empty(2 * n, dtype=np.uint8)
    out[0::2] = np.clip(np.rint(127.5 + 127.5 * amplitude * np.cos(ph)), 0, 255)
    out[1::2] = np.clip(np.rint(127.5 + 127.5 * amplitude * np.sin(ph)), 0, 255)
    return out


def expected_i16(start: int, n: int, *, fs: float, tone_hz: float, amplitude: float) -> np.ndarray:
    """Interleaved int16 I/Q of tone samples start..start+n (what the fake Kiwi sends)."""
    k = np.arange(start, start + n, dtype=np.float64)
    ph = 2 * np.pi * tone_hz * k / fs
    out = np.empty(2 * n, dtype=np.int16)
    out[0::2] = np.rint(32767 * amplitude * np.cos(ph))
    out[1::2] = np.rint(32767 * amplitude * np.sin(ph))
    return out


# -- common TCP plumbing ----------------------------------------------------------------------------


class _Server:
    """Accept loop on 127.0.0.1:0; ``_serve(conn, n)`` runs per connection in its own thread."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.address = self._listener.getsockname()[:2]
        self.stopping = threading.Event()
        self.cond = threading.Condition()
        self.connections = 0
        self.errors: list[str] = []
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        return self.address[1]

    def __enter__(self):
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        with self.cond:
            self.cond.notify_all()
        for conn in list(self._conns):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._acceptor.is_alive():
            self._acceptor.join(5)
        for t in self._threads:
            t.join(5)
        for conn in self._conns:
            conn.close()
        self._listener.close()

    def wait_for(self, predicate, timeout: float = 5.0) -> bool:
        """Wait (on the server's condition, not a sleep) until ``predicate()`` is true."""
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def _accept_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.cond:
                self.connections += 1
                n = self.connections
                self.cond.notify_all()
            self._conns.append(conn)
            t = threading.Thread(target=self._run, args=(conn, n), daemon=True)
            self._threads.append(t)
            t.start()

    def _run(self, conn: socket.socket, n: int) -> None:
        try:
            self._serve(conn, n)
        except OSError:
            pass  # the client went away: normal for a streaming server
        finally:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _serve(self, conn: socket.socket, n: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


# -- rtl_tcp ----------------------------------------------------------------------------------------


class FakeRtlTcpServer(_Server):
    """rtl_tcp: 12-byte greeting, then u8 I/Q of a tone; records every 5-byte command.

    Parameters
    ----------
    n_samples : samples per connection, None = endless.
    after : what follows the last sample: "close" or "stall".
    chunk_bytes : sizes of successive ``send`` calls, cycled (odd sizes split I/Q pairs).
    pace_hz : send in real time at this sample rate (None = as fast as the socket takes it).
    magic : the first four greeting bytes (b"RTL0" for a real server).
    """

    def __init__(
        self,
        *,
        fs: float = 2_048_000.0,
        tone_hz: float = 32_000.0,
        amplitude: float = 0.5,
        n_samples: int | None = 262_144,
        after: str = "close",
        chunk_bytes: tuple[int, ...] = (65_536,),
        pace_hz: float | None = None,
        magic: bytes = b"RTL0",
        tuner: int = 5,
        gain_count: int = 29,
        period_samples: int = 1 << 16,
    ) -> None:
        super().__init__()
        self.fs, self.tone_hz, self.amplitude = fs, tone_hz, amplitude
        self.n_samples, self.after, self.chunk_bytes, self.pace_hz = n_samples, after, chunk_bytes, pace_hz
        self.greeting = magic + struct.pack(">II", tuner, gain_count)
        self.commands: list[bytes] = []
        self.sent_samples = 0
        # the tone repeats exactly every period_samples when tone_hz * period / fs is an integer
        cycles = tone_hz * period_samples / fs
        if abs(cycles - round(cycles)) > 1e-9:
            raise ValueError("tone_hz must put a whole number of cycles in period_samples")
        self._period = expected_u8(0, period_samples, fs=fs, tone_hz=tone_hz, amplitude=amplitude).tobytes()

    def expected_u8(self, start: int, n: int) -> np.ndarray:
        """The exact interleaved u8 bytes of samples start..start+n on a connection."""
        period = np.frombuffer(self._period, dtype=np.uint8).reshape(-1, 2)
        return period[np.arange(start, start + n) % len(period)].reshape(-1)

    def wait_commands(self, n: int, timeout: float = 5.0) -> list[bytes]:
        self.wait_for(lambda: len(self.commands) >= n, timeout)
        with self.cond:
            return list(self.commands)

    def _read_commands(self, conn: socket.socket, mine: list[bytes], gone: threading.Event) -> None:
        buf = b""
        while not self.stopping.is_set():
            try:
                data = conn.recv(4096)
            except OSError:
                data = b""
            if not data:
                with self.cond:
                    gone.set()
                    self.cond.notify_all()
                return
            buf += data
            with self.cond:
                while len(buf) >= 5:
                    self.commands.append(buf[:5])
                    mine.append(buf[:5])
                    buf = buf[5:]
                self.cond.notify_all()

    def _serve(self, conn: socket.socket, n: int) -> None:
        # blocking socket: stop() shuts it down, which ends both the reader and a blocked sendall
        mine: list[bytes] = []  # this connection's commands
        gone = threading.Event()  # the client hung up
        reader = threading.Thread(target=self._read_commands, args=(conn, mine, gone), daemon=True)
        reader.start()
        self._threads.append(reader)
        conn.sendall(self.greeting)
        total = None if self.n_samples is None else 2 * self.n_samples
        period = memoryview(self._period)
        pos, sent, i = 0, 0, 0
        t_start = time.monotonic()
        while (total is None or sent < total) and not self.stopping.is_set():
            size = self.chunk_bytes[i % len(self.chunk_bytes)]
            i += 1
            if total is not None:
                size = min(size, total - sent)
            chunk = bytearray()
            while len(chunk) < size:
                take = min(size - len(chunk), len(period) - pos)
                chunk += period[pos : pos + take]
                pos = (pos + take) % len(period)
            conn.sendall(chunk)
            sent += size
            with self.cond:
                self.sent_samples += size // 2
            if self.pace_hz:
                ahead = sent / 2 / self.pace_hz - (time.monotonic() - t_start)
                if ahead > 0:
                    self.stopping.wait(ahead)  # pacing the source, not synchronising with the client
        if self.after == "stall":
            self.wait_for(lambda: gone.is_set() or self.stopping.is_set(), None)
            return
        # before closing, let the client's setup commands arrive so tests can check them
        self.wait_for(lambda: len(mine) >= 4 or gone.is_set(), 2.0)


# -- KiwiSDR ----------------------------------------------------------------------------------------


def _ws_frame(opcode: int, payload: bytes) -> bytes:
    """Server frame: final, unmasked (RFC 6455 5.1: servers must not mask)."""
    n = len(payload)
    if n < 126:
        return bytes([0x80 | opcode, n]) + payload
    if n < 65536:
        return bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big") + payload
    return bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big") + payload


def _recv_exact(conn: socket.socket, n: int, stopping: threading.Event) -> bytes:
    out = b""
    while len(out) < n:
        if stopping.is_set():
            raise OSError("server stopping")
        chunk = conn.recv(n - len(out))
        if not chunk:
            raise OSError("client closed")
        out += chunk
    return out


class FakeKiwiServer(_Server):
    """A KiwiSDR sound channel in IQ mode over a websocket.

    It records each websocket path and every text message the client sends, checks the
    client masks its frames (``errors`` lists violations), answers ``SET auth`` with ``MSG badp=0``
    then ``audio_rate`` / ``sample_rate``, and starts IQ frames only after both ``SET AR OK`` and
    ``SET mod=iq`` arrived (as a real Kiwi only streams once set up).

    Parameters
    ----------
    n_frames : frames per connection (None = endless); ``after``: "close" or "stall".
    faults : frame number -> "skip" (seq gap), "truncate", "bad_tag", "overflow", "masked",
        "new_freq".
    gps : (last_gps_solution, tow_s, ns) of frame 0; later frames advance by 512 / fs. None: zeros.
    password : the accepted password; ``too_busy``: answer ``MSG too_busy=4`` and close.
    pace : send frames in real time (512 / fs apart) instead of as fast as possible.
    iq_cache_frames : for benchmarks, reuse the IQ of frames ``i % iq_cache_frames`` (headers stay
        exact) so generating the tone does not limit the rate; None = every frame computed exactly.
    """

    def __init__(
        self,
        *,
        fs: float = 12_001.135,
        tone_hz: float = 1_000.0,
        amplitude: float = 0.5,
        n_frames: int | None = 20,
        after: str = "close",
        faults: dict[int, str] | None = None,
        seq_start: int = 1000,
        smeter_raw: int = 600,
        gps: tuple[int, int, int] | None = None,
        password: str = "",
        too_busy: bool = False,
        pace: bool = False,
        msg_opcode: int = 0x2,
        send_ping: bool = False,
        iq_cache_frames: int | None = None,
    ) -> None:
        super().__init__()
        self.iq_cache_frames = iq_cache_frames
        self._iq_cache: dict[tuple[int, bool], bytes] = {}
        self.fs, self.tone_hz, self.amplitude = fs, tone_hz, amplitude
        self.n_frames, self.after, self.faults = n_frames, after, dict(faults or {})
        self.seq_start, self.smeter_raw, self.gps = seq_start, smeter_raw, gps
        self.password, self.too_busy, self.pace = password, too_busy, pace
        self.msg_opcode, self.send_ping = msg_opcode, send_ping
        self.paths: list[str] = []
        self.messages: list[str] = []
        self.pongs: list[bytes] = []
        self.frames_sent = 0

    def count(self, prefix: str) -> int:
        with self.cond:
            return sum(1 for m in self.messages if m.startswith(prefix))

    # -- websocket server side --------------------------------------------------------------

    def _accept_ws(self, conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            head += _recv_exact(conn, 1, self.stopping)
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        with self.cond:
            self.paths.append(path)
            self.cond.notify_all()
        if method != "GET" or headers.get("upgrade", "").lower() != "websocket" or headers.get(
            "sec-websocket-version"
        ) != "13":
            self.errors.append(f"bad upgrade request: {head!r}")
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            raise OSError("bad upgrade")
        key = headers["sec-websocket-key"]
        if len(base64.b64decode(key)) != 16:
            self.errors.append(f"Sec-WebSocket-Key is not 16 bytes: {key!r}")
        accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
        conn.sendall(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode()
        )

    def _read_client(self, conn: socket.socket, mine: list[str], gone: threading.Event) -> None:
        """Reader thread: unmask client frames, record text messages and pongs."""
        try:
            while True:
                b0, b1 = _recv_exact(conn, 2, self.stopping)
                n = b1 & 0x7F
                if n == 126:
                    n = int.from_bytes(_recv_exact(conn, 2, self.stopping), "big")
                elif n == 127:
                    n = int.from_bytes(_recv_exact(conn, 8, self.stopping), "big")
                if not b1 & 0x80:
                    self.errors.append("client frame not masked")
                    key = b"\0\0\0\0"
                else:
                    key = _recv_exact(conn, 4, self.stopping)
                data = bytes(b ^ key[i % 4] for i, b in enumerate(_recv_exact(conn, n, self.stopping)))
                op = b0 & 0x0F
                with self.cond:
                    if op == 0x1:
                        self.messages.append(data.decode())
                        mine.append(data.decode())
                    elif op == 0xA:
                        self.pongs.append(data)
                    elif op == 0x8:
                        return
                    else:
                        self.errors.append(f"unexpected client opcode {op}")
                    self.cond.notify_all()
        except OSError:
            return
        finally:
            with self.cond:
                gone.set()
                self.cond.notify_all()

    def _send_msg(self, conn: socket.socket, text: str) -> None:
        conn.sendall(_ws_frame(self.msg_opcode, b"MSG " + text.encode()))

    # -- the Kiwi ---------------------------------------------------------------------------

    def frame(self, i: int, *, little_endian: bool) -> bytes:
        """Frame number ``i`` of a connection, with its fault applied."""
        fault = self.faults.get(i)
        flags = 0x08 | (0x80 if little_endian else 0)
        flags |= {"overflow": 0x02, "masked": 0x40, "new_freq": 0x04}.get(fault, 0)
        lgs, tow, ns = 255, 0, 0
        if self.gps is not None:
            lgs, tow0, ns0 = self.gps
            t_ns = tow0 * 10**9 + ns0 + round(i * 512 * 1e9 / self.fs)
            tow, ns = (t_ns // 10**9) % 604_800, t_ns % 10**9
        head = b"SND" + struct.pack("<BI", flags, (self.seq_start + i) & 0xFFFFFFFF)
        head += struct.pack(">H", self.smeter_raw) + struct.pack("<BBII", lgs, 0, tow, ns)
        body = self._iq(i if self.iq_cache_frames is None else i % self.iq_cache_frames, little_endian)
        frame = head + body
        if fault == "truncate":
            return frame[:1000]
        if fault == "bad_tag":
            return b"XYZ" + frame[3:]
        return frame

    def _iq(self, i: int, little_endian: bool) -> bytes:
        key = (i, little_endian)
        if key not in self._iq_cache:
            iq = expected_i16(512 * i, 512, fs=self.fs, tone_hz=self.tone_hz, amplitude=self.amplitude)
            body = iq.astype("<i2" if little_endian else ">i2").tobytes()
            if self.iq_cache_frames is None:
                return body
            self._iq_cache[key] = body
        return self._iq_cache[key]

    def _serve(self, conn: socket.socket, n: int) -> None:
        # blocking socket: stop() shuts it down, which ends both the reader and a blocked sendall
        self._accept_ws(conn)
        mine: list[str] = []  # this connection's messages
        gone = threading.Event()  # the client hung up
        reader = threading.Thread(target=self._read_client, args=(conn, mine, gone), daemon=True)
        reader.start()
        self._threads.append(reader)
        if self.send_ping:
            conn.sendall(_ws_frame(0x9, b"are you there"))
        self.wait_for(lambda: any(m.startswith("SET auth") for m in mine) or gone.is_set())
        auth = next((m for m in mine if m.startswith("SET auth")), "")
        if self.too_busy:
            self._send_msg(conn, "too_busy=4")
            return self._close(conn, gone)
        if auth != f"SET auth t=kiwi p={self.password}":
            self._send_msg(conn, "badp=1")
            return self._close(conn, gone)
        self._send_msg(conn, "version_maj=1 version_min=550")
        self._send_msg(conn, "badp=0")
        cfg = quote(json.dumps({"rx_gps": "(45.000000, 7.000000)", "rx_name": "fake kiwi"}))
        self._send_msg(conn, f"load_cfg={cfg}")
        self._send_msg(conn, f"audio_init=0 audio_rate=12000 sample_rate={self.fs:.6f}")
        ready = self.wait_for(
            lambda: gone.is_set()
            or (any(m.startswith("SET AR OK") for m in mine) and any(m.startswith("SET mod=iq") for m in mine))
        )
        if not ready or gone.is_set():
            self.errors.append("client never sent SET AR OK and SET mod=iq")
            return
        i, t_start = 0, time.monotonic()
        while (self.n_frames is None or i < self.n_frames) and not self.stopping.is_set():
            little = "SET little_endian" in mine
            if self.faults.get(i) != "skip":
                conn.sendall(_ws_frame(0x2, self.frame(i, little_endian=little)))
            i += 1
            with self.cond:
                self.frames_sent = i
                self.cond.notify_all()
            if self.pace:
                ahead = i * 512 / self.fs - (time.monotonic() - t_start)
                if ahead > 0:
                    self.stopping.wait(ahead)  # pacing the source, not synchronising with the client
        if self.after == "stall":
            self.wait_for(lambda: gone.is_set() or self.stopping.is_set(), None)
            return
        self._close(conn, gone)

    def _close(self, conn: socket.socket, gone: threading.Event) -> None:
        """Websocket close frame, then wait for the client to hang up (closing with unread input is a RST)."""
        conn.sendall(_ws_frame(0x8, struct.pack("!H", 1000)))
        self.wait_for(gone.is_set, 2.0)
