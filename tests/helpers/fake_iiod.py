"""A small fake iiod: libiio 0.x's ASCII network protocol over TCP, serving a Pluto-like context.

The real libiio (0.24) and pyadi-iio connect to it with ``uri="ip:127.0.0.1:PORT"``, so tests run
the vendor stack end to end without hardware. Written from libiio 0.24's iiod/ and iiod-client.c.

Wire format (client lines end in ``\\r\\n``; every reply starts with a decimal integer line, a negative
value is ``-errno``):

- ``VERSION`` -> ``0.24.fakeiio\\n`` (major.minor.7-char git tag).
- ``ZPRINT`` (zstd XML) -> ``-22`` so the client falls back to ``PRINT`` -> ``<len>\\n<xml>\\n``.
- ``TIMEOUT <ms>`` -> ``0``.
- ``READ <dev> [INPUT|OUTPUT <chn>|DEBUG|BUFFER] <attr>`` -> ``<len>\\n<value>\\n``.
- ``WRITE <dev> [INPUT|OUTPUT <chn>|DEBUG|BUFFER] <attr> <len>`` then ``len`` raw bytes (the value plus
  its NUL) -> ``<len>``.
- ``SET <dev> BUFFERS_COUNT <n>`` -> ``0``.
- ``OPEN <dev> <samples> <mask hex> [CYCLIC]`` -> ``0`` (libiio opens a second TCP connection per buffer).
- ``READBUF <dev> <bytes>`` -> ``<bytes>\\n<mask hex>\\n<data>``; ``CLOSE <dev>`` -> ``0``.

The capture device produces a complex tone as interleaved little-endian int16 I, Q (12-bit values,
``le:S12/16>>0`` like the AD9361) in real time from ``OPEN``. It models the kernel's DMA queue: at most
``buffers_count`` blocks wait for the reader; while they are all full the DMA stalls and the samples
produced meanwhile are lost (counted in ``lost_samples``), exactly where a Pluto loses them.

Misbehaviour on request: ``pause(seconds)`` (the next READBUF answer is held back: the reader stalls and
the queue overflows), ``stall()`` (READBUF never answers until ``close``), ``disconnect_mid_buffer()``
(the next READBUF sends half its data, then the server drops every connection).
"""

from __future__ import annotations

import functools
import math
import socket
import threading
import time
from collections import deque
from fractions import Fraction
from dataclasses import dataclass, field

import numpy as np

VERSION_LINE = b"0.24.fakeiio\n"
EINVAL, ENOENT, ENODEV = 22, 2, 19

PHY = "iio:device0"
ADC = "iio:device2"
DDS = "iio:device3"

# (device id, direction or None for device attrs, channel id or None, attribute) -> initial value
_INITIAL_ATTRS: dict[tuple[str, str | None, str | None, str], str] = {
    (PHY, "output", "altvoltage0", "frequency"): "2400000000",
    (PHY, "output", "altvoltage0", "powerdown"): "0",
    (PHY, "output", "altvoltage1", "frequency"): "2450000000",
    (PHY, "output", "altvoltage1", "powerdown"): "0",
    (PHY, "input", "voltage0", "sampling_frequency"): "30720000",
    (PHY, "input", "voltage0", "rf_bandwidth"): "18000000",
    (PHY, "input", "voltage0", "gain_control_mode"): "slow_attack",
    (PHY, "input", "voltage0", "gain_control_mode_available"): "manual fast_attack slow_attack hybrid",
    (PHY, "input", "voltage0", "hardwaregain"): "71.000000 dB",
    (PHY, "input", "voltage0", "rssi"): "108.25 dB",
    (PHY, "input", "voltage0", "rf_port_select"): "A_BALANCED",
    (PHY, "input", "voltage0", "quadrature_tracking_en"): "1",
    (PHY, "input", "voltage0", "rf_dc_offset_tracking_en"): "1",
    (PHY, "input", "voltage0", "bb_dc_offset_tracking_en"): "1",
    (PHY, "input", "voltage0", "filter_fir_en"): "0",
    (PHY, "output", "voltage0", "sampling_frequency"): "30720000",
    (PHY, "output", "voltage0", "rf_bandwidth"): "18000000",
    (PHY, "output", "voltage0", "hardwaregain"): "-10.000000 dB",
    (PHY, "output", "voltage0", "filter_fir_en"): "0",
    (PHY, "input", "out", "voltage_filter_fir_en"): "0",
    (PHY, None, None, "filter_fir_config"): "FIR Rx: 0,0 Tx: 0,0",
    (PHY, None, None, "rx_path_rates"): "BBPLL:983040000 ADC:245760000 R2:122880000 R1:61440000 RF:30720000 RXSAMP:30720000",
    (PHY, None, None, "tx_path_rates"): "BBPLL:983040000 DAC:122880000 T2:122880000 T1:61440000 TF:30720000 TXSAMP:30720000",
    (PHY, None, None, "ensm_mode"): "fdd",
    (PHY, None, None, "calib_mode"): "auto",
    (ADC, "input", "voltage0", "sampling_frequency"): "30720000",
    (ADC, "input", "voltage0", "sampling_frequency_available"): "30720000 3840000",
    (ADC, "input", "voltage0", "calibscale"): "1.000000",
    (ADC, "input", "voltage1", "calibscale"): "1.000000",
    (DDS, "output", "voltage0", "sampling_frequency"): "30720000",
    (DDS, "output", "voltage0", "sampling_frequency_available"): "30720000 3840000",
    (DDS, "output", "altvoltage0", "frequency"): "9279985",
    (DDS, "output", "altvoltage0", "scale"): "0.000000",
    (DDS, "output", "altvoltage0", "raw"): "1",
    (DDS, "output", "altvoltage1", "frequency"): "9279985",
    (DDS, "output", "altvoltage1", "scale"): "0.000000",
    (DDS, "output", "altvoltage1", "raw"): "1",
    (DDS, "output", "altvoltage2", "frequency"): "9279985",
    (DDS, "output", "altvoltage2", "scale"): "0.000000",
    (DDS, "output", "altvoltage2", "raw"): "1",
    (DDS, "output", "altvoltage3", "frequency"): "9279985",
    (DDS, "output", "altvoltage3", "scale"): "0.000000",
    (DDS, "output", "altvoltage3", "raw"): "1",
}

_NAMES = {PHY: "ad9361-phy", ADC: "cf-ad9361-lpc", DDS: "cf-ad9361-dds-core-lpc"}
_CHANNEL_NAMES = {(PHY, "altvoltage0"): "RX_LO", (PHY, "altvoltage1"): "TX_LO"}
# scan elements: (device, channel) -> (index, format); 12-bit samples sign-extended in 16 bits
_SCAN = {
    (ADC, "voltage0"): (0, "le:S12/16&gt;&gt;0"),
    (ADC, "voltage1"): (1, "le:S12/16&gt;&gt;0"),
    (DDS, "voltage0"): (0, "le:S16/16&gt;&gt;0"),
    (DDS, "voltage1"): (1, "le:S16/16&gt;&gt;0"),
}


# libiio validates the context XML against an inline DTD (it complains without one)
_DTD = """<!DOCTYPE context [
<!ELEMENT context (context-attribute*, device*)>
<!ELEMENT context-attribute EMPTY>
<!ELEMENT device (channel*, attribute*, debug-attribute*, buffer-attribute*)>
<!ELEMENT channel (scan-element?, attribute*)>
<!ELEMENT attribute EMPTY>
<!ELEMENT scan-element EMPTY>
<!ELEMENT debug-attribute EMPTY>
<!ELEMENT buffer-attribute EMPTY>
<!ATTLIST context name CDATA #REQUIRED version-major CDATA #IMPLIED version-minor CDATA #IMPLIED version-git CDATA #IMPLIED description CDATA #IMPLIED>
<!ATTLIST context-attribute name CDATA #REQUIRED value CDATA #REQUIRED>
<!ATTLIST device id CDATA #REQUIRED name CDATA #IMPLIED label CDATA #IMPLIED>
<!ATTLIST channel id CDATA #REQUIRED type (input|output) #REQUIRED name CDATA #IMPLIED>
<!ATTLIST scan-element index CDATA #REQUIRED format CDATA #REQUIRED scale CDATA #IMPLIED>
<!ATTLIST attribute name CDATA #REQUIRED filename CDATA #IMPLIED>
<!ATTLIST debug-attribute name CDATA #REQUIRED>
<!ATTLIST buffer-attribute name CDATA #REQUIRED>
]>"""


def _context_xml(attrs: dict) -> bytes:
    """Build the context XML the way iiod 0.24 prints it (devices, channels, attributes)."""
    out = [
        '<?xml version="1.0" encoding="utf-8"?>',
        _DTD,
        '<context name="network" version-major="0" version-minor="24" version-git="fakeiio" '
        'description="fake iiod (heimdall tests) PlutoSDR-like">',
        '<context-attribute name="hw_model" value="Analog Devices PlutoSDR Rev.C (Z7010-AD9363A)" />',
        '<context-attribute name="ip,ip-addr" value="127.0.0.1" />',
    ]
    for dev in (PHY, ADC, DDS):
        out.append(f'<device id="{dev}" name="{_NAMES[dev]}" >')
        channels: dict[tuple[str, str], list[str]] = {}
        for (d, direction, chn, attr) in attrs:
            if d == dev and chn is not None:
                channels.setdefault((chn, direction), []).append(attr)
        for (chn, direction) in sorted(set(channels) | {(c, "input" if dev != DDS else "output") for (d, c) in _SCAN if d == dev}):
            name = _CHANNEL_NAMES.get((dev, chn))
            name_attr = f' name="{name}"' if name else ""
            out.append(f'<channel id="{chn}"{name_attr} type="{direction}" >')
            if (dev, chn) in _SCAN and direction == ("output" if dev == DDS else "input"):
                index, fmt = _SCAN[(dev, chn)]
                out.append(f'<scan-element index="{index}" format="{fmt}" />')
            for attr in channels.get((chn, direction), []):
                prefix = "out" if direction == "output" else "in"
                out.append(f'<attribute name="{attr}" filename="{prefix}_{chn}_{attr}" />')
            out.append("</channel>")
        for (d, direction, chn, attr) in attrs:
            if d == dev and chn is None:
                out.append(f'<attribute name="{attr}" />')
        out.append("</device>")
    out.append("</context>")
    return "\n".join(out).encode()


@dataclass
class _Stream:
    """One opened capture buffer: real-time producer + the kernel's bounded DMA block queue."""

    samples_per_block: int
    rate_hz: float
    blocks_max: int
    t_open: float = field(default_factory=time.monotonic)
    next_fill: int = 0  # stream position the DMA writes next
    queued: deque = field(default_factory=deque)  # start positions of full blocks waiting

    def produced(self, now: float) -> int:
        return int((now - self.t_open) * self.rate_hz)

    def fill(self, now: float) -> int:
        """Move produced samples into free blocks; return how many samples the stalled DMA lost."""
        lost = 0
        n = self.samples_per_block
        produced = self.produced(now)
        while produced >= self.next_fill + n:
            if len(self.queued) >= self.blocks_max:
                # every block is full: what is produced until a block frees is lost
                skip = (produced - self.next_fill) // n * n
                lost += skip
                self.next_fill += skip
                break
            self.queued.append(self.next_fill)
            self.next_fill += n
        return lost

    def wait_time(self, now: float) -> float:
        """Seconds until the next block is full (0 when one is queued)."""
        if self.queued:
            return 0.0
        return max(0.0, (self.next_fill + self.samples_per_block) / self.rate_hz - (now - self.t_open))


class FakeIiod:
    """Serve a Pluto-like IIO context on 127.0.0.1:0; use as a context manager.

    Parameters
    ----------
    tone_hz : frequency of the complex tone the ADC delivers (Hz, baseband).
    amplitude_counts : tone amplitude in ADC counts (full scale of the 12-bit ADC is 2048).
    """

    def __init__(self, *, tone_hz: float = 100e3, amplitude_counts: int = 1024) -> None:
        self.tone_hz = tone_hz
        self.amplitude_counts = amplitude_counts
        self.attrs: dict = dict(_INITIAL_ATTRS)
        self.writes: list[tuple[tuple, str]] = []  # ((dev, direction, chn, attr), value) in order
        self.commands: list[str] = []
        self.buffers_count: dict[str, int] = {}
        self.lost_samples = 0
        self.samples_served = 0
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._pause_s = 0.0
        self._stall = threading.Event()
        self._stop = threading.Event()
        self._disconnect = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # accept() wakes up to notice close()
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name="fake-iiod", daemon=True)

    @property
    def uri(self) -> str:
        return f"ip:127.0.0.1:{self.port}"

    def __enter__(self) -> "FakeIiod":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._drop_connections()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._listener.close()

    # -- misbehaviour -------------------------------------------------------------------------------

    def pause(self, seconds: float) -> None:
        """Hold back the next READBUF answer for ``seconds`` while the ADC keeps producing."""
        self._pause_s = seconds

    def stall(self) -> None:
        """Stop answering READBUF (the connection stays open)."""
        self._stall.set()

    def disconnect_mid_buffer(self) -> None:
        """Send half of the next READBUF's data, then drop every connection."""
        self._disconnect = True

    # -- queries for tests --------------------------------------------------------------------------

    def attr(self, dev_name: str, direction: str | None, chn: str | None, attr: str) -> str:
        dev = {v: k for k, v in _NAMES.items()}[dev_name]
        return self.attrs[(dev, direction, chn, attr)]

    def written(self, dev_name: str, direction: str | None, chn: str | None, attr: str) -> list[str]:
        dev = {v: k for k, v in _NAMES.items()}[dev_name]
        return [value for key, value in self.writes if key == (dev, direction, chn, attr)]

    def tone(self, start: int, n: int) -> np.ndarray:
        """The exact int16 I/Q samples [start, start + n) of the stream, as complex128 counts."""
        rate = float(self.attrs[(ADC, "input", "voltage0", "sampling_frequency")])
        period = self._tone_period(rate)
        if period is not None:  # one period computed once: the fake must not be the benchmark's bottleneck
            return np.take(self._tone_table(rate, period), np.arange(start, start + n) % period)
        return self._tone_samples(rate, np.arange(start, start + n, dtype=np.float64))

    def _wire_samples(self, start: int, n: int) -> bytes | memoryview:
        """Samples [start, start + n) as the wire carries them: interleaved little-endian int16 I, Q."""
        rate = float(self.attrs[(ADC, "input", "voltage0", "sampling_frequency")])
        period = self._tone_period(rate)
        if period is None:
            return _interleaved_i16(self.tone(start, n))
        # A periodic tone: slice the bytes out of a precomputed run, so serving costs no arithmetic.
        run = self._wire_run(rate, period, n)
        offset = 4 * (start % period)
        return memoryview(run)[offset : offset + 4 * n]

    @functools.lru_cache(maxsize=4)  # noqa: B019 - a handful of (rate, size) pairs per fake
    def _wire_run(self, rate: float, period: int, n: int) -> bytes:
        """At least ``n + period`` samples of the tone from stream position 0, as wire bytes."""
        table = self._tone_table(rate, period)
        reps = -(-(n + period) // period)
        return _interleaved_i16(np.tile(table, reps))

    def _tone_samples(self, rate: float, k: np.ndarray) -> np.ndarray:
        phase = 2 * np.pi * self.tone_hz / rate * k
        i = np.round(self.amplitude_counts * np.cos(phase))
        q = np.round(self.amplitude_counts * np.sin(phase))
        return i + 1j * q

    def _tone_period(self, rate: float) -> int | None:
        ratio = Fraction(self.tone_hz / rate).limit_denominator(1 << 20)
        return ratio.denominator if math.isclose(float(ratio), self.tone_hz / rate, rel_tol=0, abs_tol=1e-15) else None

    @functools.lru_cache(maxsize=4)  # noqa: B019 - a handful of rates per fake, freed with it in tests
    def _tone_table(self, rate: float, period: int) -> np.ndarray:
        return self._tone_samples(rate, np.arange(period, dtype=np.float64))

    # -- server -------------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.setblocking(True)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), name="fake-iiod-conn", daemon=True).start()

    def _drop_connections(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        state: dict = {}
        try:
            while not self._stop.is_set():
                line = reader.readline()
                if not line:
                    return
                words = line.decode("ascii", "replace").split()
                if not words:
                    continue
                with self._lock:
                    self.commands.append(" ".join(words))
                if not self._dispatch(conn, reader, words, state):
                    return
        except OSError:
            return
        finally:
            reader.close()
            conn.close()

    def _dispatch(self, conn, reader, words: list[str], state: dict) -> bool:
        cmd = words[0].upper()
        if cmd == "VERSION":
            conn.sendall(VERSION_LINE)
        elif cmd == "PRINT":
            xml = _context_xml(self.attrs)
            conn.sendall(b"%d\n" % len(xml) + xml + b"\n")
        elif cmd in ("TIMEOUT", "SETTRIG"):
            conn.sendall(b"0\n")
        elif cmd == "READ":
            self._read_attr(conn, words)
        elif cmd == "WRITE":
            self._write_attr(conn, reader, words)
        elif cmd == "SET" and len(words) == 4 and words[2].upper() == "BUFFERS_COUNT":
            self.buffers_count[words[1]] = int(words[3])
            conn.sendall(b"0\n")
        elif cmd == "OPEN":
            self._open(conn, words, state)
        elif cmd == "READBUF":
            return self._readbuf(conn, words, state)
        elif cmd == "CLOSE":
            state.pop("stream", None)
            conn.sendall(b"0\n")
        elif cmd == "EXIT":
            return False
        else:  # ZPRINT, GETTRIG, WRITEBUF, …: not supported here
            conn.sendall(b"%d\n" % -EINVAL)
        return True

    @staticmethod
    def _attr_key(words: list[str]) -> tuple:
        """Parse ``<dev> [INPUT|OUTPUT <chn>] <attr>`` into the attrs key."""
        dev = words[1]
        if len(words) >= 5 and words[2].upper() in ("INPUT", "OUTPUT"):
            return (dev, words[2].lower(), words[3], words[4])
        return (dev, None, None, words[-1] if len(words) == 3 else words[3])

    def _read_attr(self, conn, words: list[str]) -> None:
        key = self._attr_key(words)
        value = self.attrs.get(key)
        if value is None:
            conn.sendall(b"%d\n" % -ENOENT)
            return
        data = value.encode()
        conn.sendall(b"%d\n" % len(data) + data + b"\n")

    def _write_attr(self, conn, reader, words: list[str]) -> None:
        length = int(words[-1])
        key = self._attr_key(words[:-1])
        payload = reader.read(length)
        value = payload.split(b"\0", 1)[0].decode()
        if key not in self.attrs:
            conn.sendall(b"%d\n" % -ENOENT)
            return
        with self._lock:
            self.attrs[key] = self._normalise(key, value)
            self.writes.append((key, value))
        conn.sendall(b"%d\n" % length)

    def _normalise(self, key: tuple, value: str) -> str:
        """Mirror the few attributes the driver keeps in step (rates shared by phy, ADC and DDS)."""
        if key[3] == "sampling_frequency":
            rate = str(int(float(value)))
            for k in list(self.attrs):
                if k[3] == "sampling_frequency":
                    self.attrs[k] = rate
            return rate
        if key[3] == "hardwaregain":
            return f"{float(value):.6f} dB"
        return value

    def _open(self, conn, words: list[str], state: dict) -> None:
        samples = int(words[2])
        dev = words[1]
        rate = float(self.attrs[(ADC, "input", "voltage0", "sampling_frequency")])
        state["stream"] = _Stream(samples, rate, self.buffers_count.get(dev, 4))
        state["mask"] = words[3].encode()
        conn.sendall(b"0\n")

    def _readbuf(self, conn, words: list[str], state: dict) -> bool:
        stream: _Stream | None = state.get("stream")
        if stream is None:
            conn.sendall(b"%d\n" % -EINVAL)
            return True
        nbytes = int(words[2])
        n = nbytes // 4
        if self._pause_s:
            pause, self._pause_s = self._pause_s, 0.0
            if self._stop.wait(pause):
                return False
        while self._stall.is_set() and not self._stop.is_set():
            self._stop.wait(0.05)
        if self._stop.is_set():
            return False
        with self._lock:
            self.lost_samples += stream.fill(time.monotonic())
        while (wait := stream.wait_time(time.monotonic())) > 0:
            if self._stop.wait(wait):
                return False
            with self._lock:
                self.lost_samples += stream.fill(time.monotonic())
        start = stream.queued.popleft()
        payload = self._wire_samples(start, n)
        header = b"%d\n" % len(payload) + state["mask"] + b"\n"
        if self._disconnect:
            self._disconnect = False
            conn.sendall(header + payload[: len(payload) // 2])
            self._drop_connections()
            return False
        conn.sendall(header)
        conn.sendall(payload)
        with self._lock:
            self.samples_served += n
        return True


def _interleaved_i16(iq: np.ndarray) -> bytes:
    data = np.empty(2 * len(iq), dtype="<i2")
    data[0::2] = iq.real
    data[1::2] = iq.imag
    return data.tobytes()


def expected_phase_step(tone_hz: float, rate_hz: float) -> float:
    """Radians per sample of the fake's tone."""
    return 2 * math.pi * tone_hz / rate_hz
