"""Logging at a bounded rate: bad input from a peer is counted in metrics, and logged at most a few lines a
minute per (logger, key), so a hostile or broken publisher cannot flood the log.

Examples
--------
>>> import logging
>>> limiter = BoundedLog(logging.getLogger("doc"), per_interval=2, interval_s=60.0, clock=lambda: 0.0)
>>> [limiter.warning(("rx1", "bad_rate"), "receiver %s: bad rate", "rx1") for _ in range(4)]
[True, True, False, False]
>>> limiter.suppressed[("rx1", "bad_rate")]
2
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Callable, Hashable


class BoundedLog:
    """At most ``per_interval`` lines per key every ``interval_s`` seconds; the rest are counted and the
    count is reported on the next line logged for that key (``... (N similar lines suppressed)``).

    Thread-safe: adapters and the pipeline share one instance per module.
    """

    def __init__(self, logger: logging.Logger, *, per_interval: int = 5, interval_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if per_interval < 1 or not interval_s > 0:
            raise ValueError(f"BoundedLog: per_interval must be >= 1 and interval_s > 0, got {per_interval}, {interval_s}")
        self.logger = logger
        self.per_interval = per_interval
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start: dict[Hashable, float] = {}
        self._logged: Counter[Hashable] = Counter()
        self.suppressed: Counter[Hashable] = Counter()
        self._once: set[Hashable] = set()

    def log(self, level: int, key: Hashable, msg: str, *args, exc_info: bool = False) -> bool:
        """Log ``msg % args`` unless ``key`` already used its lines in this interval; True when logged."""
        now = self._clock()
        with self._lock:
            start = self._window_start.get(key)
            if start is None or now - start >= self.interval_s:
                self._window_start[key] = now
                self._logged[key] = 0
            if self._logged[key] >= self.per_interval:
                self.suppressed[key] += 1
                return False
            self._logged[key] += 1
            pending = self.suppressed.pop(key, 0)
        if pending:
            msg = f"{msg} ({pending} similar lines suppressed)"
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True

    def warning(self, key: Hashable, msg: str, *args, exc_info: bool = False) -> bool:
        return self.log(logging.WARNING, key, msg, *args, exc_info=exc_info)

    def error(self, key: Hashable, msg: str, *args, exc_info: bool = False) -> bool:
        return self.log(logging.ERROR, key, msg, *args, exc_info=exc_info)

    def once(self, key: Hashable, msg: str, *args, level: int = logging.WARNING) -> bool:
        """Log ``msg`` the first time ``key`` is seen, never again (e.g. a receiver that cannot tune)."""
        with self._lock:
            if key in self._once:
                return False
            self._once.add(key)
        self.logger.log(level, msg, *args)
        return True
