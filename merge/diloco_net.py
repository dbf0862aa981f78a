"""How a DiLoCo worker (merge/diloco_worker.py) reaches the others: the lighthouse's address
and route, the interface gloo listens on, and the torchft subclasses it runs with (a checkpoint
transport that advertises a reachable address, a Manager that compresses on CPU)."""

from __future__ import annotations

import socket
from datetime import timedelta
from urllib.parse import urlsplit

import torch

from merge.compress import decode, encode, payload_bytes
from merge.lighthouse import TORCHFT_INSTALL


class WorkerError(ValueError):
    """Bad input or an unusable environment; the message says what to do, in one line."""


# --- addresses -------------------------------------------------------------------------------


def lighthouse_url(text: str) -> str:
    """`HOST:PORT` or `http://HOST:PORT` as torchft's `http://HOST:PORT`."""
    url = text if "://" in text else f"http://{text}"
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None:
        raise WorkerError(f"--lighthouse {text!r} is not HOST:PORT: pass e.g. "
                          "http://10.0.0.5:29510 (what `magnet-agent lighthouse` prints)")
    return f"http://{parts.netloc}"


def reach_lighthouse(url: str, timeout: float = 5.0) -> str:
    """Connect once to the lighthouse; returns this machine's address on the route to it."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
            return sock.getsockname()[0]
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        raise WorkerError(
            f"cannot reach the lighthouse at {url} ({reason}): start it with `magnet-agent "
            f"lighthouse --bind 0.0.0.0:{parts.port}` on {parts.hostname}, or fix --lighthouse"
        ) from err


def gloo_interface(address: str) -> str | None:
    """The network interface that owns `address` (gloo listens on it), if any."""
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] == address for a in addresses):
            return name
    return None


# --- torchft pieces --------------------------------------------------------------------------


def require_torchft() -> None:
    """torchft is installed apart from the package's dependencies (see the Makefile)."""
    try:
        import torchft  # noqa: F401
    except ImportError as err:
        raise WorkerError(f"torchft is not installed ({err}): {TORCHFT_INSTALL}") from err


def torchft_classes(host: str):
    """Import torchft (quietly) and build the two subclasses this worker needs."""
    from torch.distributed.distributed_c10d import AllgatherOptions, ReduceOp
    from torchft.checkpointing.http_transport import HTTPTransport
    from torchft.manager import Manager

    class AdvertisedHTTPTransport(HTTPTransport):
        """torchft advertises `socket.gethostname()`, which peers on other machines may not
        resolve; this serves checkpoints under the address peers reach the worker at."""

        def address(self) -> str:
            port = self._server.socket.getsockname()[1]
            return f"http://{_url_host(host)}:{port}/checkpoint/"

    class CompressingManager(Manager):
        """A torchft Manager whose pseudo-gradient all-reduce can compress on CPU."""

        compression = "none"
        bytes_sent = 0
        last_commit = False

        def allreduce(self, tensor: torch.Tensor, should_quantize: bool = False,
                      reduce_op: ReduceOp = ReduceOp.AVG):
            self.bytes_sent += payload_bytes(tensor.numel(), self.compression)
            if self.compression == "none" or not should_quantize:
                return super().allreduce(tensor, reduce_op=reduce_op)
            return self._compressed_mean(tensor, AllgatherOptions())

        def _compressed_mean(self, tensor: torch.Tensor, opts):
            """All-gather the encoded vectors, then mean of the decoded ones, in rank order.

            Errors are reported to the manager as torchft's own all-reduce does: the outer
            step is then not committed and is redone with the next quorum.
            """
            if self.errored():
                return DoneWork(tensor)
            self.wait_quorum()
            if not self.is_participating():
                tensor.zero_()
            payload = encode(tensor, self.compression)
            gathered = [torch.empty_like(payload) for _ in range(self._pg.size())]
            try:
                self._pg.allgather([gathered], [payload], opts).wait()
            except Exception as err:  # noqa: BLE001 - any transport failure discards the step
                self.report_error(err)
                return DoneWork(tensor)
            decoded = [decode(p, tensor.numel(), self.compression) for p in gathered]
            total = decoded[0]
            for vector in decoded[1:]:
                total += vector
            tensor.copy_(total / self.num_participants())
            return DoneWork(tensor)

        def should_commit(self, timeout: timedelta | None = None) -> bool:
            self.last_commit = super().should_commit(timeout)
            return self.last_commit

    return AdvertisedHTTPTransport, CompressingManager


class DoneWork(torch.distributed._Work):
    """A finished collective (the compressed mean is computed synchronously)."""

    def __init__(self, result: torch.Tensor) -> None:
        super().__init__()
        self._future: torch.futures.Future = torch.futures.Future()
        self._future.set_result(result)

    def wait(self, timeout: timedelta | None = None) -> bool:
        return True

    def get_future(self) -> torch.futures.Future:
        return self._future


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
