"""rtl_tcp: an RTL-SDR dongle served over TCP by ``rtl_tcp`` (osmocom rtl-sdr).

Wire format (all integers big-endian)::

    server -> client, once on connect (12 bytes)
      offset 0   4 bytes  ASCII "RTL0"
      offset 4   u32 BE   tuner type (1 E4000, 2 FC0012, 3 FC0013, 4 FC2580, 5 R820T, 6 R828D)
      offset 8   u32 BE   number of gain steps the tuner has
    server -> client, then forever: unframed u8 pairs I0 Q0 I1 Q1 ...  (offset ~127.5)

    client -> server, any time: 5-byte commands  u8 command | u32 BE parameter
      0x01 centre frequency (Hz)        0x02 sample rate (Hz)
      0x03 gain mode (0 auto, 1 manual) 0x04 tuner gain (tenths of dB, two's complement)
      0x05 frequency correction (ppm, two's complement)   (0x06..0x0e: IF gain, AGC, ... unused here)

What this adapter does: connect, check the ``RTL0`` magic (anything else is ``ReceiverFatalError``
naming the bytes that arrived: it is not an rtl_tcp server), send sample rate, frequency,
correction, gain mode and (manual only) gain, then read the stream into fixed blocks of
``block_samples`` and convert each byte with ``(x - 127.5) / 127.5`` to complex64 (full scale 1.0).

Quirks
------
* No timestamps and no sequence numbers: ``t0_ns`` is the host receive time of the block's last
  byte minus the block duration (``time_source="host"``), and **loss cannot be detected** — rtl_tcp
  silently frees its oldest queued buffers when the client is slow. ``sample_index`` counts the
  samples received on this connection (from 0); the first block carries ``Flags.DISCONTINUITY``.
* The stream is unframed: a ``recv`` may end mid-pair (odd byte count); bytes accumulate in one
  buffer, so a trailing odd byte is simply completed by the next read and I/Q never misalign.
* librtlsdr refuses sample rates outside 225001–300000 and 900001–3200000 Hz and rtl_tcp then keeps
  the old rate without telling the client, so such rates are rejected in the config.
* With ``gain_db`` unset the tuner AGC runs: blocks carry ``Flags.AGC`` and ``gain_db=None``.
* A server that stops sending for ``timeout_s`` raises ``ReceiverTransientError`` (the buffered,
  incomplete block is yielded first); so does a closed connection. ``close()`` from another
  thread ends iteration within ``poll_s``.

Examples
--------
>>> command(CMD_SET_FREQ, 145_500_000).hex()
'0108ac2760'
>>> command(CMD_SET_GAIN, -10).hex()
'04fffffff6'
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from receivers.base import Flags, IQBlock, ReceiverBase, ReceiverContext
from receivers.tcp import ClosableConnection
from streamer.core.docs import doc as _doc
from streamer.core.errors import ReceiverFatalError, ReceiverTransientError

log = logging.getLogger(__name__)

CMD_SET_FREQ = 0x01
CMD_SET_SAMPLE_RATE = 0x02
CMD_SET_GAIN_MODE = 0x03
CMD_SET_GAIN = 0x04
CMD_SET_FREQ_CORRECTION = 0x05

MAGIC = b"RTL0"
HANDSHAKE_BYTES = 12
TUNERS = {1: "E4000", 2: "FC0012", 3: "FC0013", 4: "FC2580", 5: "R820T", 6: "R828D"}

#: u8 -> float32 lookup: one gather converts a whole block.
_LUT = ((np.arange(256, dtype=np.float32) - np.float32(127.5)) / np.float32(127.5)).astype(np.float32)


def _valid_rtl_rate(rate_hz: float) -> bool:
    return 225_001 <= rate_hz <= 300_000 or 900_001 <= rate_hz <= 3_200_000


@dataclass(frozen=True)
class RtlTcpOptions:
    """Keys of a ``kind = "rtl_tcp"`` receiver table."""

    host: str = field(default="127.0.0.1", metadata=_doc("rtl_tcp server host name or address"))
    port: int = field(default=1234, metadata=_doc("rtl_tcp server TCP port"))
    center_freq_hz: float | None = field(
        default=None, metadata=_doc("tuned centre frequency (Hz); network.target_freq_hz if unset")
    )
    sample_rate_hz: float = field(
        default=2_048_000.0, metadata=_doc("sample rate (Hz): 225001-300000 or 900001-3200000")
    )
    gain_db: float | None = field(
        default=None, metadata=_doc("manual tuner gain (dB, sent in tenths); unset = tuner AGC")
    )
    freq_correction_ppm: int = field(default=0, metadata=_doc("crystal frequency correction (ppm)"))
    block_samples: int = field(default=65_536, metadata=_doc("complex samples per IQBlock"))
    timeout_s: float = field(
        default=5.0, metadata=_doc("connect timeout, and silence after which the stream counts as stalled (s)")
    )

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port: expected 1..65535, got {self.port!r}")
        if not _valid_rtl_rate(self.sample_rate_hz):
            raise ValueError(
                f"sample_rate_hz: expected 225001-300000 or 900001-3200000 Hz (librtlsdr), got {self.sample_rate_hz!r}"
            )
        if self.center_freq_hz is not None and not 0 < self.center_freq_hz < 2**32:
            raise ValueError(f"center_freq_hz: expected 0 < f < 2**32 Hz, got {self.center_freq_hz!r}")
        if self.block_samples < 1:
            raise ValueError(f"block_samples: expected >= 1, got {self.block_samples!r}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s: expected > 0, got {self.timeout_s!r}")


def command(cmd: int, param: int) -> bytes:
    """One 5-byte rtl_tcp command: u8 ``cmd`` and ``param`` as u32 BE (negative: two's complement)."""
    return struct.pack(">BI", cmd, param & 0xFFFFFFFF)


def setup_commands(center_freq_hz: float, sample_rate_hz: float, gain_db: float | None, ppm: int) -> list[bytes]:
    """The commands sent after the handshake, in order."""
    cmds = [
        command(CMD_SET_SAMPLE_RATE, int(round(sample_rate_hz))),
        command(CMD_SET_FREQ, int(round(center_freq_hz))),
        command(CMD_SET_FREQ_CORRECTION, int(ppm)),
        command(CMD_SET_GAIN_MODE, 0 if gain_db is None else 1),
    ]
    if gain_db is not None:
        cmds.append(command(CMD_SET_GAIN, int(round(gain_db * 10))))
    return cmds


def parse_handshake(data: bytes) -> tuple[int, int]:
    """``(tuner_type, gain_count)`` from the 12-byte greeting; ``ReceiverFatalError`` if not ``RTL0``."""
    if len(data) != HANDSHAKE_BYTES or data[:4] != MAGIC:
        raise ReceiverFatalError(f"not an rtl_tcp server: expected greeting starting b'RTL0', got {bytes(data)!r}")
    tuner, gains = struct.unpack(">II", data[4:12])
    return tuner, gains


def u8_to_complex64(data: bytes | bytearray | memoryview) -> np.ndarray:
    """Interleaved u8 I/Q (even length) -> complex64, full scale 1.0 (a new array)."""
    return _LUT[np.frombuffer(data, dtype=np.uint8)].view(np.complex64)


class RtlTcpReceiver(ReceiverBase):
    """Reads an rtl_tcp server; see the module docstring for the wire format and quirks."""

    Options = RtlTcpOptions
    realtime = True

    def __init__(
        self,
        receiver_id: str,
        options: RtlTcpOptions,
        *,
        center_freq_hz: float,
        clock_ns: Callable[[], int] = time.time_ns,
        poll_s: float = 0.2,
    ) -> None:
        self.receiver_id = receiver_id
        self.options = options
        self.center_freq_hz = float(center_freq_hz)
        self.tuner_type: int | None = None
        self.gain_count: int | None = None
        self._clock_ns = clock_ns
        self._poll_s = min(poll_s, options.timeout_s)
        self._conn = ClosableConnection()
        self._closed = self._conn.closed

    @classmethod
    def configured_band_hz(cls, options: RtlTcpOptions | None, config) -> tuple[float, float]:
        """(centre, sample rate) in Hz, as the config sets them (centre unset: the target)."""
        opts = options if options is not None else RtlTcpOptions()
        freq = opts.center_freq_hz if opts.center_freq_hz is not None else config.network.target_freq_hz
        return freq, opts.sample_rate_hz

    @classmethod
    def from_config(cls, rx, ctx: ReceiverContext) -> "RtlTcpReceiver":
        opts = rx.options if rx.options is not None else RtlTcpOptions()
        freq, _ = cls.configured_band_hz(opts, ctx.config)
        return cls(rx.id, opts, center_freq_hz=freq)

    def close(self) -> None:
        """Stop iteration (from any thread) and release the socket."""
        self._conn.close()

    def __iter__(self) -> Iterator[IQBlock]:
        sock = self._connect()
        try:
            yield from self._stream(sock)
        finally:
            self.close()

    # -- connection ----------------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        o = self.options
        return self._conn.connect(o.host, o.port, timeout_s=o.timeout_s, poll_s=self._poll_s,
                                  what=f"{self.receiver_id}: rtl_tcp")

    def _recv_into(self, sock: socket.socket, view: memoryview, last_data: float) -> int:
        """Bytes read into ``view``; 0 when closed; raises on EOF or a stall longer than timeout_s."""
        while not self._closed.is_set():
            try:
                n = sock.recv_into(view)
            except socket.timeout:
                if time.monotonic() - last_data > self.options.timeout_s:
                    raise ReceiverTransientError(
                        f"{self.receiver_id}: rtl_tcp sent nothing for {self.options.timeout_s} s"
                    ) from None
                continue
            except OSError as exc:
                if self._closed.is_set():
                    return 0
                raise ReceiverTransientError(f"{self.receiver_id}: rtl_tcp connection lost: {exc}") from exc
            if n == 0:
                if self._closed.is_set():
                    return 0  # our own close() shut the socket down
                raise _EndOfStream
            return n
        return 0

    def _handshake(self, sock: socket.socket) -> bool:
        """Read and check the greeting; False if ``close()`` interrupted it."""
        buf = bytearray(HANDSHAKE_BYTES)
        view = memoryview(buf)
        have = 0
        last = time.monotonic()
        try:
            while have < HANDSHAKE_BYTES:
                n = self._recv_into(sock, view[have:], last)
                if n == 0:
                    return False
                have += n
                if buf[: min(have, 4)] != MAGIC[: min(have, 4)]:
                    break  # wrong magic: say what arrived without waiting for 12 bytes
        except _EndOfStream:
            if have and buf[: min(have, 4)] != MAGIC[: min(have, 4)]:
                parse_handshake(bytes(buf[:have]))
            raise ReceiverTransientError(
                f"{self.receiver_id}: rtl_tcp closed the connection during the greeting ({have} of 12 bytes)"
            ) from None
        self.tuner_type, self.gain_count = parse_handshake(bytes(buf[:have]))
        log.info(
            "%s: rtl_tcp tuner %s, %d gain steps",
            self.receiver_id,
            TUNERS.get(self.tuner_type, f"type {self.tuner_type}"),
            self.gain_count,
        )
        return True

    def _send_setup(self, sock: socket.socket) -> None:
        o = self.options
        payload = b"".join(setup_commands(self.center_freq_hz, o.sample_rate_hz, o.gain_db, o.freq_correction_ppm))
        try:
            sock.sendall(payload)
        except OSError as exc:
            raise ReceiverTransientError(f"{self.receiver_id}: cannot send rtl_tcp commands: {exc}") from exc

    # -- stream --------------------------------------------------------------------------------

    def _stream(self, sock: socket.socket) -> Iterator[IQBlock]:
        if not self._handshake(sock):
            return
        self._send_setup(sock)
        nbytes = 2 * self.options.block_samples
        buf = bytearray(nbytes)
        view = memoryview(buf)
        have = 0
        index = 0
        first = True
        last_data = time.monotonic()
        last_ns = self._clock_ns()
        while True:
            try:
                n = self._recv_into(sock, view[have:], last_data)
            except (_EndOfStream, ReceiverTransientError) as exc:
                if have >= 2:
                    yield self._block(buf, have - have % 2, index, last_ns, first)
                if isinstance(exc, _EndOfStream):
                    raise ReceiverTransientError(
                        f"{self.receiver_id}: rtl_tcp closed the connection after {index + have // 2} samples"
                    ) from None
                raise
            if n == 0:
                return
            have += n
            last_data = time.monotonic()
            last_ns = self._clock_ns()
            if have == nbytes:
                yield self._block(buf, nbytes, index, last_ns, first)
                index += nbytes // 2
                first = False
                have = 0

    def _block(self, buf: bytearray, nbytes: int, index: int, last_ns: int, first: bool) -> IQBlock:
        o = self.options
        samples = u8_to_complex64(memoryview(buf)[:nbytes])
        flags = Flags.NONE
        if first:
            flags |= Flags.DISCONTINUITY
        if o.gain_db is None:
            flags |= Flags.AGC
        duration_ns = int(round(len(samples) * 1e9 / o.sample_rate_hz))
        return IQBlock(
            receiver_id=self.receiver_id,
            samples=samples,
            sample_index=index,
            t0_ns=last_ns - duration_ns,
            time_source="host",
            sample_rate=float(o.sample_rate_hz),
            center_freq=self.center_freq_hz,
            gain_db=o.gain_db,
            flags=flags,
        )


class _EndOfStream(Exception):
    """The server closed the connection (recv returned 0)."""
