"""Single-thread forward FFTs of batches of equal-length frames, in place: the transform of the feature stage.

Two backends, chosen by ``pipeline.fft``:

* ``scipy`` (the default): ``scipy.fft`` (pocketfft). The same input gives the same bits in every run.
* ``fftw``: FFTW through pyFFTW (``pip install -e '.[fftw]'``), faster on these batches (docs/performance.md,
  Feature stage). FFTW chooses its algorithm by timing candidates (``FFTW_MEASURE``), so two runs, or two
  machines, may round the last bits differently; within one run every frame goes through one plan of
  ``BLOCK_FRAMES`` frames, so a frame's spectrum does not depend on where it sits in a batch. The first
  transform of a new frame length in a thread pays the planning.

Plans and their scratch are per thread (FFTW plans may run at once but not share buffers); the planner is
not thread-safe, so planning holds a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import scipy.fft

try:  # optional: the ``fftw`` extra
    import pyfftw
except ImportError:  # pragma: no cover - exercised where pyFFTW is absent
    pyfftw = None

#: Backend names, as ``pipeline.fft`` spells them.
BACKENDS = ("scipy", "fftw")
DEFAULT_BACKEND = "scipy"
FFTW_INSTALL_HINT = "pip install -e '.[fftw]'"

#: Frames per FFTW plan: enough that the per-call cost vanishes, few enough that a ragged end costs little.
BLOCK_FRAMES = 32

_PLANNER_LOCK = threading.Lock()
_local = threading.local()


def available_backends() -> tuple[str, ...]:
    """The backends this process can use."""
    return BACKENDS if pyfftw is not None else ("scipy",)


def backend_problem(backend: str) -> str | None:
    """Why ``backend`` cannot be used here (None if it can): unknown name, or pyFFTW not installed."""
    if backend not in BACKENDS:
        return f"expected one of {', '.join(repr(b) for b in BACKENDS)}, got {backend!r}"
    if backend not in available_backends():
        return f"{backend!r} needs pyFFTW, which is not installed ({FFTW_INSTALL_HINT})"
    return None


def fft_summary(backend: str) -> str:
    """One line for ``heimdall check``: the features' FFT, and where FFTW is there but not used."""
    if backend == "fftw":
        return f"features: FFT by FFTW (pyFFTW {pyfftw.__version__}; pipeline.fft = \"fftw\")"
    spare = "; pyFFTW is installed: pipeline.fft = \"fftw\" is faster, bits may differ by run" if pyfftw is not None else ""
    return f"features: FFT by scipy.fft (pipeline.fft = \"scipy\"{spare})"


class FrameFFT:
    """Forward FFT along the last axis of ``[k, n_fft]`` frames of one complex dtype, in place where it can."""

    def __init__(self, n_fft: int, dtype: np.dtype, backend: str) -> None:
        self.n_fft, self.dtype, self.backend = int(n_fft), np.dtype(dtype), backend
        self._plan = self._scratch = None
        self.block_frames = BLOCK_FRAMES
        if backend == "fftw":
            self._scratch = pyfftw.empty_aligned((self.block_frames, self.n_fft), dtype=self.dtype)
            with _PLANNER_LOCK:
                self._plan = pyfftw.FFTW(self._scratch, self._scratch, axes=(-1,), direction="FFTW_FORWARD",
                                         flags=("FFTW_MEASURE", "FFTW_DESTROY_INPUT"), threads=1)

    def empty(self, n_frames: int) -> np.ndarray:
        """An uninitialised ``[n_frames, n_fft]`` buffer whose whole blocks ``forward`` transforms without copying."""
        shape = (int(n_frames), self.n_fft)
        if self.backend == "fftw":
            return pyfftw.empty_aligned(shape, dtype=self.dtype)
        return np.empty(shape, self.dtype)

    def forward(self, frames: np.ndarray) -> np.ndarray:
        """The spectrum of each row of ``frames`` (``[k, n_fft]``); ``frames`` may be overwritten."""
        if self.backend == "scipy":
            return scipy.fft.fft(frames, axis=-1, workers=1, overwrite_x=True)
        if frames.shape[-1] != self.n_fft or frames.dtype != self.dtype or frames.ndim != 2:
            raise ValueError(f"frame_fft: expected [k, {self.n_fft}] {self.dtype} frames, got {frames.shape} {frames.dtype}")
        plan, scratch, block, n_rows = self._plan, self._scratch, self.block_frames, frames.shape[0]
        in_place = frames.flags.c_contiguous and frames.ctypes.data % pyfftw.simd_alignment == 0 \
            and (self.n_fft * self.dtype.itemsize) % pyfftw.simd_alignment == 0
        whole = n_rows - n_rows % block if in_place else 0
        for start in range(0, whole, block):
            frames_in_place = frames[start : start + block]
            plan.update_arrays(frames_in_place, frames_in_place)
            plan.execute()
        plan.update_arrays(scratch, scratch)
        # The rest (and frames FFTW cannot take in place) go through the plan's own scratch, a block at a time.
        for start in range(whole, n_rows, block):
            stop = min(n_rows, start + block)
            scratch[: stop - start] = frames[start:stop]
            plan.execute()
            frames[start:stop] = scratch[: stop - start]
        return frames


def measured_fftw() -> Callable[[np.ndarray], np.ndarray] | None:
    """A single-thread FFTW transform along the last axis of any array, out of place (the input is kept), with a
    ``FFTW_MEASURE`` plan made on the first call with each shape and dtype and reused: the benches' FFTW baseline.
    None where pyFFTW is not installed."""
    if pyfftw is None:
        return None
    plans: dict[tuple, Callable[[np.ndarray], np.ndarray]] = {}

    def transform(frames: np.ndarray) -> np.ndarray:
        key = (frames.shape, frames.dtype.str)
        plan = plans.get(key)
        if plan is None:
            with _PLANNER_LOCK:
                plan = plans[key] = pyfftw.builders.fft(pyfftw.empty_aligned(frames.shape, dtype=frames.dtype),
                                                        axis=-1, threads=1, planner_effort="FFTW_MEASURE")
        return plan(frames)

    return transform


def frame_fft(n_fft: int, dtype: np.dtype, backend: str = DEFAULT_BACKEND) -> FrameFFT:
    """This thread's ``FrameFFT`` for ``n_fft``-point frames of complex ``dtype``."""
    problem = backend_problem(backend)
    if problem:
        raise ValueError(f"FFT backend: {problem}")
    cache = getattr(_local, "transforms", None)
    if cache is None:
        cache = _local.transforms = {}
    key = (int(n_fft), np.dtype(dtype).str, backend)
    transform = cache.get(key)
    if transform is None:
        transform = cache[key] = FrameFFT(n_fft, dtype, backend)
    return transform
