"""MAGNET's tokenizers, one interface: the byte tokenizer and trained byte-level BPEs.

Specs (what a template's `TOKENIZER` constant, `--tokenizer` and the records name)
  bytes     token id == byte value, 256 ids: the tokenizer of every model before this one
  bpe:N     a byte-level BPE of at most N entries (BPE_RANGE), trained with Hugging Face
            `tokenizers` on a corpus's training split; fewer when that split runs out of pairs
            that occur twice (the meta and the training log say so)

Ids 0..255 are the 256 single bytes in byte-value order, merged tokens follow in merge order,
so the byte tokenizer is exactly the BPE with no merges. Byte-level throughout: no normaliser, no
prefix space, no special tokens; a trained BPE splits valid UTF-8 with GPT-2's regex before
merging (as `AutoTokenizer` and llama.cpp's `gpt-2` pre-tokenizer do with its files), and bytes
that are no valid UTF-8 (a lone surrogate's encoding, a stray 0xff) stay single-byte tokens
between those pieces. So every byte sequence encodes, and decodes back exactly.

Fingerprint: sha256 of the tokenizer's canonical form (FORMAT and its merges as id pairs,
compact JSON), not of tokenizer.json, whose serialisation changes between `tokenizers` releases:
the same tokenizer has the same fingerprint on every machine. Claims, replays and checkpoints
carry it.

Stored beside the corpus cache (bitnet.data's entry for the corpus, so a rebuilt corpus drops
its stale tokenizers): `<entry>/tokenizers/bpe-N/` holds tokenizer.json and
tokenizer_config.json, meta.json (spec, fingerprint, corpus and training-split fingerprints,
sizes) and `train.tokens.bin` (the training split encoded, uint16), so an experiment spends no
budget tokenizing. Built from the training split alone (the validation and test bytes stay
unseen), in a temporary folder renamed into place; a second call finds it. Everything in that
folder derives from the training split, so experiments may read it (agent.scoring.scorer binds
`<entry>/tokenizers/` read-only; TOKENIZER_ENV names the folder of the run's tokenizer).

Checkpoints carry their tokenizer (TextTokenizer.save: tokenizer.json + tokenizer_config.json,
bitnet.checkpoint.save_checkpoint); `load_tokenizer(dir)` reads it back from a checkpoint or a
tokenizer folder, and a directory without tokenizer.json (a checkpoint from before) holds the
byte tokenizer.

Over 400 lines: ids, pre-tokenization, fingerprint and the stored folder are one contract that
the template, the scorer, the exports and the claims rely on together (as bitnet.data's corpus
format is); split across modules, the encoding and the stored training ids could drift apart.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from bitnet.checkpoint_files import CONFIG_FILE
from bitnet.hf_tokenizer import (
    N_BYTES,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    bpe_tokenizer,
    from_symbols,
    save_hf_tokenizer,
)

BYTES = "bytes"
BPE = "bpe"
BPE_RANGE = (512, 65_536)  # entries of a trained tokenizer: its ids fit uint16
FORMAT = 1  # the pre-tokenization rule and layout; bump when either changes
TOKENIZER_FILES = (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE)  # what a checkpoint carries of it
TOKENIZER_ENV = "MAGNET_TOKENIZER"  # a run's tokenizer folder (unset: the byte tokenizer)
TOKENIZERS_DIR = "tokenizers"  # in a corpus's cache entry
META_FILE = "meta.json"
TRAIN_TOKENS_FILE = "train.tokens.bin"
TOKEN_DTYPE = np.dtype("<u2")
MIN_FREQUENCY = 2  # a pair seen once is no pattern
_CHUNK = 1 << 16  # characters per piece handed to `tokenizers` at once (it encodes in parallel)
# a cut after a newline between two printable ASCII characters is a piece boundary of GPT-2's
# regex (no alternative spans "x\n" or "\ny"), so chunks encode exactly as the whole would
_SAFE_CUT = re.compile(r"(?<=[\x21-\x7e]\n)(?=[\x21-\x7e])")
_INVALID = re.compile(r"([\udc80-\udcff]+)")  # undecodable bytes, from surrogateescape

Progress = Callable[[str, float], None]  # (what is happening, fraction done 0..1)


class TokenizerError(ValueError):
    """A tokenizer spec or file that cannot be used; the message names the fix in one line."""


def parse_spec(spec: object) -> tuple[str, int]:
    """("bytes", 256) or ("bpe", N); an int N means "bpe:N". TokenizerError for anything else."""
    if spec == BYTES:
        return BYTES, N_BYTES
    text = f"{BPE}:{spec}" if isinstance(spec, int) and not isinstance(spec, bool) else spec
    low, high = BPE_RANGE
    if isinstance(text, str) and (match := re.fullmatch(r"bpe:([0-9]{1,7})", text.strip())):
        size = int(match[1])
        if low <= size <= high:
            return BPE, size
        raise TokenizerError(f"tokenizer {text!r} has {size:,} entries; give bpe:N with N from "
                             f"{low:,} to {high:,}")
    raise TokenizerError(f"unknown tokenizer {spec!r}; use \"bytes\" or \"bpe:N\" (a byte-level "
                         f"BPE of N entries, N from {low:,} to {high:,}), e.g. \"bpe:4096\"")


def canonical_spec(spec: object) -> str:
    """The spec as records spell it: "bytes" or "bpe:N"."""
    kind, size = parse_spec(spec)
    return BYTES if kind == BYTES else f"{BPE}:{size}"


class TextTokenizer:
    """A byte-level tokenizer: bytes <-> ids, and its Hugging Face files."""

    def __init__(self, spec: str, merges: Sequence[tuple[int, int]]) -> None:
        """`merges`: pairs of ids in rank order, each making the next new id (or, when their
        bytes are already a token, that token again)."""
        tokens = [bytes([b]) for b in range(N_BYTES)]
        index = {token: i for i, token in enumerate(tokens)}
        for left, right in merges:
            if not (0 <= left < len(tokens) and 0 <= right < len(tokens)):
                raise TokenizerError(f"merge ({left}, {right}) names an id not made yet; the "
                                     "tokenizer is damaged: train it again")
            merged = tokens[left] + tokens[right]
            if merged not in index:
                index[merged] = len(tokens)
                tokens.append(merged)
        if len(tokens) > BPE_RANGE[1]:
            raise TokenizerError(f"the tokenizer has {len(tokens):,} entries, more than "
                                 f"{BPE_RANGE[1]:,}; train one of at most that many")
        self.spec = spec
        self.merges: tuple[tuple[int, int], ...] = tuple((int(a), int(b)) for a, b in merges)
        self.tokens: tuple[bytes, ...] = tuple(tokens)
        self.vocab_size = len(tokens)
        canonical = json.dumps({"format": FORMAT, "merges": self.merges}, separators=(",", ":"))
        self.fingerprint = hashlib.sha256(canonical.encode("ascii")).hexdigest()

    def __repr__(self) -> str:
        return (f"TextTokenizer({self.spec!r}, vocab_size={self.vocab_size}, "
                f"fingerprint={self.fingerprint[:12]})")

    @property
    def is_bytes(self) -> bool:
        return not self.merges

    def token_bytes(self, i: int) -> bytes:
        return self.tokens[i]

    @functools.cached_property
    def hf(self):  # tokenizers.Tokenizer, built on first use
        return bpe_tokenizer(self.tokens, self.merges)

    def encode(self, data: bytes | bytearray | memoryview | np.ndarray | str,
               progress: Progress | None = None) -> np.ndarray:
        """The ids of `data` (bytes; str is taken as its UTF-8), uint16."""
        raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        if self.is_bytes:
            return np.frombuffer(raw, dtype=np.uint8).astype(TOKEN_DTYPE)
        # valid UTF-8 in pieces the Hugging Face tokenizer encodes exactly as it would the whole;
        # each undecodable byte (a surrogate escape) is its own single-byte token
        pieces = _INVALID.split(raw.decode("utf-8", errors="surrogateescape"))
        chunks: list[tuple[bool, str]] = []  # (is text, piece)
        for i, piece in enumerate(pieces):
            if i % 2:
                chunks.append((False, piece))
            elif piece:
                chunks.extend((True, part) for part in _chunks(piece))
        texts = [piece for is_text, piece in chunks if is_text]
        encoded: list[list[int]] = []
        step = max(1, len(texts) // 50 if progress else len(texts))  # progress ~50 times
        for start in range(0, len(texts), step):
            batch = texts[start:start + step]
            encoded += [e.ids for e in self.hf.encode_batch_fast(batch, add_special_tokens=False)]
            if progress:
                progress("encoding", (start + len(batch)) / len(texts))
        parts, next_text = [], iter(encoded)
        for is_text, piece in chunks:
            parts.append(np.asarray(next(next_text), dtype=TOKEN_DTYPE) if is_text else
                         np.array([ord(c) - 0xDC00 for c in piece], dtype=TOKEN_DTYPE))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=TOKEN_DTYPE)

    def decode(self, ids: Iterable[int] | np.ndarray) -> bytes:
        """The bytes `ids` stand for; IndexError for an id outside the vocabulary."""
        values = ids.tolist() if isinstance(ids, np.ndarray) else ids
        tokens = self.tokens
        return b"".join(tokens[int(i)] for i in values)

    def save(self, directory: str | os.PathLike, model_max_length: int | None = None) -> Path:
        """tokenizer.json and tokenizer_config.json into `directory`, each atomically, so that
        `transformers.AutoTokenizer.from_pretrained(directory)` encodes text to the same ids."""
        return save_hf_tokenizer(self.hf, directory, model_max_length)


@functools.cache
def byte_tokenizer() -> TextTokenizer:
    """The byte tokenizer ("bytes"): token id == byte value."""
    return TextTokenizer(BYTES, ())


def _chunks(text: str) -> list[str]:
    """`text` cut at safe points (_SAFE_CUT) into pieces of about _CHUNK characters."""
    if len(text) <= _CHUNK:
        return [text]
    out, start = [], 0
    for cut in _SAFE_CUT.finditer(text, _CHUNK):
        if cut.start() - start >= _CHUNK:
            out.append(text[start:cut.start()])
            start = cut.start()
    out.append(text[start:])
    return out


# --- reading tokenizer files ----------------------------------------------------------------


def load_tokenizer(directory: str | os.PathLike) -> TextTokenizer:
    """The tokenizer saved in a checkpoint or tokenizer folder; the byte tokenizer where there
    is no tokenizer.json. TokenizerError when the file is damaged, is no MAGNET tokenizer, or
    is not the one the folder's config.json records (fingerprint, vocabulary size)."""
    folder = Path(directory)
    path = folder / TOKENIZER_FILE
    if not path.is_file():  # what a model of another vocabulary makes of that: its loader's
        return byte_tokenizer()
    magnet, vocab_size = _checkpoint_facts(folder)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model = data["model"]
        vocab, merges = model["vocab"], model["merges"]
        if model.get("type") != "BPE" or not isinstance(vocab, dict):
            raise ValueError("its model is not a BPE")
        if data.get("normalizer") is not None or data.get("added_tokens"):
            raise ValueError("it has a normaliser or added tokens")
        pre = data.get("pre_tokenizer") or {}
        if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space"):
            raise ValueError("its pre-tokenizer is not ByteLevel without a prefix space")
        pairs = [m.split(" ") if isinstance(m, str) else m for m in merges]
        ids = [(vocab[a], vocab[b]) for a, b in pairs]
        if merges and not pre.get("use_regex", True):
            raise ValueError("its pre-tokenizer does not split with GPT-2's regex")
        tokenizer = TextTokenizer(_spec_of(folder, len(ids)), ids)
        found = {from_symbols(symbols): i for symbols, i in vocab.items()}
    except TokenizerError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise TokenizerError(f"{path} is no MAGNET byte-level tokenizer ({err}); save it again "
                             "from the tokenizer it was trained with") from err
    if found != {token: i for i, token in enumerate(tokenizer.tokens)}:
        raise TokenizerError(f"{path}: its ids are not the single bytes in byte order followed "
                             "by its merges in order; save it again with bitnet.tokenizer")
    recorded = magnet.get("tokenizer_sha256")
    if recorded is not None and recorded != tokenizer.fingerprint:
        raise TokenizerError(f"{path} has fingerprint {tokenizer.fingerprint[:12]} but "
                             f"{CONFIG_FILE} records {str(recorded)[:12]}: the files do not "
                             "belong together; copy the tokenizer the model was trained with")
    if vocab_size is not None and vocab_size != tokenizer.vocab_size:
        raise TokenizerError(f"{path} has {tokenizer.vocab_size} ids but {CONFIG_FILE} gives the "
                             f"model {vocab_size}; copy the tokenizer the model was trained with")
    return tokenizer


def _checkpoint_facts(folder: Path) -> tuple[dict, int | None]:
    """A checkpoint folder's config.json `magnet` section and vocab_size ({} and None where
    there is no readable config.json: a tokenizer folder)."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        magnet = config.get("magnet")
        vocab_size = config.get("vocab_size")
    except (OSError, ValueError, AttributeError):
        return {}, None
    return (magnet if isinstance(magnet, dict) else {},
            vocab_size if isinstance(vocab_size, int) else None)


def _spec_of(folder: Path, n_merges: int) -> str:
    """The spec a folder's tokenizer was made for: its meta.json's (a tokenizer folder), its
    config.json's `magnet.tokenizer` (a checkpoint), else from its size."""
    for name, keys in ((META_FILE, ("spec",)), (CONFIG_FILE, ("magnet", "tokenizer"))):
        try:
            value = json.loads((folder / name).read_text(encoding="utf-8"))
            for key in keys:
                value = value[key]
            return canonical_spec(value)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return BYTES if not n_merges else f"{BPE}:{N_BYTES + n_merges}"


def load_train_tokens(directory: str | os.PathLike) -> np.ndarray:
    """The training split's ids (uint16 read-only memmap) from a tokenizer folder."""
    folder = Path(directory)
    try:
        meta = json.loads((folder / META_FILE).read_text())
        path = folder / TRAIN_TOKENS_FILE
        ok = meta["format"] == FORMAT and path.stat().st_size == meta["train_tokens"] * 2
        data = (np.memmap(path, dtype=TOKEN_DTYPE, mode="r") if meta["train_tokens"]
                else np.zeros(0, dtype=TOKEN_DTYPE))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise TokenizerError(f"{folder} is not a tokenizer folder ({err}); pass the folder "
                             f"bitnet.tokenizer.ensure_tokenizer made (MAGNET sets "
                             f"{TOKENIZER_ENV} to it)") from err
    if not ok:
        raise TokenizerError(f"{folder}/{TRAIN_TOKENS_FILE} does not match its {META_FILE}; "
                             "delete the folder and train the tokenizer again")
    return data


def read_meta(directory: str | os.PathLike) -> dict | None:
    """A tokenizer folder's meta.json, or None when it is missing, of another format or
    damaged (its train tokens' size checked)."""
    folder = Path(directory)
    try:
        meta = json.loads((folder / META_FILE).read_text())
        ok = (meta["format"] == FORMAT and (folder / TOKENIZER_FILE).is_file()
              and (folder / TRAIN_TOKENS_FILE).stat().st_size == meta["train_tokens"] * 2)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta if ok else None


# --- training and storing -------------------------------------------------------------------


def tokenizers_root(corpus) -> Path:
    """`<entry>/tokenizers/` of a loaded corpus (bitnet.data.Corpus): every tokenizer trained on
    it, all readable by its experiments."""
    return Path(corpus.entry) / TOKENIZERS_DIR


def tokenizer_dir(corpus, spec: object) -> Path:
    """Where the tokenizer `spec` of a loaded corpus is stored (whether or not it exists yet)."""
    kind, size = parse_spec(spec)
    if kind == BYTES:
        raise TokenizerError("the byte tokenizer is not trained or stored; it needs no folder")
    return tokenizers_root(corpus) / f"{kind}-{size}"


def ensure_tokenizer(corpus_spec: str, tokenizer_spec: object, cache_dir=None,
                     progress: Progress | None = None) -> Path | None:
    """The folder of `tokenizer_spec` for the corpus, training it first if it does not exist;
    None for the byte tokenizer (it needs none)."""
    if parse_spec(tokenizer_spec)[0] == BYTES:
        return None
    return train_tokenizer(corpus_spec, parse_spec(tokenizer_spec)[1], cache_dir,
                           progress=progress)


def train_tokenizer(corpus_spec: str, vocab_size: int, cache_dir=None, *,
                    progress: Progress | None = None) -> Path:
    """Train a byte-level BPE of at most `vocab_size` entries on the corpus's training split
    and store it with the split encoded (see the module docstring); returns its folder. A
    second call returns the stored one."""
    from bitnet.data import load_corpus  # corpus building imports the prose extractor

    spec = canonical_spec(f"{BPE}:{vocab_size}")
    corpus = load_corpus(corpus_spec, cache_dir)
    folder = tokenizer_dir(corpus, spec)
    if read_meta(folder) is not None:
        return folder
    started = time.perf_counter()
    report = progress or (lambda what, done: None)
    report(f"training {spec} on {corpus_spec}", 0.0)
    tokenizer = TextTokenizer(spec, train_merges(corpus.train, vocab_size))
    report(f"training {spec} on {corpus_spec}", 1.0)
    ids = tokenizer.encode(np.asarray(corpus.train).tobytes(),
                           progress=lambda _, done: report(f"encoding {corpus_spec}", done))
    meta = {"format": FORMAT, "spec": spec, "vocab_size": tokenizer.vocab_size,
            "fingerprint": tokenizer.fingerprint, "tokenizers": _library_version(),
            "corpus": corpus_spec,
            "corpus_sha256": corpus.sha256, "train_sha256": corpus.train_sha256,
            "train_bytes": int(len(corpus.train)), "train_tokens": int(len(ids)),
            "seconds": round(time.perf_counter() - started, 3)}
    try:
        return _write_folder(folder, tokenizer, ids, meta)
    except OSError as err:
        raise TokenizerError(f"cannot write the tokenizer in {folder.parent}: "
                             f"{err.strerror or err}; free some space or set MAGNET_CACHE_DIR "
                             "to a writable folder") from err


def _library_version() -> str:
    """The `tokenizers` release that trains here (another may merge ties differently)."""
    import tokenizers

    return tokenizers.__version__


def train_merges(train: np.ndarray | bytes, vocab_size: int) -> list[tuple[int, int]]:
    """The merges (id pairs, canonical ids) of a byte-level BPE of at most `vocab_size` entries
    trained with `tokenizers` on `train` (documents separated by NUL bytes)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    text = np.asarray(train).tobytes().decode("utf-8", errors="surrogateescape")
    documents = [piece for doc in text.split("\x00") for piece in _INVALID.split(doc)[::2]
                 if piece]
    model = Tokenizer(models.BPE())
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=MIN_FREQUENCY,
                                  show_progress=False, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    model.train_from_iterator(documents, trainer, length=len(documents))
    trained = json.loads(model.to_str())["model"]
    index = {bytes([b]): b for b in range(N_BYTES)}
    merges = []
    for pair in trained["merges"]:
        left, right = (from_symbols(s) for s in (pair.split(" ") if isinstance(pair, str)
                                                  else pair))
        merges.append((index[left], index[right]))
        index.setdefault(left + right, len(index))
    return merges


def _write_folder(folder: Path, tokenizer: TextTokenizer, ids: np.ndarray, meta: dict) -> Path:
    """Write into a temporary folder beside it, then rename it into place: readers never see
    half; when another process finished the same build first, its folder stands."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
    try:
        tokenizer.save(tmp)
        ids.astype(TOKEN_DTYPE).tofile(tmp / TRAIN_TOKENS_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        if folder.exists() and read_meta(folder) is None:
            shutil.rmtree(folder, ignore_errors=True)  # a damaged one: replace it
        try:
            os.replace(tmp, folder)
        except OSError:
            if read_meta(folder) is None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only left after a failure or a lost race
    return folder


if __name__ == "__main__":  # python -m bitnet.tokenizer CORPUS SPEC: its folder (trained once)
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m bitnet.tokenizer CORPUS bpe:N")
    from bitnet.corpus_errors import CorpusError

    try:
        print(ensure_tokenizer(sys.argv[1], sys.argv[2]) or "the byte tokenizer needs no folder")
    except (CorpusError, TokenizerError) as err:
        raise SystemExit(str(err)) from None
