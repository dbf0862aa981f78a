"""The coordinator of a DiLoCo run: torchft's lighthouse (a Rust gRPC server in its wheel).

Workers heartbeat to it and ask it for a quorum before every outer step; it answers with the
replicas that are alive and asking. It holds no weights and no data: any machine every worker
can reach will do. Quorum rules (torchft's): at least `min_replicas` replicas; a previous quorum
whose members all ask again is reused at once; otherwise stragglers that heartbeat but have not
asked yet are waited for up to `join_timeout`, and a replica silent for `heartbeat_timeout` is
dropped.
"""

from __future__ import annotations

import html
import os
import re
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_PORT = 29510  # torchft's
TORCHFT_INSTALL = ("pip install --no-deps torchft==0.2.0 && pip install opentelemetry-sdk==1.45.2 "
                   "opentelemetry-exporter-otlp-proto-http==1.45.2 (what `make setup` runs)")


class LighthouseError(ValueError):
    """Bad settings or a port that cannot be used; the message says what to do, in one line."""


@dataclass(frozen=True)
class LighthouseOptions:
    bind: str = f"0.0.0.0:{DEFAULT_PORT}"
    min_replicas: int = 1
    join_timeout: float = 10.0  # seconds to wait for heartbeating stragglers to join a quorum
    quorum_tick_ms: int = 100  # how often a pending quorum is re-checked
    heartbeat_timeout: float = 5.0  # seconds of silence before a replica counts as gone


@dataclass(frozen=True)
class QuorumStatus:
    quorum_id: int
    replicas: list[tuple[str, int]]  # (replica id, outer step) of the last quorum
    next_status: str  # torchft's account of the next quorum (who it waits for)


def check_bind(bind: str) -> str:
    """`HOST:PORT`, `[V6]:PORT` or `:PORT` (all interfaces) as torchft's bind address."""
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise LighthouseError(f"--bind {bind!r} is not HOST:PORT: use e.g. 0.0.0.0:{DEFAULT_PORT}")
    return f"{host or '0.0.0.0'}:{port}"


def check_options(opts: LighthouseOptions) -> None:
    check_bind(opts.bind)
    if opts.min_replicas < 1:
        raise LighthouseError("--min-replicas must be at least 1")
    if opts.join_timeout < 0 or opts.heartbeat_timeout <= 0 or opts.quorum_tick_ms < 1:
        raise LighthouseError("--join-timeout must be >= 0, --heartbeat-timeout and "
                              "--quorum-tick-ms positive")


def start(opts: LighthouseOptions):
    """Start torchft's LighthouseServer (serving on its own threads); returns it."""
    check_options(opts)
    os.environ.setdefault("RUST_LOG", "warn")  # torchft's Rust logs: quorum chatter otherwise
    try:
        from torchft._torchft import LighthouseServer
    except ImportError as err:
        raise LighthouseError(f"torchft is not installed ({err}): {TORCHFT_INSTALL}") from err

    try:
        return LighthouseServer(
            bind=check_bind(opts.bind), min_replicas=opts.min_replicas,
            join_timeout_ms=int(opts.join_timeout * 1000), quorum_tick_ms=opts.quorum_tick_ms,
            heartbeat_timeout_ms=int(opts.heartbeat_timeout * 1000))
    except (RuntimeError, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise LighthouseError(f"cannot serve on {opts.bind} ({first}): pick a free port with "
                              "--bind HOST:PORT") from err


def read_status(address: str, timeout: float = 2.0) -> QuorumStatus | None:
    """The lighthouse's /status page, parsed (None if it cannot be read)."""
    try:
        with urllib.request.urlopen(f"{address}/status", timeout=timeout) as response:
            page = response.read().decode("utf-8", "replace")
    except OSError:
        return None
    quorum = re.search(r"Current quorum_id:\s*(-?\d+)", page)
    pending = re.search(r"Next quorum status:\s*(.*?)\s*<", page, re.S)
    members = re.findall(r"<b>\s*(.*?)\s*</b>\s*<br/>\s*Step:\s*(-?\d+)", page, re.S)
    if quorum is None:
        return None
    return QuorumStatus(int(quorum.group(1)),
                        [(html.unescape(name), int(step)) for name, step in members],
                        html.unescape(pending.group(1)) if pending else "")


def watch(address: str, report: Callable[[QuorumStatus], None], stop: threading.Event,
          every: float = 1.0) -> None:
    """Call `report` whenever the quorum changes, until `stop` is set."""
    last: tuple | None = None
    while not stop.wait(every):
        status = read_status(address)
        if status is None:
            continue
        key = (status.quorum_id, tuple(name for name, _ in status.replicas))
        if key != last and status.quorum_id > 0:
            last = key
            report(status)
