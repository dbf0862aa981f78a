"""One DiLoCo replica group (one volunteer machine) on torchft, over gloo on CPU.

The worker trains H inner AdamW steps (merge/inner.py) on its own corpus or shard, then
torchft's `DiLoCo` asks the lighthouse for a quorum, all-reduces the pseudo-gradients of the
replicas in it and steps the outer optimiser (merge/outer.py), after which every replica holds
the same global weights. The arithmetic is the single-process reference's (merge/diloco.py);
reaching the lighthouse and the peers, and torchft's subclasses, are merge/diloco_net.py.

Fault tolerance is torchft's: a replica that dies drops out of the next quorum (the others wait
at most the lighthouse's heartbeat timeout, then carry on; an outer step whose all-reduce broke
is discarded and redone); a replica that joins, or comes back, behind the others is healed: at
its first quorum it fetches model, inner and outer optimiser state from a live peer over HTTP.
Each committed outer step is also written to `--out` (`state.pt` to resume, `checkpoint/` for
everything else), so a restarted worker resumes from its own last step as well.

Compression: torchft 0.2.0's `should_quantize` needs Triton (GPU); without it torchft silently
sends fp32. `CompressingManager` does it on CPU instead: it encodes the flat pseudo-gradient
(merge/compress.py), all-gathers the payloads over the same fault-tolerant process group and
averages the decoded vectors in replica order. (An all-gather, not an all-reduce: int8 codes
with different scales cannot be summed on the wire.) `bytes_sent` counts one payload per worker
per outer step, the measure used throughout merge/. On the wire a ring all-reduce sends
2(N-1)/N vectors per worker and a ring all-gather N-1 payloads: with two workers both are one.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from pathlib import Path

import torch

from bitnet.checkpoint import descent, load_checkpoint, save_checkpoint
from bitnet.data import load_corpus
from bitnet.evaluate import evaluate_bpb
from bitnet.model import BitNetConfig, BitNetLM
from merge.compress import check_kind, payload_bytes
from merge.diloco_net import (
    WorkerError,
    gloo_interface,
    lighthouse_url,
    reach_lighthouse,
    require_torchft,
    torchft_classes,
)
from merge.inner import InnerConfig, fresh_model, inner_optimizer, train_steps
from merge.outer import OUTER_LR, OUTER_MOMENTUM, outer_optimizer

STATE_FILE = "state.pt"  # everything needed to resume (model, optimisers, step, data stream)
CHECKPOINT_DIR = "checkpoint"  # the global weights as a normal checkpoint directory
PROGRESS_FILE = "progress.jsonl"  # one JSON line per outer step
LOG_FILE = "torchft.log"  # torchft's own log (tracebacks of peers that left go here)
LOCK_FILE = ".lock"  # held while a worker uses the directory
_STATE_FORMAT = 1


@dataclass
class WorkerOptions:
    lighthouse: str  # http://HOST:PORT of `magnet-agent lighthouse`
    corpus: str  # bitnet.data.KNOWN_CORPORA
    out: Path
    replica_id: str = ""  # default: the hostname
    init: Path | None = None  # the common base checkpoint; None: fresh_model(config, seed)
    inner_steps: int = 50
    outer_steps: int = 100
    outer_lr: float = OUTER_LR
    outer_momentum: float = OUTER_MOMENTUM
    inner: InnerConfig = field(default_factory=InnerConfig)
    seed: int = 1337  # model initialisation without --init (the same on every worker)
    data_seed: int | None = None  # batch stream; default: seed + crc32(replica_id)
    shard: tuple[int, int] = (0, 1)  # (k, n): the k-th of n contiguous slices of the corpus
    compress: str = "none"
    host: str | None = None  # address peers reach this worker at; default: the route to the LH
    min_replicas: int = 1  # commit an outer step only with at least this many replicas
    timeout: float = 60.0  # seconds for a collective, a commit vote or a heal
    quorum_timeout: float = 1800.0  # seconds to wait for a quorum (peers may be mid-round)
    threads: int | None = None  # torch threads; 1 gives run-to-run identical numbers
    config: BitNetConfig = field(default_factory=BitNetConfig)  # shapes without --init


@dataclass
class StepReport:
    """One outer step as the worker saw it (also a line of progress.jsonl)."""

    step: int  # outer steps committed so far
    committed: bool  # False: the step was discarded (a peer failed mid-sync) and is redone
    replicas: int  # replica groups in this step's quorum
    loss: float  # mean inner loss over the H steps
    bytes_sent: int  # this worker's total so far
    healed_from_peer: bool  # this step started by catching up from a live peer
    seconds: float  # since the worker started


# --- the worker ------------------------------------------------------------------------------


def check_options(opts: WorkerOptions) -> None:
    """Refuse bad numbers before anything starts."""
    check_kind(opts.compress)
    for name in ("inner_steps", "outer_steps", "min_replicas"):
        if getattr(opts, name) < 1:
            raise WorkerError(f"--{name.replace('_', '-')} must be at least 1")
    if opts.outer_lr <= 0:
        raise WorkerError("--outer-lr must be positive")
    if not 0 <= opts.outer_momentum < 1:
        raise WorkerError("--outer-momentum must be in [0, 1)")
    k, n = opts.shard
    if not 0 <= k < n:
        raise WorkerError(f"--shard {k}/{n}: use K/N with 0 <= K < N")
    if opts.timeout <= 0 or opts.quorum_timeout <= 0:
        raise WorkerError("--timeout and --quorum-timeout must be positive seconds")
    if opts.threads is not None and opts.threads < 1:
        raise WorkerError("--threads must be at least 1")


def _base_model(opts: WorkerOptions) -> tuple[BitNetLM, list[str]]:
    """The starting model and the lineage its checkpoints record (empty for a fresh model)."""
    if opts.init is None:
        context = max(opts.config.max_position_embeddings, opts.inner.seq_len)
        return fresh_model(replace(opts.config, max_position_embeddings=context), opts.seed), []
    model = load_checkpoint(opts.init)
    if opts.inner.seq_len > model.config.max_position_embeddings:
        raise WorkerError(f"--seq-len {opts.inner.seq_len} exceeds the {opts.init} model's "
                          f"context of {model.config.max_position_embeddings}: lower --seq-len")
    return model.train(), descent(opts.init)


def _train_array(opts: WorkerOptions):
    corpus = load_corpus(opts.corpus)
    k, n = opts.shard
    size = len(corpus.train) // n
    train = corpus.train[k * size: (k + 1) * size]
    if len(train) <= opts.inner.seq_len:
        raise WorkerError(f"{opts.corpus} shard {k}/{n} has {len(train)} training bytes, fewer "
                          f"than --seq-len {opts.inner.seq_len} + 1: use a larger corpus")
    return corpus, train


def _atomic_save(obj: object, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _quiet_torchft_logs(out: Path) -> None:
    """torchft logs every failed peer with a traceback; keep that in a file, not the console."""
    handler = logging.FileHandler(out / LOG_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    for name in ("torchft", "torchft_quorums", "torchft_commits", "torchft_errors"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False


@dataclass
class _Local:
    """What a worker holds before it talks to anyone."""

    model: BitNetLM
    lineage: list[str]
    corpus: object  # bitnet.data.Corpus (its .val scores the end result)
    train: object  # this worker's uint8 training array
    optimizer: torch.optim.Optimizer
    outer: torch.optim.Optimizer
    generator: torch.Generator
    resumed: dict | None  # the state.pt this worker resumes from


def _prepare(opts: WorkerOptions, replica_id: str) -> _Local:
    """Model, data, optimisers and batch stream; from `--out`'s state.pt when there is one."""
    if opts.threads:
        torch.set_num_threads(opts.threads)
    model, lineage = _base_model(opts)
    corpus, train = _train_array(opts)
    optimizer = inner_optimizer(model, opts.inner)
    outer = outer_optimizer(model.parameters(), lr=opts.outer_lr, momentum=opts.outer_momentum)
    data_seed = (opts.data_seed if opts.data_seed is not None
                 else opts.seed + zlib.crc32(replica_id.encode()))
    generator = torch.Generator().manual_seed(data_seed)
    state_path = opts.out / STATE_FILE
    resumed = None
    if state_path.is_file():
        try:
            resumed = torch.load(state_path, weights_only=True)  # tensors and numbers only
            model.load_state_dict(resumed["model"])
            optimizer.load_state_dict(resumed["inner_optimizer"])
            outer.load_state_dict(resumed["outer_optimizer"])
            generator.set_state(resumed["generator"])
        except Exception as err:  # noqa: BLE001 - unpickling can fail in many ways
            raise WorkerError(f"cannot resume from {state_path} ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}): it is from "
                              "another model or damaged; use another --out or delete it") from err
    return _Local(model, lineage, corpus, train, optimizer, outer, generator, resumed)


def _manager(opts: WorkerOptions, local: _Local, replica_id: str, url: str, host: str,
             healed: list[bool]):
    """torchft's Manager for a one-process replica group; returns (manager, its TCPStore)."""
    os.environ.setdefault("RUST_LOG", "warn")  # read once, when torchft's Rust half is imported
    # torchft loads a healing checkpoint from a read-only buffer and only reads it
    warnings.filterwarnings("ignore", message="The given buffer is not writable")
    from torch.distributed import TCPStore

    require_torchft()
    from torchft.process_group import ProcessGroupGloo

    transport_cls, manager_cls = torchft_classes(host)

    def load_state(state: dict) -> None:  # torchft calls it only to heal from a peer
        local.model.load_state_dict(state["model"])
        local.optimizer.load_state_dict(state["inner_optimizer"])
        healed[0] = True

    def save_state() -> dict:  # what a peer that heals from this worker receives
        return {"model": local.model.state_dict(),
                "inner_optimizer": local.optimizer.state_dict()}

    timeout = timedelta(seconds=opts.timeout)
    store = TCPStore(host_name=host, port=0, is_master=True, wait_for_workers=False)
    manager = manager_cls(
        pg=ProcessGroupGloo(timeout=timeout),
        load_state_dict=load_state,
        state_dict=save_state,
        min_replica_size=opts.min_replicas,
        use_async_quorum=False,  # DiLoCo requires it: heal before the step, not during
        timeout=timeout,
        quorum_timeout=timedelta(seconds=opts.quorum_timeout),
        connect_timeout=timedelta(seconds=min(opts.timeout, 30.0)),
        rank=0,
        world_size=1,  # one process per replica group (machine)
        store_addr=host,
        store_port=store.port,
        lighthouse_addr=url,
        replica_id=replica_id,
        hostname=host,
        checkpoint_transport=transport_cls(timeout=timeout, num_chunks=0),
        init_sync=False,  # all start from the same base; only replicas behind are healed
    )
    manager.compression = opts.compress
    if local.resumed is not None:
        manager.load_state_dict({"step": local.resumed["step"],
                                 "batches_committed": local.resumed["batches_committed"]})
        manager.bytes_sent = local.resumed["bytes_sent"]
    return manager, store


def _save(opts: WorkerOptions, local: _Local, manager, line: StepReport, replica_id: str
          ) -> None:
    """Write the committed outer step: state.pt (resume), checkpoint/ and a progress line."""
    _atomic_save({
        "format": _STATE_FORMAT, "replica_id": replica_id, "step": manager.current_step(),
        "batches_committed": manager.batches_committed(), "model": local.model.state_dict(),
        "inner_optimizer": local.optimizer.state_dict(),
        "outer_optimizer": local.outer.state_dict(), "generator": local.generator.get_state(),
        "bytes_sent": manager.bytes_sent,
    }, opts.out / STATE_FILE)
    save_checkpoint(local.model, opts.out / CHECKPOINT_DIR, lineage=local.lineage)
    with (opts.out / PROGRESS_FILE).open("a") as f:
        f.write(json.dumps(asdict(line)) + "\n")


@contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Hold `out` for this worker alone: two workers writing one state.pt would corrupt it."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / LOCK_FILE).open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise WorkerError(f"{out} is in use by another worker: give each worker its own "
                              "--out (or --replica-id)") from err
        yield


def run_worker(opts: WorkerOptions, report: Callable[[StepReport], None] | None = None,
               status: Callable[[str], None] | None = None,
               notice: Callable[[str], None] | None = None) -> dict:
    """Train until `opts.outer_steps` outer steps are committed; returns a summary dict.

    `report` gets every outer step, `status` short text on what the worker is doing now,
    `notice` lines worth keeping (resuming, the address peers use). Raises WorkerError,
    CorpusError or CheckpointError for bad input (checked before anything connects), and
    RuntimeError when torchft gives up (e.g. no quorum within --quorum-timeout).
    """
    check_options(opts)
    say = status or (lambda _text: None)
    tell = notice or (lambda _text: None)
    start = time.perf_counter()
    url = lighthouse_url(opts.lighthouse)
    replica_id = opts.replica_id or socket.gethostname()
    with _exclusive(opts.out):
        local = _prepare(opts, replica_id)
        if local.resumed is not None:
            tell(f"resuming from outer step {local.resumed['step']} ({opts.out / STATE_FILE})")
        say(f"connecting to the lighthouse at {url}")
        route = reach_lighthouse(url)
        host = opts.host or route
        if "GLOO_SOCKET_IFNAME" not in os.environ and (interface := gloo_interface(host)):
            os.environ["GLOO_SOCKET_IFNAME"] = interface  # else gloo uses the hostname's address
        _quiet_torchft_logs(opts.out)
        healed = [False]
        manager, store = _manager(opts, local, replica_id, url, host, healed)
        tell(f"lighthouse {url} reached; peers reach this worker at {host}")
        try:
            _train(opts, local, manager, healed, replica_id, start, report, say)
        finally:
            manager.shutdown(wait=False)
            del store

    say("scoring the final model")
    val = local.corpus.val
    val_bpb = (evaluate_bpb(local.model, val, opts.inner.seq_len)[0]
               if len(val) > opts.inner.seq_len else None)
    return {"replica_id": replica_id, "outer_steps": manager.current_step(), "val_bpb": val_bpb,
            "bytes_sent": manager.bytes_sent,
            "bytes_per_outer_step": payload_bytes(
                sum(p.numel() for p in local.model.parameters()), opts.compress),
            "checkpoint": str(opts.out / CHECKPOINT_DIR),
            "seconds": time.perf_counter() - start}


def _train(opts: WorkerOptions, local: _Local, manager, healed: list[bool], replica_id: str,
           start: float, report: Callable[[StepReport], None] | None,
           say: Callable[[str], None]) -> None:
    """Inner steps until the manager has committed `opts.outer_steps` outer steps."""
    from torchft.local_sgd import DiLoCo

    H = opts.inner_steps
    with DiLoCo(manager, [local.model], local.optimizer, local.outer, sync_every=H,
                pin_memory=False, use_bucketization=True,  # one collective per sync
                should_quantize=opts.compress != "none"):
        while manager.current_step() < opts.outer_steps:
            before = manager.current_step()
            healed[0] = False

            def inner_status(step: int, loss: float, before: int = before) -> None:
                done = step - before * H + 1
                say(f"outer {before + 1}/{opts.outer_steps} · inner {done}/{H} · "
                    f"loss {loss:.3f}" + (" · waiting for the quorum" if done == H else ""))

            # the H-th optimizer.step() runs torchft's sync: quorum, heal, all-reduce, outer step
            losses = train_steps(local.model, local.optimizer, local.train, local.generator, H,
                                 opts.inner, first_step=before * H, on_step=inner_status)
            line = StepReport(
                step=manager.current_step(), committed=manager.last_commit,
                replicas=manager.num_participants(), loss=sum(losses) / len(losses),
                bytes_sent=manager.bytes_sent, healed_from_peer=healed[0],
                seconds=round(time.perf_counter() - start, 3))
            if line.committed:
                _save(opts, local, manager, line, replica_id)
            if report is not None:
                report(line)
