"""A run's output as it arrives: split into lines for the log file (capped), the tail, the
METRIC lines and the display callback; and reading it from the pipe without ever blocking."""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable
from pathlib import Path

from sandbox.metrics import Number, parse_metric_line, refused_metric

TAIL_LINES = 50
DEFAULT_LOG_LIMIT = 50 * 2**20  # bytes of output a run may write to its log
_MAX_LINE = 64 * 1024

LineCallback = Callable[[str], None]


class RunOutput:
    """Splits the child's bytes into lines: to the log file, the tail, the metrics, the callback."""

    def __init__(self, log_path: Path | None, on_line: LineCallback | None,
                 limit: int = DEFAULT_LOG_LIMIT) -> None:
        self.log = open(log_path, "w", encoding="utf-8", buffering=1) if log_path else None  # noqa: SIM115
        self.on_line = on_line
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.metrics: dict[str, Number] = {}
        self.refused: set[str] = set()  # metrics printed with a value that is not a number
        self.buf = b""
        self.bytes = 0  # of output taken: at most `limit`, the rest is dropped
        self.limit = limit
        self.over = False  # the run wrote more than `limit`: it must be stopped

    def feed(self, data: bytes) -> None:
        if len(data) > self.limit - self.bytes:
            data = data[: max(0, self.limit - self.bytes)]
            self.over = True
        self.bytes += len(data)
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        for raw in lines:
            self.line(raw.rstrip(b"\r").decode("utf-8", "replace"))
        if len(self.buf) > _MAX_LINE:  # no newline for a long time: do not grow without bound
            self.line(self.buf.decode("utf-8", "replace"))
            self.buf = b""

    def flush(self) -> None:
        if self.buf:
            self.line(self.buf.rstrip(b"\r").decode("utf-8", "replace"))
            self.buf = b""

    def line(self, text: str, parse: bool = True) -> None:
        if parse and (hit := parse_metric_line(text)):
            self.metrics[hit[0]] = hit[1]
        elif parse and (name := refused_metric(text)):
            self.refused.add(name)
        self.tail.append(text)
        if self.log:
            self.log.write(text + "\n")
        if self.on_line is not None:
            try:
                self.on_line(text)
            except Exception as e:  # a broken display must not break the experiment
                self.on_line = None
                if self.log:
                    self.log.write(f"[sandbox] display callback failed and was dropped: {e!r}\n")

    def close(self) -> None:
        if self.log:
            self.log.close()


def read_available(fd: int, out: RunOutput) -> bool:
    """Read what is available; False at end of file."""
    try:
        data = os.read(fd, 65536)
    except BlockingIOError:
        return True
    except OSError:
        return False
    if not data:
        return False
    out.feed(data)
    return True


def drain(fd: int, out: RunOutput, timeout: float) -> None:
    """Read the rest of the output; the writers are dead, so end of file comes at once."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            time.sleep(0.005)
            continue
        except OSError:
            break
        if not data:
            break
        out.feed(data)
    out.flush()
