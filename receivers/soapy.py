"""SoapySDR receivers (RTL-SDR, Airspy, HackRF, LimeSDR, USRP, SDRplay, …): kind ``"soapy"``.

The SoapySDR streaming API, as this adapter uses it
---------------------------------------------------
- ``Device(kwargs)`` opens a device. ``Device.enumerate(kwargs)`` runs every module's ``find``; the
  adapter opens the single match with the kwargs ``find`` returned (plus the user's extra keys), which
  is also the key of SoapySDR's per-process device cache: a second ``Device(same kwargs)`` returns the
  *same* object until every holder has called ``Device.unmake`` (``close()`` here), so a reconnect must
  release the old device first. Two matches are refused: name a ``serial=``.
- ``setupStream(SOAPY_SDR_RX, format, [channel], {stream args})``, ``activateStream``, then
  ``readStream(stream, [buffer], n, timeoutUs=…)`` -> ``ret`` (elements read, or an error code),
  ``flags``, ``timeNs``. Formats: ``"CF32"`` complex float32 with full scale 1.0; ``"CS16"`` interleaved
  int16 I/Q in device counts. Streams are not thread-safe; the binding releases the GIL while reading.
- Error codes: -1 TIMEOUT (no data yet: not an error), -2 STREAM_ERROR, -3 CORRUPTION, -4 OVERFLOW
  (the host was too slow and the device lost samples), -5 NOT_SUPPORTED, -6 TIME_ERROR, -7 UNDERFLOW.
  Flags: HAS_TIME (1 << 2: ``timeNs`` is the device time of the first sample), END_BURST (1 << 1),
  MORE_FRAGMENTS (1 << 5).
- ``getNativeStreamFormat(dir, ch, &fullScale)`` gives the converter's format and full scale (e.g.
  ``"CS16"``, 2048 for a 12-bit ADC). The 0.8 Python binding cannot call it (its SWIG wrapper
  has no typemap for the ``double &`` out-parameter), so the adapter calls the C API
  ``SoapySDRDevice_getNativeStreamFormat`` through ctypes on the same device pointer.
- ``getStreamMTU(stream)`` is the efficient read size.

What the adapter yields
-----------------------
Every ``readStream`` result with ``ret > 0`` becomes one ``IQBlock`` of complex64 samples with full
scale 1.0: CF32 is copied as is; CS16 is divided by the native full scale when the native format is
CS16, else by 32768 (SoapySDR's converters widen CS8/CU8 to the full int16 range).

- ``sample_index`` counts samples from the first block (0). With HAS_TIME, the adapter predicts each
  block's timestamp from the previous one; a later timestamp is a gap of
  ``round(Δt · sample_rate)`` samples, and ``sample_index`` jumps by it so the pipeline sees the gap.
- ``t0_ns``: ``timeNs`` when the block has HAS_TIME (``time_source = "device"``; the device clock must
  be on Unix time, e.g. disciplined by a GPSDO; otherwise set ``device_time = false``), else the host
  clock when ``readStream`` returned minus the block's duration (``time_source = "host"``).
- OVERFLOW (-4) and CORRUPTION (-3) set ``Flags.OVERFLOW`` on the next block. With HAS_TIME, the lost
  samples are measured from the timestamps and counted with
  ``drops.samples_dropped(id, "overflow" | "corruption", n)``. Without time (RTL-SDR never sets
  HAS_TIME) the size of the loss is unknown: the event is counted with ``drops.bad_frame(id,
  "overflow")`` and ``sample_index`` stays contiguous; the host ``t0_ns`` still moves on, so the
  window aligner can see the jump between clock and sample count.
- ``Flags.AGC`` is set on every block when ``gain_db`` is unset (automatic gain).
- TIMEOUT is not an error; only ``stall_s`` without a single sample raises.

Errors: any SoapySDR exception is translated here. No match, a lost device, STREAM_ERROR and
exceptions while streaming raise ``ReceiverTransientError`` (the runner reconnects with backoff;
``close()`` has already released the device). A configuration the device rejects (channel, antenna,
format, an invalid argument) raises ``ReceiverFatalError``. A missing binding raises
``MissingDependencyError`` with the install command.

Examples
--------
>>> opts = SoapyOptions(device_args="driver=rtlsdr,serial=00000001", sample_rate_hz=2.048e6)
>>> opts.stream_format, opts.gain_db
('CF32', None)
>>> SoapyOptions(stream_format="CS8")
Traceback (most recent call last):
...
ValueError: stream_format: expected 'CF32' or 'CS16', got 'CS8'
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import logging
import threading
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Iterator

import numpy as np

from receivers.base import DropCounter, Flags, IQBlock, ReceiverBase, ReceiverContext
from streamer.core.docs import doc as _doc
from streamer.core.errors import MissingDependencyError, ReceiverFatalError, ReceiverTransientError

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "apt-get install python3-soapysdr soapysdr-tools libsoapysdr-dev "
    "(plus the module for your radio, e.g. soapysdr-module-rtlsdr) && scripts/link-soapysdr .venv"
)

# SoapySDR/Errors.h and Constants.h; the same numbers on every platform.
TIMEOUT, STREAM_ERROR, CORRUPTION, OVERFLOW, NOT_SUPPORTED, TIME_ERROR, UNDERFLOW = -1, -2, -3, -4, -5, -6, -7
HAS_TIME = 1 << 2
STREAM_FORMATS = ("CF32", "CS16")
DEFAULT_READ_SIZE = 16384  # used when a module reports an MTU of 0


def _no_gauge(receiver_id: str, name: str, value: float) -> None:
    return None


@dataclass(frozen=True)
class SoapyOptions:
    """Keys of a ``kind = "soapy"`` receiver table."""

    device_args: str = field(
        default="", metadata=_doc("SoapySDR device arguments, e.g. 'driver=rtlsdr,serial=00000001'; must match one device")
    )
    sample_rate_hz: float = field(default=2.048e6, metadata=_doc("sample rate (Hz)"))
    center_freq_hz: float = field(default=145.5e6, metadata=_doc("tuned centre frequency (Hz)"))
    gain_db: float | None = field(default=None, metadata=_doc("overall gain (dB); unset = automatic gain (AGC)"))
    antenna: str = field(default="", metadata=_doc("antenna port name (listAntennas); empty = device default"))
    bandwidth_hz: float = field(default=0.0, metadata=_doc("analog filter bandwidth (Hz); 0 = device default"))
    channel: int = field(default=0, metadata=_doc("receive channel index on the device"))
    stream_format: str = field(default="CF32", metadata=_doc("wire format from the driver: 'CF32' or 'CS16' (half the memory traffic)"))
    stream_args: Any = field(
        default=(), metadata=_doc("table of driver stream arguments (strings), e.g. { buffers = '15' }; stored as sorted pairs")
    )
    read_size: int = field(default=0, metadata=_doc("samples asked per readStream; 0 = the stream's MTU"))
    timeout_s: float = field(default=0.5, metadata=_doc("readStream timeout (s); a timeout is not an error"))
    stall_s: float = field(default=10.0, metadata=_doc("no sample at all for this long -> reconnect (s); 0 = never"))
    device_time: bool = field(
        default=True, metadata=_doc("use the device's timestamps (HAS_TIME) as t0_ns; false when its clock is not Unix time")
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "stream_args", _stream_args_pairs(self.stream_args))
        if self.stream_format not in STREAM_FORMATS:
            raise ValueError(f"stream_format: expected 'CF32' or 'CS16', got {self.stream_format!r}")
        for name in ("sample_rate_hz", "center_freq_hz", "timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: expected > 0, got {getattr(self, name)!r}")
        for name in ("bandwidth_hz", "stall_s", "read_size", "channel"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)!r}")


def _stream_args_pairs(value: Any) -> tuple[tuple[str, str], ...]:
    items = value.items() if isinstance(value, dict) else value
    try:
        pairs = tuple(sorted((k, v) for k, v in items))
    except (TypeError, ValueError):
        raise ValueError(f"stream_args: expected a table of strings, got {value!r}") from None
    for key, val in pairs:
        if not isinstance(key, str) or not isinstance(val, str):
            raise ValueError(f"stream_args.{key}: expected a string, got {type(val).__name__} {val!r}")
    return pairs


def _kwargs_text(kwargs: Any) -> str:
    return ",".join(f"{k}={v}" for k, v in dict(kwargs).items())


def import_soapysdr() -> ModuleType:
    """Import the SoapySDR binding, or raise ``MissingDependencyError`` with the install command."""
    try:
        return importlib.import_module("SoapySDR")
    except ImportError as exc:
        raise MissingDependencyError(f"receiver kind 'soapy' needs the SoapySDR Python binding: {INSTALL_HINT}") from exc


def native_stream_format(soapy: ModuleType, device: Any, channel: int) -> tuple[str, float]:
    """``getNativeStreamFormat`` for RX ``channel`` -> (format, full scale).

    Tries the binding first (fixed bindings return both values); the 0.8 binding cannot pass the
    ``double &`` out-parameter, so the C API is called through ctypes on the same ``Device*``.
    """
    try:
        result = device.getNativeStreamFormat(soapy.SOAPY_SDR_RX, channel)
        if isinstance(result, (tuple, list)) and len(result) == 2:
            return str(result[0]), float(result[1])
    except TypeError:
        pass
    lib = ctypes.CDLL(ctypes.util.find_library("SoapySDR") or "libSoapySDR.so")
    fn = lib.SoapySDRDevice_getNativeStreamFormat
    fn.restype = ctypes.c_void_p
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t, ctypes.POINTER(ctypes.c_double)]
    lib.SoapySDR_free.argtypes = [ctypes.c_void_p]
    full_scale = ctypes.c_double(0.0)
    ptr = fn(int(device.this), soapy.SOAPY_SDR_RX, channel, ctypes.byref(full_scale))
    try:
        return ctypes.string_at(ptr).decode(), full_scale.value
    finally:
        lib.SoapySDR_free(ptr)


class SoapyReceiver(ReceiverBase):
    """One RX channel of one SoapySDR device, as an iterable of ``IQBlock``.

    The device is opened on the first ``next()`` and released by ``close()`` (also when iteration
    ends or raises), so a fresh ``from_config`` after an error can reopen it.
    """

    Options = SoapyOptions
    realtime = True

    def __init__(
        self,
        receiver_id: str,
        options: SoapyOptions,
        *,
        soapy: ModuleType,
        drops: DropCounter,
        gauge: Callable[[str, str, float], None] = _no_gauge,
        clock_ns: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.receiver_id = receiver_id
        self.options = options
        self._soapy = soapy
        self._drops = drops
        self._gauge = gauge
        self._clock_ns = clock_ns
        self._monotonic = monotonic
        self._lock = threading.Lock()  # guards the device and stream: close() may come from another thread
        self._device: Any = None
        self._stream: Any = None
        self._closed = False

    @classmethod
    def check_dependencies(cls) -> None:
        """Raise ``MissingDependencyError`` with the install command when the SoapySDR binding is missing."""
        import_soapysdr()

    @classmethod
    def configured_band_hz(cls, options: SoapyOptions | None, config: Any) -> tuple[float, float]:
        """(centre, sample rate) in Hz, as the config sets them."""
        options = options if options is not None else SoapyOptions()
        return options.center_freq_hz, options.sample_rate_hz

    @classmethod
    def from_config(cls, rx, ctx: ReceiverContext) -> "SoapyReceiver":
        """Build from a validated ``ReceiverConfig``; raises ``MissingDependencyError`` without the binding."""
        soapy = import_soapysdr()
        options = rx.options if rx.options is not None else SoapyOptions()
        return cls(rx.id, options, soapy=soapy, drops=ctx.drops, gauge=ctx.gauge)

    # --- lifecycle -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[IQBlock]:
        try:
            with self._lock:
                if self._closed:
                    return
                self._open()
            yield from self._read_blocks()
        finally:
            self.close()

    def close(self) -> None:
        """Deactivate and close the stream and release the device (idempotent, any thread)."""
        self._closed = True
        with self._lock:
            self._release()

    def _release(self) -> None:
        device, stream = self._device, self._stream
        self._device = self._stream = None
        if device is None:
            return
        if stream is not None:
            for step in (device.deactivateStream, device.closeStream):
                try:
                    step(stream)
                except Exception as exc:  # the device may already be gone; release what we can
                    log.debug("%s: %s failed while closing: %s", self.receiver_id, step.__name__, exc)
        try:
            device.close()  # Device.unmake: drops SoapySDR's cached reference
        except Exception as exc:
            log.debug("%s: unmake failed while closing: %s", self.receiver_id, exc)

    # --- opening ---------------------------------------------------------------------------

    def _open(self) -> None:
        try:
            self._device = self._make_device()
            self._configure()
            self._setup_stream()
        except BaseException as exc:
            self._release()
            if isinstance(exc, Exception) and not isinstance(exc, (ReceiverTransientError, ReceiverFatalError)):
                raise self._translate(exc, "opening the device") from exc
            raise

    def _make_device(self) -> Any:
        S, opts = self._soapy, self.options
        wanted = {str(k): str(v) for k, v in dict(S.KwargsFromString(opts.device_args)).items()}
        found = [{str(k): str(v) for k, v in dict(kw).items()} for kw in S.Device.enumerate(wanted)]
        if not found:
            visible = [_kwargs_text(kw) for kw in S.Device.enumerate()]
            raise ReceiverTransientError(
                f"{self.receiver_id}: no SoapySDR device matches {opts.device_args!r}; "
                f"visible: {visible or 'none'}; modules: {list(S.listModules()) or 'none'}"
            )
        if len(found) > 1:
            labels = [kw.get("label") or _kwargs_text(kw) for kw in found]
            raise ReceiverFatalError(
                f"{self.receiver_id}: device_args {opts.device_args!r} match {len(found)} devices ({labels}); "
                "add serial=... to pick one"
            )
        kwargs = {**wanted, **found[0]}  # echo find's kwargs: SoapySDR caches devices by them
        log.info("%s: opening SoapySDR device %s", self.receiver_id, _kwargs_text(kwargs))
        return S.Device(kwargs)

    def _configure(self) -> None:
        S, opts, dev = self._soapy, self.options, self._device
        rx, ch = S.SOAPY_SDR_RX, opts.channel
        n_channels = dev.getNumChannels(rx)
        if ch >= n_channels:
            raise ReceiverFatalError(f"{self.receiver_id}: channel {ch} does not exist; the device has {n_channels} RX channel(s)")
        formats = list(dev.getStreamFormats(rx, ch))
        if opts.stream_format not in formats:
            raise ReceiverFatalError(f"{self.receiver_id}: stream_format {opts.stream_format!r} not offered; device offers {formats}")
        if opts.antenna:
            antennas = list(dev.listAntennas(rx, ch))
            if opts.antenna not in antennas:
                raise ReceiverFatalError(f"{self.receiver_id}: antenna {opts.antenna!r} not found; device has {antennas}")
            dev.setAntenna(rx, ch, opts.antenna)
        dev.setSampleRate(rx, ch, opts.sample_rate_hz)
        dev.setFrequency(rx, ch, opts.center_freq_hz)
        if opts.bandwidth_hz > 0:
            dev.setBandwidth(rx, ch, opts.bandwidth_hz)
        has_agc = dev.hasGainMode(rx, ch)
        if opts.gain_db is None:
            if has_agc:
                dev.setGainMode(rx, ch, True)
            else:
                log.warning("%s: gain_db unset but the device has no automatic gain; using its current gain", self.receiver_id)
        else:
            if has_agc:
                dev.setGainMode(rx, ch, False)
            dev.setGain(rx, ch, opts.gain_db)
        self._sample_rate = float(dev.getSampleRate(rx, ch))
        self._center_freq = float(dev.getFrequency(rx, ch))
        self._gain_db = None if opts.gain_db is None else float(dev.getGain(rx, ch))
        if abs(self._sample_rate - opts.sample_rate_hz) > 1e-6 * opts.sample_rate_hz:
            log.warning("%s: asked for %.0f S/s, device runs at %.3f S/s", self.receiver_id, opts.sample_rate_hz, self._sample_rate)

    def _setup_stream(self) -> None:
        S, opts, dev = self._soapy, self.options, self._device
        self._full_scale = 1.0
        if opts.stream_format == "CS16":
            native, native_scale = native_stream_format(S, dev, opts.channel)
            self._full_scale = native_scale if native == "CS16" and native_scale > 0 else 32768.0
        self._stream = dev.setupStream(S.SOAPY_SDR_RX, opts.stream_format, [opts.channel], dict(opts.stream_args))
        mtu = int(dev.getStreamMTU(self._stream))
        self._read_n = opts.read_size or mtu or DEFAULT_READ_SIZE
        if opts.stream_format == "CF32":
            self._buffer = np.empty(self._read_n, dtype=np.complex64)
        else:
            self._buffer = np.empty(2 * self._read_n, dtype=np.int16)
        ret = dev.activateStream(self._stream)
        if ret != 0:
            raise ReceiverTransientError(f"{self.receiver_id}: activateStream failed: {S.errToStr(ret)} ({ret})")
        log.info(
            "%s: streaming %s at %.0f S/s, %.0f Hz, read size %d (MTU %d), full scale %g",
            self.receiver_id, opts.stream_format, self._sample_rate, self._center_freq, self._read_n, mtu, self._full_scale,
        )

    def _translate(self, exc: Exception, doing: str) -> Exception:
        """A SoapySDR / SWIG exception -> our error: invalid arguments are fatal, the rest transient."""
        message = f"{self.receiver_id}: SoapySDR error while {doing}: {type(exc).__name__}: {exc}"
        if isinstance(exc, (ValueError, TypeError, OverflowError)):
            return ReceiverFatalError(message)
        return ReceiverTransientError(message)

    # --- streaming -------------------------------------------------------------------------

    def _read_blocks(self) -> Iterator[IQBlock]:
        opts = self.options
        timeout_us = int(opts.timeout_s * 1e6)
        self._index = 0
        self._next_time_ns: float | None = None
        self._loss: str | None = None  # "overflow" | "corruption" reported before the next block
        base_flags = Flags.AGC if opts.gain_db is None else Flags.NONE
        last_activity = self._monotonic()
        while True:
            with self._lock:
                if self._device is None:
                    return  # closed from another thread
                try:
                    result = self._device.readStream(self._stream, [self._buffer], self._read_n, timeoutUs=timeout_us)
                except Exception as exc:
                    raise self._translate(exc, "reading") from exc
                host_ns = self._clock_ns()
                ret, flags, time_ns = result.ret, result.flags, result.timeNs
                samples = self._convert(ret) if ret > 0 else None
            if samples is not None:
                last_activity = self._monotonic()
                yield self._block(samples, flags, time_ns, host_ns, base_flags)
            elif ret in (OVERFLOW, CORRUPTION):
                last_activity = self._monotonic()
                self._loss = "overflow" if ret == OVERFLOW else "corruption"
            elif ret == TIMEOUT:
                if opts.stall_s and self._monotonic() - last_activity > opts.stall_s:
                    raise ReceiverTransientError(f"{self.receiver_id}: no samples for {opts.stall_s:g} s (readStream only timed out)")
            elif ret == TIME_ERROR:
                self._drops.bad_frame(self.receiver_id, "time_error")
            else:
                error = ReceiverFatalError if ret == NOT_SUPPORTED else ReceiverTransientError
                raise error(f"{self.receiver_id}: readStream failed: {self._soapy.errToStr(ret)} ({ret})")

    def _convert(self, n: int) -> np.ndarray:
        """The first ``n`` samples of the read buffer as a new complex64 array, full scale 1.0."""
        if self.options.stream_format == "CF32":
            return self._buffer[:n].copy()
        out = np.empty(n, dtype=np.complex64)
        np.multiply(self._buffer[: 2 * n], np.float32(1.0 / self._full_scale), out=out.view(np.float32), casting="unsafe")
        return out

    def _block(self, samples: np.ndarray, flags: int, time_ns: int, host_ns: int, base_flags: Flags) -> IQBlock:
        n, rate = len(samples), self._sample_rate
        block_flags = base_flags
        timed = bool(flags & HAS_TIME)
        gap, anchored = 0, self._next_time_ns is not None
        if timed and anchored:
            gap = int(round((time_ns - self._next_time_ns) * rate / 1e9))
        if gap > 0:
            self._drops.samples_dropped(self.receiver_id, self._loss or "gap", gap)
            self._index += gap
            block_flags |= Flags.OVERFLOW
        elif self._loss is not None and not (timed and anchored):
            self._drops.bad_frame(self.receiver_id, self._loss)  # the size of the loss is unknown
            block_flags |= Flags.OVERFLOW
        elif gap < 0:
            self._drops.bad_frame(self.receiver_id, "time_backwards")
        self._loss = None
        self._next_time_ns = (time_ns + n * 1e9 / rate) if timed else None
        if timed and self.options.device_time:
            t0_ns, source = int(time_ns), "device"
        else:
            t0_ns, source = host_ns - int(round(n * 1e9 / rate)), "host"
        block = IQBlock(
            receiver_id=self.receiver_id,
            samples=samples,
            sample_index=self._index,
            t0_ns=t0_ns,
            time_source=source,
            sample_rate=rate,
            center_freq=self._center_freq,
            gain_db=self._gain_db,
            flags=block_flags,
        )
        self._index += n
        return block
