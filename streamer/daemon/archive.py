"""JsonlArchive: every published localization, emission event and status message as one JSON line, in rotating files.

Layout in ``[output.archive] dir``: ``heimdall.jsonl`` is written; when the next line would take it past
``max_bytes`` it becomes ``heimdall.jsonl.1`` (the older ones shift to ``.2`` ... and the one past
``keep_files`` is deleted), like logrotate or Python's ``RotatingFileHandler``. A line is
``{"topic": TOPIC, ...payload}``, the same object ``heimdall listen --json`` prints; floats that JSON
cannot carry (NaN, infinities) are written as ``null``.

A restart appends to ``heimdall.jsonl``; nothing is ever truncated except a line that failed half-way.
A file that does not end with a newline (a power cut in mid-line) gets one before the first new line, so the
torn line stays alone and invalid, every other line stays one JSON object; it is counted as ``torn_line``.
Each line is handed to the kernel in one ``write`` as soon as it is published (no Python buffering; no
fsync either: a power cut can lose what the page cache held). An ``OSError`` (a full disk, ENOSPC; a
removed folder; permissions) costs that line only: it is counted through ``on_error``, any partial line
is cut off again, and the next message tries anew. The archive never stops publication.

Examples
--------
>>> import json, tempfile
>>> folder = tempfile.mkdtemp()
>>> with JsonlArchive(folder, max_bytes=1000, keep_files=2) as archive:
...     archive.write("loc", {"seq": 0, "lat": 45.0})
True
>>> from pathlib import Path
>>> json.loads(Path(folder, "heimdall.jsonl").read_text())
{'topic': 'loc', 'seq': 0, 'lat': 45.0}
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

FILE_NAME = "heimdall.jsonl"


def _finite(value: Any) -> Any:
    """``value`` with non-finite floats replaced by None (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def encode_line(topic: str, payload: dict[str, Any]) -> bytes:
    """One archive line: ``{"topic": ..., **payload}`` as compact UTF-8 JSON ending in a newline."""
    obj = _finite({"topic": topic, **payload})
    return (json.dumps(obj, separators=(",", ":"), allow_nan=False, default=_default) + "\n").encode()


def _default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if hasattr(value, "tolist"):  # a numpy scalar or array that slipped through messages.py
        return _finite(value.tolist())
    raise TypeError(f"cannot archive {type(value).__name__}")


class JsonlArchive:
    """Append JSON lines to ``directory/heimdall.jsonl``, rotating at ``max_bytes``, keeping ``keep_files``.

    ``on_error(reason)`` is called once per line that could not be written (``reason`` is the errno name,
    e.g. ``"ENOSPC"``; ``write`` then returns False) and once per torn last line found on opening the file
    (``"torn_line"``: a line an earlier run never finished). Only one thread may write.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_bytes: int,
        keep_files: int,
        on_error: Callable[[str], None] = lambda reason: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes <= 0 or keep_files < 0:
            raise ValueError(f"max_bytes must be > 0 and keep_files >= 0, got {max_bytes}, {keep_files}")
        self.directory = Path(directory)
        self.path = self.directory / FILE_NAME
        self.max_bytes = max_bytes
        self.keep_files = keep_files
        self._on_error = on_error
        self._clock = clock
        self._fd: int | None = None
        self._size = 0
        self.errors = 0
        self._last_log = float("-inf")

    def write(self, topic: str, payload: dict[str, Any]) -> bool:
        """Append one message; False (counted, logged at most once a minute) if it could not be written."""
        line = encode_line(topic, payload)
        try:
            fd = self._open()
            if self._size > 0 and self._size + len(line) > self.max_bytes:
                fd = self._rotate()
            self._append(fd, line)
        except OSError as exc:
            self._failed(exc)
            return False
        return True

    def _open(self) -> int:
        if self._fd is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    size = self._end_torn_line(fd, size)
            except OSError:
                os.close(fd)
                raise
            self._size = size
            self._fd = fd
        return self._fd

    def _end_torn_line(self, fd: int, size: int) -> int:
        """End a last line that a power cut (or a kill mid-write) left without its newline; returns the new size.

        Without this the next line would be glued to it and both would be lost to a JSON reader; now only
        the torn one is invalid, alone on its line. Counted once, as ``on_error("torn_line")``.
        """
        if os.write(fd, b"\n") != 1:
            raise OSError(errno.EIO, "could not end the torn last line")
        tail = os.pread(fd, min(size, 1 << 16), max(0, size - (1 << 16)))
        torn_bytes = len(tail) - (tail.rfind(b"\n") + 1)
        self.errors += 1
        self._on_error("torn_line")
        log.warning("archive %s: its last line was cut short (%d bytes without a newline, e.g. a power cut); "
                    "ended it there, so new lines start on a line of their own", self.path, torn_bytes)
        return size + 1

    def _append(self, fd: int, line: bytes) -> None:
        start = self._size
        view = memoryview(line)
        try:
            while view:
                n = os.write(fd, view)
                view = view[n:]
        except OSError:
            self._cut(fd, start)
            raise
        self._size = start + len(line)

    def _cut(self, fd: int, size: int) -> None:
        """Remove a half-written line so the file stays one JSON object per line."""
        try:
            os.ftruncate(fd, size)
        except OSError:
            self._close_fd()  # reopened (and re-measured) on the next write

    def _rotate(self) -> int:
        self._close_fd()
        if self.keep_files == 0:
            os.unlink(self.path)
        else:
            oldest = self._numbered(self.keep_files)
            if oldest.exists():
                oldest.unlink()
            for i in range(self.keep_files - 1, 0, -1):
                if self._numbered(i).exists():
                    os.replace(self._numbered(i), self._numbered(i + 1))
            os.replace(self.path, self._numbered(1))
        return self._open()

    def _numbered(self, i: int) -> Path:
        return self.directory / f"{FILE_NAME}.{i}"

    def _failed(self, exc: OSError) -> None:
        self.errors += 1
        reason = errno.errorcode.get(exc.errno or 0, "error")
        self._on_error(reason)
        now = self._clock()
        if now - self._last_log >= 60.0:
            log.warning("archive %s: message not written (%s: %s); %d failed so far; publishing goes on",
                        self.path, reason, exc.strerror or exc, self.errors)
            self._last_log = now

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass

    def close(self) -> None:
        self._close_fd()

    def __enter__(self) -> "JsonlArchive":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
