"""`magnet-agent lighthouse` and `magnet-agent diloco`: DiLoCo across machines on torchft.

    magnet-agent lighthouse --bind 0.0.0.0:29510               # once, on any reachable machine
    magnet-agent diloco --lighthouse http://HOST:29510 --corpus text:~/my-notes --init BASE

`add_commands(commands)` registers both on the CLI's subparsers, `main(args)` runs one. Also
runnable as `python -m agent.cli.diloco lighthouse|diloco ...`.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from agent.cli import options
from agent.cli.errors import fail, first_line
from agent.cli.fast_exit import run_and_exit
from merge.method_names import COMPRESSIONS

COMMANDS = ("diloco", "lighthouse")
# torch is imported when a command runs: numeric defaults below are None, resolved from merge/
# and bitnet/ then


def add_commands(commands: options.Subparsers) -> None:
    """Register the `diloco` and `lighthouse` subcommands."""
    worker = commands.add_parser(
        "diloco", help="join a DiLoCo run as one worker (replica group): train H inner steps "
                       "on your corpus, then average pseudo-gradients with the others")
    worker.add_argument("--lighthouse", required=True, metavar="URL",
                        help="http://HOST:PORT of `magnet-agent lighthouse`")
    worker.add_argument("--corpus", default="portable-code",
                        help="portable-code (default: the same bytes on every machine) | "
                             "portable-prose | pycode | pyprose | text:PATH")
    worker.add_argument("--shard", default="0/1", metavar="K/N",
                        help="train on the K-th of N equal slices of the corpus (default 0/1)")
    worker.add_argument("--init", metavar="RUN|RUN:EXP|CHECKPOINT",
                        help="the common base checkpoint every worker starts from (default: a "
                             "fresh model from --seed, the same on every worker)")
    worker.add_argument("--out", metavar="DIR",
                        help="checkpoints every outer step; the same command resumes from it "
                             "(default: diloco/<replica-id>)")
    worker.add_argument("--replica-id", default="", help="a name for this worker, shown by the "
                        "lighthouse (default: the hostname; give one per worker when several "
                        "run on one machine)")
    worker.add_argument("--inner-steps", type=int, default=50, metavar="H",
                        help="AdamW steps between synchronisations (default 50)")
    worker.add_argument("--outer-steps", type=int, default=100,
                        help="synchronisations, then the worker stops (default 100)")
    worker.add_argument("--outer-lr", type=float, help="outer Nesterov SGD (default 0.7)")
    worker.add_argument("--outer-momentum", type=float, help="(default 0.9)")
    worker.add_argument("--inner-lr", type=float, help="inner AdamW, after warmup (default 4e-3)")
    worker.add_argument("--warmup-steps", type=int, help="inner warmup (default 30)")
    worker.add_argument("--batch-size", type=int, help="(default 16)")
    worker.add_argument("--seq-len", type=int, help="(default 128)")
    worker.add_argument("--seed", type=int, default=1337,
                        help="initialises the model when there is no --init")
    worker.add_argument("--data-seed", type=int,
                        help="batch sampling (default: --seed + a hash of --replica-id)")
    worker.add_argument("--compress", choices=COMPRESSIONS, default="none",
                        help="wire format of pseudo-gradients: fp16 halves, int8 quarters them")
    worker.add_argument("--min-replicas", type=int, default=1,
                        help="commit an outer step only with at least this many workers")
    worker.add_argument("--host", help="address other workers reach this one at (default: "
                                       "this machine's address on the route to the lighthouse)")
    worker.add_argument("--timeout", type=float, default=60.0,
                        help="seconds for one all-reduce, commit vote or heal")
    worker.add_argument("--quorum-timeout", type=float, default=1800.0,
                        help="seconds to wait for the others at a synchronisation")
    worker.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    worker.add_argument("--layers", type=int, help="without --init: depth (default 4)")
    worker.add_argument("--hidden", type=int,
                        help="without --init: hidden size, intermediate 4x (default 96)")
    worker.add_argument("--heads", type=int, help="without --init (default 4)")
    worker.add_argument("--kv-heads", type=int, help="without --init (default 2)")

    lighthouse = commands.add_parser(
        "lighthouse", help="coordinate DiLoCo workers (torchft's lighthouse): forms a quorum "
                           "of the live workers before every outer step")
    lighthouse.add_argument("--bind", default="0.0.0.0:29510", metavar="HOST:PORT")
    lighthouse.add_argument("--min-replicas", type=int, default=1,
                            help="workers needed for a quorum (the first step waits for them)")
    lighthouse.add_argument("--join-timeout", type=float, default=10.0, metavar="SECONDS",
                            help="how long a quorum waits for workers that heartbeat but have "
                                 "not asked to join yet")
    lighthouse.add_argument("--heartbeat-timeout", type=float, default=5.0, metavar="SECONDS",
                            help="silence after which a worker counts as gone")
    lighthouse.add_argument("--quorum-tick-ms", type=int, default=100)


def main(args: argparse.Namespace) -> int:
    """Run `diloco` or `lighthouse` from parsed arguments; returns the exit status."""
    if args.command == "lighthouse":
        return lighthouse(args)
    return diloco(args)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends like Ctrl-C, so `finally` blocks shut torchft's servers down."""
    def handler(_signum, _frame) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def lighthouse(args: argparse.Namespace) -> int:
    from merge.lighthouse import LighthouseError, LighthouseOptions, QuorumStatus, start, watch

    console = Console(highlight=False)
    opts = LighthouseOptions(bind=args.bind, min_replicas=args.min_replicas,
                             join_timeout=args.join_timeout, quorum_tick_ms=args.quorum_tick_ms,
                             heartbeat_timeout=args.heartbeat_timeout)
    try:
        server = start(opts)
    except LighthouseError as err:
        return fail(str(err))
    address = server.address()
    port = address.rsplit(":", 1)[1]
    console.print(f"lighthouse listening on {opts.bind} (port {port}); quorum of at least "
                  f"{opts.min_replicas} worker(s), join timeout {opts.join_timeout:g} s, "
                  f"heartbeat timeout {opts.heartbeat_timeout:g} s", markup=False, soft_wrap=True)
    console.print(f"workers: magnet-agent diloco --lighthouse http://{_shown_host(opts.bind)}:"
                  f"{port} --corpus ...   (status page: {address}/status)", markup=False,
                  soft_wrap=True)

    def show(status: QuorumStatus) -> None:
        members = ", ".join(f"{name.split(':')[0]} (step {step})"
                            for name, step in status.replicas) or "none"
        console.print(f"quorum {status.quorum_id}: {len(status.replicas)} worker(s): {members}",
                      markup=False, soft_wrap=True)

    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(f"http://127.0.0.1:{port}", show, stop),
                               daemon=True)
    watcher.start()
    try:
        with _sigterm_as_interrupt():
            while not stop.wait(3600):
                pass
    except KeyboardInterrupt:
        console.print("lighthouse stopped", markup=False)
    finally:
        stop.set()
        server.shutdown()
    return 0


def _shown_host(bind: str) -> str:
    """The address to print for workers: the bind host, or this machine's first LAN IPv4."""
    host = bind.rpartition(":")[0].strip("[]")
    if host not in ("", "0.0.0.0", "::"):
        return host
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        for a in addresses:
            if a.family == socket.AF_INET and not a.address.startswith("127.") and name != "lo":
                return a.address
    return socket.gethostname()


def _shard(text: str) -> tuple[int, int]:
    k, sep, n = text.partition("/")
    if not sep or not k.isdigit() or not n.isdigit():
        raise ValueError(f"--shard {text!r} is not K/N: use e.g. 0/2 for the first of two")
    return int(k), int(n)


def diloco(args: argparse.Namespace) -> int:
    from agent.rundir.checkpoint_ref import resolve_checkpoint
    from bitnet.checkpoint import CheckpointError
    from bitnet.data import CorpusError
    from bitnet.model import BitNetConfig
    from merge.diloco_worker import StepReport, WorkerError, WorkerOptions, run_worker
    from merge.inner import InnerConfig
    from merge.outer import OUTER_LR, OUTER_MOMENTUM

    console = Console(highlight=False)
    try:
        inner = InnerConfig(**_given(args, lr="inner_lr", warmup_steps="warmup_steps",
                                     batch_size="batch_size", seq_len="seq_len"))
        shapes = BitNetConfig(**_given(args, hidden_size="hidden", num_hidden_layers="layers",
                                       num_attention_heads="heads",
                                       num_key_value_heads="kv_heads"))
        shapes.intermediate_size = 4 * shapes.hidden_size
        shard = _shard(args.shard)
        init = resolve_checkpoint(args.init) if args.init else None  # RUN, RUN:EXP or a dir
    except ValueError as err:  # RunError too
        return fail(str(err))
    replica_id = args.replica_id or socket.gethostname()
    opts = WorkerOptions(
        lighthouse=args.lighthouse, corpus=args.corpus, replica_id=replica_id,
        out=Path(args.out) if args.out else Path("diloco") / replica_id,
        init=init, inner_steps=args.inner_steps,
        outer_steps=args.outer_steps,
        outer_lr=OUTER_LR if args.outer_lr is None else args.outer_lr,
        outer_momentum=OUTER_MOMENTUM if args.outer_momentum is None else args.outer_momentum,
        inner=inner, seed=args.seed,
        data_seed=args.data_seed, shard=shard, compress=args.compress, host=args.host,
        min_replicas=args.min_replicas, timeout=args.timeout,
        quorum_timeout=args.quorum_timeout, threads=args.threads, config=shapes)

    def report(line: StepReport) -> None:
        if not line.committed:
            console.print(f"outer step {line.step + 1} discarded (a worker left mid-sync); "
                          "redoing it with the workers still alive", markup=False)
            return
        healed = " · caught up from a live peer" if line.healed_from_peer else ""
        console.print(f"outer {line.step}/{opts.outer_steps} · loss {line.loss:.4f} · "
                      f"{line.replicas} worker(s) · sent {_size(line.bytes_sent)} "
                      f"({opts.compress}) · {line.seconds:.1f}s{healed}", markup=False,
                      soft_wrap=True)

    console.print(f"worker {replica_id}: corpus {opts.corpus}, H={opts.inner_steps}, "
                  f"{opts.outer_steps} outer steps, compression {opts.compress}, "
                  f"checkpoints in {opts.out}", markup=False, soft_wrap=True)
    try:
        with _sigterm_as_interrupt(), console.status("starting", spinner="dots") as spinner:
            summary = run_worker(opts, report, lambda text: spinner.update(text),
                                 lambda text: console.print(text, markup=False, soft_wrap=True))
    except (WorkerError, CorpusError, CheckpointError) as err:
        return fail(first_line(err))
    except KeyboardInterrupt:
        console.print(f"stopped; run the same command again to resume from {opts.out}",
                      markup=False, soft_wrap=True)
        # torchft's quorum thread may sit in a call to a lighthouse that is gone, and Python
        # would wait for it at exit; every committed step is already on disk (atomically)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    except (RuntimeError, TimeoutError) as err:
        return fail(f"torchft gave up ({first_line(err)}); are the lighthouse and the other "
                    f"workers still up? The last outer step is in {opts.out}: rerun to resume")
    bpb = f"val_bpb {summary['val_bpb']:.4f} on {opts.corpus}" if summary["val_bpb"] else ""
    console.print(f"done: {summary['outer_steps']} outer steps, {bpb}, sent "
                  f"{_size(summary['bytes_sent'])} ({_size(summary['bytes_per_outer_step'])} "
                  f"per outer step); checkpoint {summary['checkpoint']}", markup=False,
                  soft_wrap=True)
    return 0


def _given(args: argparse.Namespace, **names: str) -> dict:
    """{field: value} of the options given on the command line (the rest keep their defaults)."""
    return {field: getattr(args, name) for field, name in names.items()
            if getattr(args, name) is not None}


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m agent.cli.diloco")
    add_commands(parser.add_subparsers(dest="command", required=True))
    run_and_exit(lambda: main(parser.parse_args()))
