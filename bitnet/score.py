"""The trusted scorer: a checkpoint's val_bpb (and test_bpb), computed here so the experiment
cannot forge it.

The experiment's code (train.py and model.py) is untrusted, so it never runs in this process.
Two logits servers (bitnet.logits_server, started from the argv the caller gives, which may
confine them) load the checkpoint with the experiment's model.py; this side holds the
validation bytes (and the held-out test bytes, when given), sends windows, checks every reply
(exact size, finite) and computes the loss itself, with the tiling and batches of
bitnet.evaluate. The servers score the validation windows, then the test windows, so each loads
the model once for both; the two scores never mix (each split is tiled on its own).

Two servers share the work: each scores every other batch (one thread each, so a score does
not depend on the machine's core count or load, and the two run side by side on two cores).

Causality check: the model sees a whole window at once, so it could read the bytes it is
scored on. `causal_windows` windows of each split, chosen with a secret seed, go back to the
server that did not score them, each with its bytes from a random cut c on replaced by bytes
from elsewhere in the same split (real text, like any window; byte c always differs), and each
split's shorter tail window likewise. The logits before c must equal the scoring server's for
the original window: a model that reads ahead even one byte at position c-1 changes them,
whatever the checking server does, as it never sees byte c of the original (windows do not
overlap, and the two servers are separate sandboxes that cannot talk). c ranges over [1, L-1],
so every scored position can be the checked one; a model that reads ahead at only a fraction f
of positions still escapes with probability about (1-f)**causal_windows.

Tokenized models (a vocabulary over 256): the servers get token ids and answer V logits a
position, V being config.json's vocab_size, validated here and matched against the checkpoint's
tokenizer (bitnet.tokenizer; a caller may pass the trusted copy instead), which encodes the
windows here, as bitnet.evaluate describes. The causality check alters the same byte windows at
the same cuts; the original and the altered window are encoded, and the logits over the token
prefix the two share must be equal (it ends at or before the cut: a token may span the cut).
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import secrets
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from bitnet.checkpoint import CONFIG_FILE
from bitnet.evaluate import (
    BYTE_VOCAB,
    EVAL_BYTES,
    Request,
    batch_nats,
    batch_windows,
    encode_batch,
    eval_batches,
    is_bytes,
    pad_ids,
    scored_bytes,
    window_ids,
)
from bitnet.logits_client import LogitsClient, ScoreError, ServerStart
from bitnet.logits_server import MAX_VOCAB, SERVERS
from bitnet.torch_threads import num_threads

if TYPE_CHECKING:
    from bitnet.tokenizer import TextTokenizer

CAUSAL_WINDOWS = 8  # windows checked for look-ahead, each at one random cut
# Same code, weights and thread count give bit-identical logits (measured: 0.0 on a trained
# template model, variants batched 8 vs originals 32); the margin absorbs float32 kernels that
# depend on the batch shape. A leak smaller than this moves each log-probability by at most
# 2 * CAUSAL_ATOL nats, under 3e-4 bits per byte. A tokenized model's altered windows are padded
# to other lengths than its scoring batches: measured 1.9e-6 on a 2-layer BPE model.
CAUSAL_ATOL = 1e-4
SEQ_LEN_RANGE = (8, 8192)  # accepted max_position_embeddings
_CONFIG_LIMIT = 1 << 20  # bytes read of a config.json at most


@dataclass(frozen=True)
class Score:
    val_bpb: float
    bytes_scored: int
    causal_max_diff: float  # largest logit change before a cut in the causality check
    seconds: float  # wall time of the whole scoring
    test_bpb: float | None = None  # the held-out test split's score (None: no test bytes given)
    test_bytes_scored: int = 0


class CausalityError(ScoreError):
    """The model's predictions depend on bytes after the one they predict."""


def score_checkpoint(
    val: np.ndarray,
    checkpoint_dir: str | os.PathLike,
    server_argv: ServerStart,
    *,
    timeout: float,
    test: np.ndarray | None = None,
    test_if: Callable[[float], bool] | None = None,
    seq_len: int | None = None,
    eval_bytes: int = EVAL_BYTES,
    causal_windows: int = CAUSAL_WINDOWS,
    seed: int | None = None,
    tokenizer: TextTokenizer | None = None,
) -> Score:
    """Score the checkpoint through two logits servers started with `server_argv` (or given,
    started, by it when it is a callable: `server_argv(role)`).

    `test`: the held-out test bytes, scored after `val` by the same servers (`Score.test_bpb`,
    tiled, scored and checked exactly as `val` alone would be); `test_if`, given the val_bpb,
    says whether to score them (the test split costs as much as the validation split: a caller
    skips it for a run whose score cannot matter). `timeout` bounds the whole scoring (both
    servers' start-up included); `seq_len` defaults to the checkpoint's max_position_embeddings;
    `seed` fixes the causality check (tests only: by default it is secret). `tokenizer`: the
    model's, for a vocabulary over 256 (default: the one the checkpoint carries); its vocabulary
    must be config.json's. Raises ScoreError (CausalityError for a look-ahead).
    """
    start = time.monotonic()
    if isinstance(server_argv, str) or not server_argv:
        raise ValueError("server_argv must be a non-empty sequence of arguments")
    if not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
    if causal_windows < 1:
        raise ValueError(f"causal_windows must be 1 or more, got {causal_windows}")
    if seq_len is None:
        seq_len = checkpoint_seq_len(checkpoint_dir)
    vocab = checkpoint_vocab_size(checkpoint_dir)
    tokenizer = _tokenizer(checkpoint_dir, vocab, tokenizer)
    rng = np.random.default_rng(secrets.randbits(128) if seed is None else seed)
    splits = [_Split(val, seq_len, eval_bytes, causal_windows, rng, tokenizer, vocab)]
    if test is not None:
        splits.append(_Split(test, seq_len, eval_bytes, causal_windows, rng, tokenizer, vocab))
    deadline = start + timeout
    # this process's torch on one thread while the servers score: its second OpenMP thread
    # would spin at every barrier beside the two busy servers, on cycles they need (measured:
    # 0.65 against 0.22 CPU-seconds of this process for the 4-layer baseline's two splits); the
    # sums do not depend on it (batch_nats gives the same float on one thread or two)
    with num_threads(1), \
            LogitsClient(server_argv, SERVERS[0], deadline, timeout, vocab) as first, \
            LogitsClient(server_argv, SERVERS[1], deadline, timeout, vocab) as second:
        servers = (first, second)
        splits[0].score(servers, "validation")
        if test is not None and (test_if is None or test_if(splits[0].bpb())):
            splits[1].score(servers, "test")
        scored = [split for split in splits if split.nats is not None]
        first.finish()
        second.finish()
    causal_max_diff = max(split.check() for split in scored)
    bpb = [split.bpb() for split in scored]
    if not all(math.isfinite(value) for value in bpb):
        raise ScoreError(f"the loss is {bpb[0]}: the logits are too extreme to score")
    tested = ({"test_bpb": bpb[1], "test_bytes_scored": scored[1].n_bytes}
              if len(scored) > 1 else {})
    return Score(bpb[0], splits[0].n_bytes, causal_max_diff, time.monotonic() - start, **tested)


class _Split:
    """One split's windows, its causality checks (picked up front, so the secret seed decides
    them before any reply) and, once scored, its summed loss and the originals to check."""

    def __init__(self, data: np.ndarray, seq_len: int, eval_bytes: int, k: int,
                 rng: np.random.Generator, tokenizer: TextTokenizer | None = None,
                 vocab: int = BYTE_VOCAB) -> None:
        self.batches = eval_batches(data, seq_len, eval_bytes, batch_windows(seq_len, vocab))
        self.checks = _pick_checks(data, self.batches, seq_len, k, rng)
        try:  # the model's input: the windows themselves, or their tokens (bitnet.evaluate)
            self.requests: list[Request] = [encode_batch(b, tokenizer) for b in self.batches]
            if not is_bytes(tokenizer):
                assert tokenizer is not None
                self.checks = [[_tokenized(check, self.requests, tokenizer) for check in request]
                               for request in self.checks]
        except ValueError as err:
            raise ScoreError(str(err)) from err
        self.unit = "byte" if is_bytes(tokenizer) else "token"
        self.n_bytes = scored_bytes(self.batches)
        self.nats: float | None = None
        self.name = ""
        self.originals: dict[tuple[int, int], np.ndarray] = {}
        self.replies: list[np.ndarray | None] = []  # the checking server's logits, by request

    def score(self, servers: Sequence[LogitsClient], name: str) -> None:
        """Every batch scored by its server (SERVERS[b % 2]), the two side by side; behind its
        batches, each server gets the causality checks of windows the other scored (no round of
        their own: both are compared once all is in)."""
        self.name, self.nats = name, 0.0
        nats = [0.0] * len(self.batches)  # summed in batch order: the same float every time
        self.replies = [None] * len(self.checks)  # each set as its reply comes
        work: list[list[_Request]] = [[] for _ in servers]
        for i, (ids, _) in enumerate(self.requests):
            what = f"{name} batch {i + 1} of {len(self.batches)}"
            work[_scorer_of(i)].append((ids, what, functools.partial(self._scored, i, nats)))
        for r, request in enumerate(self.checks):
            work[_checker(request)].append((_variants(request),
                                            f"the {name} causality-check windows",
                                            functools.partial(self.replies.__setitem__, r)))
        _serve(servers, work)
        self.nats = sum(nats)

    def _scored(self, i: int, nats: list[float], logits: np.ndarray) -> None:
        ids, lengths = self.requests[i]
        nats[i] = batch_nats(torch.from_numpy(logits), torch.from_numpy(ids.astype(np.int64)),
                             lengths)
        for check in itertools.chain(*self.checks):
            if check.batch == i:
                self.originals[i, check.row] = logits[check.row, : check.cut].copy()

    def bpb(self) -> float:
        assert self.nats is not None
        return self.nats / self.n_bytes / math.log(2)

    def check(self) -> float:
        """The largest logit change before a cut; CausalityError past CAUSAL_ATOL."""
        worst_all = 0.0
        for check, logits in zip(itertools.chain(*self.checks), itertools.chain(*self.replies),
                                 strict=True):
            diff = np.abs(logits[: check.cut] - self.originals[check.batch, check.row]).max(-1)
            worst = float(diff.max())
            worst_all = max(worst_all, worst)
            if worst > CAUSAL_ATOL:
                position = int(np.argmax(diff > CAUSAL_ATOL))
                raise CausalityError(
                    f"the model's predictions at position {position} of a {len(logits)}-"
                    f"{self.unit} window changed (by {worst:.3g}) when only the {self.unit}s from"
                    f" position {check.cut} on changed ({self.name} bytes): it looks ahead (or"
                    " its logits are not deterministic)"
                )
        return worst_all


def checkpoint_seq_len(checkpoint_dir: str | os.PathLike) -> int:
    """max_position_embeddings from the checkpoint's config.json, validated."""
    path = Path(checkpoint_dir) / CONFIG_FILE
    config = _read_config(path)
    value = config.get("max_position_embeddings") if isinstance(config, dict) else None
    low, high = SEQ_LEN_RANGE
    if type(value) is not int or not low <= value <= high:
        raise ScoreError(
            f"{path}: max_position_embeddings must be an integer from {low} to {high}, "
            f"got {str(value)[:40]}"
        )
    return value


def checkpoint_vocab_size(checkpoint_dir: str | os.PathLike) -> int:
    """vocab_size from the checkpoint's config.json, validated: what the servers' model answers
    with. 256 (bytes) when config.json leaves it out, as BitNetConfig does, or has none (a
    server cannot load such a checkpoint anyway)."""
    path = Path(checkpoint_dir) / CONFIG_FILE
    if not os.path.lexists(path):
        return BYTE_VOCAB
    config = _read_config(path)
    value = config.get("vocab_size", BYTE_VOCAB) if isinstance(config, dict) else None
    if type(value) is not int or not BYTE_VOCAB <= value <= MAX_VOCAB:
        raise ScoreError(f"{path}: vocab_size must be an integer from {BYTE_VOCAB} to "
                         f"{MAX_VOCAB}, got {str(value)[:40]}")
    return value


def _tokenizer(checkpoint_dir: str | os.PathLike, vocab: int,
               given: TextTokenizer | None) -> TextTokenizer | None:
    """The tokenizer the windows are encoded with: None for a byte model (the windows are its
    input), else `given` or the checkpoint's, whose vocabulary must be config.json's."""
    if vocab == BYTE_VOCAB and is_bytes(given):
        return None
    if given is None:
        from bitnet.tokenizer import load_tokenizer

        try:
            given = load_tokenizer(checkpoint_dir)
        except (OSError, ValueError) as err:
            raise ScoreError(f"the checkpoint's tokenizer cannot be read: {err}") from err
    if given.vocab_size != vocab:
        raise ScoreError(
            f"{Path(checkpoint_dir) / CONFIG_FILE}: vocab_size {vocab} is not the tokenizer's"
            f" {given.vocab_size} ({given.spec}): save the checkpoint with its tokenizer"
        )
    return given


def _read_config(path: Path) -> object:
    """A config.json's JSON, read without trusting it (size, file type)."""
    try:  # O_NONBLOCK: a FIFO planted as config.json must not hang the controller
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ScoreError(f"{path} is not a regular file")
            raw = f.read(_CONFIG_LIMIT + 1)
        if len(raw) > _CONFIG_LIMIT:
            raise ScoreError(f"{path} is larger than {_CONFIG_LIMIT} bytes")
        config = json.loads(raw)
    except (OSError, ValueError) as err:
        raise ScoreError(f"{path} cannot be read as JSON ({err})") from err
    return config


class _Check(NamedTuple):
    batch: int  # where the original window is in the evaluation
    row: int
    cut: int  # the logits before this position must not change
    variant: np.ndarray  # the window with its bytes from `cut` on replaced (or its tokens)


def _pick_checks(
    data: np.ndarray, batches: list[np.ndarray], seq_len: int, k: int, rng: np.random.Generator
) -> list[list[_Check]]:
    """Requests of k random full windows (one per scoring server: the windows it scored), then
    the shorter tail window alone: its length sets it apart, so a model could look ahead there
    alone."""
    full = [(b, row) for b, batch in enumerate(batches) if batch.shape[1] == seq_len
            for row in range(len(batch))]
    picked = [full[i] for i in rng.choice(len(full), size=min(k, len(full)), replace=False)]
    checks = [_check(data, batches, b, row, rng) for b, row in picked]
    # one request per checking server: the windows the other one scored
    requests = [[c for c in checks if _scorer_of(c.batch) == s] for s in range(len(SERVERS))]
    requests += [[_check(data, batches, b, 0, rng)]
                 for b, batch in enumerate(batches) if batch.shape[1] != seq_len]
    return [request for request in requests if request]


def _check(
    data: np.ndarray, batches: list[np.ndarray], b: int, row: int, rng: np.random.Generator
) -> _Check:
    """A random cut in [1, T-1] and the window's bytes from there on taken from elsewhere in
    `data` (the window's own split)."""
    original = batches[b][row]
    length = len(original)
    cut = int(rng.integers(1, length))
    donor = int(rng.integers(0, len(data) - length + 1))
    variant = np.concatenate([original[:cut], data[donor + cut : donor + length]]).astype(np.uint8)
    if variant[cut] == original[cut]:  # the first replaced byte must really change
        variant[cut] = (int(original[cut]) + int(rng.integers(1, 256))) % 256
    return _Check(b, row, cut, variant)


def _tokenized(check: _Check, requests: list[Request], tokenizer: TextTokenizer) -> _Check:
    """A byte check as token ids: the altered window encoded, its cut moved to the end of the
    token prefix it shares with the original (a token may span the byte cut). The two differ
    after that prefix: both stand for different bytes of one length."""
    ids, lengths = requests[check.batch]
    assert lengths is not None
    original = ids[check.row, : lengths[check.row]]
    variant = window_ids(check.variant, tokenizer)
    n = min(len(original), len(variant))
    differ = np.flatnonzero(original[:n] != variant[:n])
    return check._replace(cut=int(differ[0]) if len(differ) else n, variant=variant)


def _scorer_of(batch: int) -> int:
    """The server (an index into SERVERS) that scores batch number `batch`."""
    return batch % len(SERVERS)


def _checker(request: list[_Check]) -> int:
    """The server that checks a request: the one that did not score its windows."""
    return 1 - _scorer_of(request[0].batch)


# windows to send, what they are (for messages) and what to do with the logits that come back
_Request = tuple[np.ndarray, str, Callable[[np.ndarray], None]]


def _serve(servers: Sequence[LogitsClient], work: Sequence[Sequence[_Request]]) -> None:
    """Each server's requests (work[s]) in order, one at a time per server, the servers side by
    side: a server gets its next request as soon as its last reply has been read."""
    queues = [list(requests) for requests in work]
    for server, queue in zip(servers, queues, strict=True):
        if queue:
            server.send(queue[0][0], queue[0][1])
    while any(queues):
        for server, queue in zip(servers, queues, strict=True):
            if not queue:
                continue
            windows, what, done = queue.pop(0)
            logits = server.receive(windows.shape, what)
            if queue:
                server.send(queue[0][0], queue[0][1])
            done(logits)


def _variants(request: list[_Check]) -> np.ndarray:
    variants = [check.variant for check in request]
    if len({len(v) for v in variants}) == 1:
        return np.stack(variants)
    return pad_ids(variants)[0]  # token windows of several lengths: padded as for scoring
