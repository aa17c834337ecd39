"""log Phi(z), the standard normal's log CDF, fast: the physics posterior's censoring term for silent receivers.

``scipy.special.log_ndtr`` evaluates erfc per element; a censored window needs it at every grid cell and
power bin for every silent receiver. ``add_log_ndtr_outer`` interpolates linearly in a table of ``log_ndtr`` at
``TABLE_STEP`` spacing over [``TABLE_Z_MIN``, ``TABLE_Z_MAX``], in cache-sized chunks. log Phi is concave with
a second derivative in (-1, 0), so linear interpolation is off by at most ``TABLE_STEP**2 / 8`` (1.2e-7)
nats: ``MAX_ERROR_NATS``. Below the table ``log_ndtr`` itself is used; above it log Phi(z) > -5e-17 and the
table's last entry is taken.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import log_ndtr

TABLE_STEP = 1.0 / 1024.0
TABLE_Z_MIN = -64.0
TABLE_Z_MAX = 8.3
#: Bound on the difference between the table's log Phi and ``log_ndtr`` (nats).
MAX_ERROR_NATS = TABLE_STEP**2 / 8.0

_N_STEPS = math.ceil((TABLE_Z_MAX - TABLE_Z_MIN) / TABLE_STEP)
_VALUES = log_ndtr(TABLE_Z_MIN + TABLE_STEP * np.arange(_N_STEPS + 1))
_SLOPES = np.diff(_VALUES, append=_VALUES[-1])  # per step; the last entry's is 0 (clipped above the table)
#: Elements per pass: the chunk's temporaries stay in a core's cache between the passes.
CHUNK = 8192


def add_log_ndtr_outer(acc: np.ndarray, offset: np.ndarray, points: np.ndarray, weight: np.ndarray | float) -> None:
    """``acc[g, j] += log Phi((offset[g] - points[j]) * weight[g])`` in place, to within ``MAX_ERROR_NATS``.

    ``acc`` ``[G, P]`` float64 C-contiguous; ``offset`` ``[G]`` and ``points`` ``[P]`` finite; ``weight`` ``[G]``
    or a scalar, finite and > 0. No ``[G, P]`` array of z is made: each chunk of rows computes its table
    positions from the two vectors directly.
    """
    n_rows, n_cols = acc.shape
    if acc.dtype != np.float64 or not acc.flags.c_contiguous:
        raise ValueError(f"add_log_ndtr_outer: acc must be C-contiguous float64, got {acc.dtype}")
    offset = np.asarray(offset, dtype=np.float64)
    points = np.asarray(points, dtype=np.float64)
    scale = np.broadcast_to(np.asarray(weight, dtype=np.float64), (n_rows,)) / TABLE_STEP
    if offset.shape != (n_rows,) or points.shape != (n_cols,):
        raise ValueError(f"add_log_ndtr_outer: expected offset [{n_rows}] and points [{n_cols}], "
                         f"got {offset.shape} and {points.shape}")
    if not (np.isfinite(offset).all() and np.isfinite(points).all() and (scale > 0).all() and np.isfinite(scale).all()):
        raise ValueError("add_log_ndtr_outer: offset and points must be finite and weight finite and > 0")
    if acc.size == 0:
        return
    # Table position u = (offset - point) * weight / step - z_min / step = start[g] - points[j] * scale[g].
    start = offset * scale - TABLE_Z_MIN / TABLE_STEP
    rows = max(1, CHUNK // max(n_cols, 1))
    k = min(rows, n_rows) * n_cols
    position, index, values = np.empty(k), np.empty(k, np.intp), np.empty(k)
    for r0 in range(0, n_rows, rows):
        r1 = min(n_rows, r0 + rows)
        n = (r1 - r0) * n_cols
        u, i, v = position[:n].reshape(r1 - r0, n_cols), index[:n], values[:n]
        np.multiply(scale[r0:r1, None], points[None, :], out=u)
        np.subtract(start[r0:r1, None], u, out=u)
        u = u.reshape(-1)
        np.fmax(u, 0.0, out=u)
        np.fmin(u, float(_N_STEPS), out=u)
        i[...] = u
        u -= i
        _SLOPES.take(i, out=v)
        v *= u
        v += _VALUES.take(i)
        acc[r0:r1] += v.reshape(r1 - r0, n_cols)
    # Below the table (z < TABLE_Z_MIN): the table's first entry was added there; put log_ndtr in its place.
    low = np.flatnonzero(start - points.max() * scale < 0.0)
    if low.size:
        z = (offset[low, None] - points[None, :]) * (scale[low, None] * TABLE_STEP)
        below = z < TABLE_Z_MIN
        fix = np.zeros_like(z)
        fix[below] = log_ndtr(z[below]) - _VALUES[0]
        acc[low] += fix
