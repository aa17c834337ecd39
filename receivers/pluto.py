"""ADALM-Pluto (AD9363/AD9364) through pyadi-iio and libiio: kind ``pluto``.

Device and library facts this adapter relies on
-----------------------------------------------
- ``adi.Pluto(uri="ip:HOST" | "ip:HOST:PORT" | "usb:B.D.I")`` opens an IIO context through libiio. The
  URI is always explicit here: without one pyadi-iio scans (USB, then Avahi for ``pluto.local``), which
  is slow, picks an arbitrary device and needs Avahi.
- libiio 0.24 with pylibiio 0.25 (pylibiio 1.x refuses libiio 0.x). Over ``ip:`` libiio speaks iiod's
  ASCII protocol and opens a second TCP connection per buffer; ``timeout_ms`` bounds every wait, a
  stalled or dropped link raises ``OSError`` (ETIMEDOUT, EPIPE, ECONNRESET…) from ``rx()``.
- Controls (``ad9361-phy``): ``rx_lo`` (``altvoltage0`` frequency), ``sample_rate`` (≥ 521 kS/s: lower
  rates need the FPGA decimator, which pyadi-iio's setter refuses; it also loads the matching FIR),
  ``rx_rf_bandwidth``, ``gain_control_mode_chan0`` (``manual``, ``slow_attack``, ``fast_attack``) and
  ``rx_hardwaregain_chan0`` (only written in manual mode; the driver rounds it, we read it back).
- Data (``cf-ad9361-lpc``): ``voltage0``/``voltage1`` are I and Q, 12-bit two's complement in 16 bits
  (``le:S12/16>>0``). ``rx()`` returns ``rx_buffer_size`` samples as complex128 *raw counts*, with no
  timestamp and no overflow flag. The buffer is created by the first ``rx()``.
- The kernel keeps ``kernel_buffers`` DMA blocks (4 by default); when they are all full the DMA stalls
  and the samples produced meanwhile are lost silently. With 4, loss starts around 3 MS/s over USB; 16
  or more is the known fix. It must be set (``_rxadc.set_kernel_buffers_count``) before the first
  ``rx()``.

Timestamps and lost samples (time source "host")
------------------------------------------------
The stream is anchored at the host time when the first block arrives (minus that block's duration);
after that ``t0_ns = anchor + sample_index / sample_rate``. Nothing on the wire says that samples were
lost, so the adapter infers it from timing. After each ``rx()`` it compares the samples the device must
have produced since the anchor, ``(now − anchor)·rate``, with the index one past this block; the
difference is the *deficit*:

- If ``rx()`` waited between half a block and two blocks' time, the kernel queue was empty and this
  block has just been filled, so the deficit should be under one block. A deficit above one block +
  ``drop_tolerance_s`` is lost data: all of it is counted.
- Otherwise (the call returned at once from a queue, or the link stalled for longer) this block may
  have waited behind up to ``kernel_buffers`` others; only the part of the deficit that those blocks
  cannot explain (deficit − (kernel_buffers + 1) blocks − tolerance) is certainly lost and counted now;
  the rest, if lost, shows up on the next block that arrives fresh.

Counted samples go to ``drops.samples_dropped(id, "overflow", n)``, ``sample_index`` jumps by ``n``
and the block carries ``Flags.OVERFLOW``. The estimate is good to about one block plus the tolerance.
Host scheduling hiccups longer than a block + tolerance while the queue is empty read as loss, and a
sample clock slower than the host clock by 25 ppm reads as one small "loss" every few minutes: choose
``drop_tolerance_s`` above the host's worst scheduling delay.

Scaling: the AD936x ADC is 12 bits, so raw counts span −2048…2047 and the samples are divided by 2048:
a full-scale tone has magnitude 1.0, which is the dBFS reference the features use (IQBlock contract).

Example
-------
>>> from receivers.pluto import PlutoOptions
>>> PlutoOptions(uri="ip:192.168.2.1", rx_lo_hz=433.92e6).kernel_buffers
16
"""

from __future__ import annotations

import errno
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from receivers.base import Flags, IQBlock, ReceiverBase, ReceiverContext
from streamer.core.docs import doc as _doc
from streamer.core.errors import MissingDependencyError, ReceiverFatalError, ReceiverTransientError

if TYPE_CHECKING:
    from streamer.config import ReceiverConfig

INSTALL_HINT = "pip install -e '.[pluto]' (needs libiio 0.x: apt-get install libiio0)"
FULL_SCALE_COUNTS = 2048.0  # 12-bit ADC: raw counts −2048…2047
GAIN_MODES = ("manual", "slow_attack", "fast_attack")
MIN_SAMPLE_RATE_HZ = 521e3
MAX_SAMPLE_RATE_HZ = 61.44e6
#: errno values that mean the link (not the configuration) failed
_LINK_ERRNOS = {
    errno.ETIMEDOUT, errno.EPIPE, errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED,
    errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EIO, errno.ENOTCONN, errno.EAGAIN, errno.EINTR,
}


@dataclass(frozen=True)
class PlutoOptions:
    """Keys of a ``kind = "pluto"`` receiver table."""

    uri: str = field(metadata=_doc("libiio URI, explicit: 'ip:192.168.2.1', 'ip:host:30431' or 'usb:1.2.5' (no scanning)"))
    rx_lo_hz: float = field(default=145.5e6, metadata=_doc("RX local oscillator (Hz); stock AD9363 tunes 325e6..3.8e9"))
    sample_rate_hz: float = field(default=1_000_000.0, metadata=_doc("complex sample rate (Hz), 521e3..61.44e6"))
    rf_bandwidth_hz: float = field(default=1_000_000.0, metadata=_doc("analog RX filter bandwidth (Hz), 200e3..56e6"))
    gain_mode: str = field(default="manual", metadata=_doc("'manual', 'slow_attack' or 'fast_attack' (AGC)"))
    gain_db: float = field(default=40.0, metadata=_doc("RX gain in manual mode (dB, -3..71); ignored under AGC"))
    buffer_size: int = field(default=32768, metadata=_doc("samples per rx() block (one libiio buffer)"))
    kernel_buffers: int = field(default=16, metadata=_doc("kernel DMA blocks; 4 loses data above ~3 MS/s, use >= 16"))
    timeout_ms: int = field(default=5000, metadata=_doc("libiio timeout: a stalled link raises after this long (ms)"))
    drop_tolerance_s: float = field(
        default=0.05, metadata=_doc("host-time slack before a timing deficit counts as lost samples (s)")
    )

    def __post_init__(self) -> None:
        uri = self.uri.strip()
        if not uri or ":" not in uri or uri.split(":", 1)[0] not in ("ip", "usb", "serial", "local"):
            raise ValueError(f"uri: expected an explicit libiio URI such as 'ip:192.168.2.1', got {self.uri!r}")
        if not MIN_SAMPLE_RATE_HZ <= self.sample_rate_hz <= MAX_SAMPLE_RATE_HZ:
            raise ValueError(f"sample_rate_hz: expected 521e3..61.44e6, got {self.sample_rate_hz!r}")
        if self.gain_mode not in GAIN_MODES:
            raise ValueError(f"gain_mode: expected one of {', '.join(GAIN_MODES)}, got {self.gain_mode!r}")
        if self.rx_lo_hz <= 0 or self.rf_bandwidth_hz <= 0:
            raise ValueError("rx_lo_hz and rf_bandwidth_hz: expected > 0")
        if self.buffer_size < 64:
            raise ValueError(f"buffer_size: expected >= 64 samples, got {self.buffer_size!r}")
        if self.kernel_buffers < 1:
            raise ValueError(f"kernel_buffers: expected >= 1, got {self.kernel_buffers!r}")
        if self.timeout_ms < 1 or self.drop_tolerance_s < 0:
            raise ValueError("timeout_ms: expected >= 1; drop_tolerance_s: expected >= 0")


def import_adi() -> Any:
    """Import pyadi-iio (and through it libiio), or say how to install it."""
    try:
        import adi  # noqa: PLC0415 - optional dependency, imported only when a Pluto is opened
    # ModuleNotFoundError: no package. Without libiio.so, pylibiio's CDLL(find_library("iio")) becomes CDLL(None),
    # the interpreter itself, and its first symbol lookup raises AttributeError; an OSError where a broken one loads.
    except (ImportError, OSError, AttributeError) as exc:
        raise MissingDependencyError(f"receiver kind 'pluto' needs pyadi-iio and libiio: {INSTALL_HINT} ({exc})") from exc
    return adi


def _errno_of(exc: BaseException) -> int | None:
    """The errno carried by ``exc`` or by the exception it was raised from (pyadi-iio re-wraps)."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, OSError) and exc.errno:
            return abs(exc.errno)
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _detached(exc: BaseException) -> BaseException:
    """A copy of ``exc`` that keeps its message and errno but no traceback (so no frames, no buffers)."""
    code = _errno_of(exc)
    return OSError(code, str(exc)) if code is not None else RuntimeError(f"{type(exc).__name__}: {exc}")


def translate_error(exc: BaseException, what: str) -> Exception:
    """Map a libiio / pyadi-iio exception to ReceiverTransientError or ReceiverFatalError."""
    code = _errno_of(exc)
    if code in _LINK_ERRNOS:
        return ReceiverTransientError(f"{what}: link failed: {exc} (errno {code})")
    if isinstance(exc, ValueError):
        return ReceiverFatalError(f"{what}: value refused: {exc}")
    if code is not None:
        return ReceiverFatalError(f"{what}: device refused: {exc} (errno {code})")
    if "No device found" in str(exc):  # pyadi-iio's wrapper around a context that would not open
        return ReceiverTransientError(f"{what}: cannot open the IIO context: {exc}")
    return ReceiverFatalError(f"{what}: {type(exc).__name__}: {exc}")


class PlutoReceiver(ReceiverBase):
    """Stream IQBlocks from an ADALM-Pluto; ``from_config`` connects and configures it."""

    Options = PlutoOptions
    realtime = True

    def __init__(
        self,
        receiver_id: str,
        options: PlutoOptions,
        ctx: ReceiverContext,
        *,
        adi_module: Any = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.receiver_id = receiver_id
        self.options = options
        self._drops = ctx.drops
        self._gauge = ctx.gauge
        self._monotonic = monotonic
        self._wall_ns = wall_ns
        adi = adi_module if adi_module is not None else import_adi()
        self._sdr = self._open(adi)

    @classmethod
    def from_config(cls, rx: "ReceiverConfig", ctx: ReceiverContext) -> "PlutoReceiver":
        return cls(rx.id, rx.options, ctx)

    @classmethod
    def check_dependencies(cls) -> None:
        """Raise ``MissingDependencyError`` with the install command when pyadi-iio or libiio is missing."""
        import_adi()

    @classmethod
    def configured_band_hz(cls, options: PlutoOptions, config: Any) -> tuple[float, float]:
        """(centre, sample rate) in Hz, as the config sets them."""
        return options.rx_lo_hz, options.sample_rate_hz

    # -- setup -----------------------------------------------------------------------------------

    def _open(self, adi: Any) -> Any:
        opts = self.options
        where = f"pluto {self.receiver_id!r} at {opts.uri}"
        try:
            sdr = adi.Pluto(uri=opts.uri)
        except Exception as exc:  # noqa: BLE001 - foreign errors are mapped at this edge
            raise translate_error(exc, f"{where}: open") from exc
        try:
            sdr.ctx.set_timeout(opts.timeout_ms)
            sdr.sample_rate = int(opts.sample_rate_hz)
            sdr.rx_rf_bandwidth = int(opts.rf_bandwidth_hz)
            sdr.rx_lo = int(opts.rx_lo_hz)
            sdr.gain_control_mode_chan0 = opts.gain_mode
            if opts.gain_mode == "manual":
                sdr.rx_hardwaregain_chan0 = float(opts.gain_db)
            sdr.rx_enabled_channels = [0]
            sdr.rx_buffer_size = int(opts.buffer_size)
            sdr._rxadc.set_kernel_buffers_count(int(opts.kernel_buffers))  # before the first rx()
            # read back what the driver actually set (it rounds rate, LO and gain)
            self.sample_rate_hz = float(sdr.sample_rate)
            self.center_freq_hz = float(sdr.rx_lo)
            self.gain_db = float(sdr.rx_hardwaregain_chan0) if opts.gain_mode == "manual" else None
        except Exception as exc:  # noqa: BLE001
            _release(sdr)
            raise translate_error(exc, f"{where}: configure") from exc
        return sdr

    # -- streaming --------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[IQBlock]:
        if self._sdr is None:
            raise ReceiverTransientError(f"pluto {self.receiver_id!r}: closed")
        opts = self.options
        n = opts.buffer_size
        rate = self.sample_rate_hz
        block_s = n / rate
        tolerance = opts.drop_tolerance_s * rate
        base_flags = Flags.NONE if opts.gain_mode == "manual" else Flags.AGC
        anchor_mono = anchor_wall_ns = None
        next_index = 0
        while True:
            called = self._monotonic()
            raw = self._rx()
            now = self._monotonic()
            if anchor_mono is None:
                anchor_mono = now - block_s
                anchor_wall_ns = self._wall_ns() - int(round(block_s * 1e9))
            flags = base_flags
            lost = self._lost_samples(now - anchor_mono, next_index + len(raw), now - called, block_s, tolerance)
            if lost:
                self._drops.samples_dropped(self.receiver_id, "overflow", lost)
                next_index += lost
                flags |= Flags.OVERFLOW
            # raw 12-bit counts -> full scale 1.0 (see the module docstring)
            samples = np.multiply(raw, 1.0 / FULL_SCALE_COUNTS, out=np.empty(raw.shape, np.complex64), casting="same_kind")
            yield IQBlock(
                receiver_id=self.receiver_id,
                samples=samples,
                sample_index=next_index,
                t0_ns=anchor_wall_ns + int(round(next_index * 1e9 / rate)),
                time_source="host",
                sample_rate=rate,
                center_freq=self.center_freq_hz,
                gain_db=self.gain_db,
                flags=flags,
            )
            next_index += len(raw)

    def _rx(self) -> np.ndarray:
        sdr = self._sdr
        if sdr is None:
            raise ReceiverTransientError(f"pluto {self.receiver_id!r}: closed")
        try:
            return np.asarray(sdr.rx())
        except Exception as exc:  # noqa: BLE001
            failure = translate_error(exc, f"pluto {self.receiver_id!r}: rx")
            if isinstance(failure, ReceiverFatalError) and _errno_of(exc) is None:
                failure = ReceiverTransientError(str(failure))  # any rx() failure means the stream is gone
            failure.__cause__ = _detached(exc)
            # The traceback's frames hold the iio.Buffer that pyadi-iio just dropped; left to the cycle
            # collector it may be freed after its context, and libiio 0.x then crashes (use after free).
            traceback.clear_frames(exc.__traceback__)
        raise failure  # outside the except block: no __context__ keeps the old frames alive

    def _lost_samples(self, elapsed_s: float, end_index: int, waited_s: float, block_s: float, tolerance: float) -> int:
        """Samples certainly lost before this block, from host timing (heuristic in the module doc)."""
        n = self.options.buffer_size
        rate = self.sample_rate_hz
        deficit = elapsed_s * rate - end_index
        self._gauge(self.receiver_id, "host_lag_seconds", max(deficit, 0.0) / rate)
        fresh = 0.5 * block_s <= waited_s <= 2.0 * block_s
        queued = 0 if fresh else self.options.kernel_buffers * n
        if deficit <= n + queued + tolerance:
            return 0
        return int(deficit - queued)

    def close(self) -> None:
        """Destroy the buffer (while the context still exists), then release the context."""
        sdr, self._sdr = self._sdr, None
        if sdr is not None:
            _release(sdr)


def _release(sdr: Any) -> None:
    """Buffer first, context second: libiio 0.x's buffer destructor still needs its device."""
    try:
        sdr.rx_destroy_buffer()
    except Exception:  # noqa: BLE001 - the link may already be gone; nothing left to release then
        pass
    try:
        sdr._rxadc = None
        sdr._ctrl = None
        sdr._txdac = None
        sdr.close()
    except Exception:  # noqa: BLE001
        pass
