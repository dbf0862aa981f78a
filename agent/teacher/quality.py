"""Which teacher-written documents go into a corpus: filters and deduplication.

Each check is a pure function returning None (keep) or a Rejection: a `reason` the generation
report counts and a one-line `detail` with the measured value and the limit. The limits suit a
training corpus of English prose and code:

  length       MIN_CHARS .. MAX_CHARS characters (a fragment teaches little; a runaway reply is
               usually a loop)
  text         plain text: no control characters or unpaired surrogates (agent.text), mostly
               ASCII (other scripts and mojibake are a different corpus)
  repetition   the share of word 5-grams seen before in the same document, and how far zlib
               shrinks it: a small model stuck in a loop fails both
  language     English prose or code: enough letters among the visible characters, and enough
               English stopwords among the words (French or German prose has few; code has
               `if`, `in`, `for`, `not` and its comments)
  duplicates   exact (sha256 of the text lower-cased with whitespace collapsed) and near
               (MinHash over word 5-gram shingles, LSH buckets, estimated Jaccard >= NEAR_JACCARD)
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass

import numpy as np

from agent.text import text_problem

MIN_CHARS = 200
MAX_CHARS = 12_000
MIN_ASCII_SHARE = 0.95  # of all characters
MIN_LETTER_SHARE = 0.5  # of visible characters: prose ~0.95, Python ~0.65, tables of digits less
MIN_STOPWORD_SHARE = 0.08  # of words: English prose ~0.45, Python with comments 0.1-0.3
MAX_REPEATED_NGRAMS = 0.3  # share of word 5-grams that already occurred in the document
MIN_COMPRESSION = 0.2  # zlib size / size: prose compresses to 0.4-0.6, Python to 0.27-0.4
NGRAM = 5  # words per n-gram, for repetition and for near-duplicate shingles
NEAR_JACCARD = 0.7  # estimated shingle Jaccard at or above which two documents are near twins

REASONS = ("empty", "too_short", "too_long", "not_text", "not_english", "repetitive",
           "duplicate", "near_duplicate")

_STOPWORD_TEXT = """
a about above after again all also am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further
had has have having he her here hers him his how i if in into is it its itself just me more
most my no nor not now of off on once only or other our out over own same she should so some
such than that the their them then there these they this those through to too under until up
very was we were what when where which while who whom why will with would you your
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())

_WORD = re.compile(r"[A-Za-z']+")
_TOKEN = re.compile(r"\S+")


@dataclass(frozen=True)
class Rejection:
    reason: str  # one of REASONS: what the generation report counts
    detail: str  # one line for a person: what was measured against which limit


def check_length(text: str, min_chars: int = MIN_CHARS,
                 max_chars: int = MAX_CHARS) -> Rejection | None:
    size = len(text.strip())
    if size == 0:
        return Rejection("empty", "the reply is empty")
    if size < min_chars:
        return Rejection("too_short", f"{size} characters, fewer than {min_chars}")
    if size > max_chars:
        return Rejection("too_long", f"{size} characters, more than {max_chars}")
    return None


def check_text(text: str) -> Rejection | None:
    """Plain, mostly ASCII text: what a byte-level English corpus is made of."""
    if problem := text_problem(text, one_line=False):
        return Rejection("not_text", f"the text {problem}")
    ascii_share = sum(c.isascii() for c in text) / max(1, len(text))
    if ascii_share < MIN_ASCII_SHARE:
        return Rejection("not_text", f"{ascii_share:.0%} of the characters are ASCII, "
                                     f"fewer than {MIN_ASCII_SHARE:.0%}")
    return None


def check_language(text: str) -> Rejection | None:
    """English prose or code, judged by letters among visible characters and stopwords."""
    visible = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in visible) / max(1, len(visible))
    if letters < MIN_LETTER_SHARE:
        return Rejection("not_english", f"{letters:.0%} of the visible characters are letters, "
                                        f"fewer than {MIN_LETTER_SHARE:.0%}")
    words = [w.lower() for w in _WORD.findall(text)]
    stop = sum(w in STOPWORDS for w in words) / max(1, len(words))
    if stop < MIN_STOPWORD_SHARE:
        return Rejection("not_english", f"{stop:.0%} of the words are English stopwords, "
                                        f"fewer than {MIN_STOPWORD_SHARE:.0%}")
    return None


def repeated_ngram_share(text: str, n: int = NGRAM) -> float:
    """The share of the document's word n-grams that occurred earlier in it."""
    grams = list(_ngrams(_TOKEN.findall(text.lower()), n))
    if not grams:
        return 0.0
    return 1 - len(set(grams)) / len(grams)


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(zlib.compress(data, 6)) / max(1, len(data))


def check_repetition(text: str) -> Rejection | None:
    repeated = repeated_ngram_share(text)
    if repeated > MAX_REPEATED_NGRAMS:
        return Rejection("repetitive", f"{repeated:.0%} of its {NGRAM}-word sequences repeat "
                                       f"earlier ones, more than {MAX_REPEATED_NGRAMS:.0%}")
    ratio = compression_ratio(text)
    if ratio < MIN_COMPRESSION:
        return Rejection("repetitive", f"zlib compresses it to {ratio:.0%} of its size, "
                                       f"below {MIN_COMPRESSION:.0%}")
    return None


def quality_rejection(text: str) -> Rejection | None:
    """The first filter `text` fails (length, text, repetition, language), or None. Repetition
    comes before language: a loop of code-like lines is a loop, whatever its stopwords say."""
    for check in (check_length, check_text, check_repetition, check_language):
        if (rejection := check(text)) is not None:
            return rejection
    return None


# --- duplicates ----------------------------------------------------------------------------------


def normalised_hash(text: str) -> str:
    """sha256 of the text lower-cased with runs of whitespace made one space: exact duplicates
    up to case and layout."""
    return hashlib.sha256(" ".join(text.lower().split()).encode("utf-8")).hexdigest()


def shingles(text: str, n: int = NGRAM) -> set[int]:
    """The document's word n-grams, each as a stable 32-bit hash (the same in every process, so a
    resumed generation rebuilds the same index)."""
    words = _TOKEN.findall(text.lower())
    grams = _ngrams(words, n) if len(words) >= n else [tuple(words)]
    return {zlib.crc32(" ".join(gram).encode("utf-8")) for gram in grams}


def _ngrams(words: list[str], n: int):
    return zip(*(words[i:] for i in range(n)), strict=False)


class MinHasher:
    """MinHash signatures: `permutations` universal hashes (a*x + b) mod p of each shingle, the
    minimum of each. The share of equal positions of two signatures estimates the Jaccard
    similarity of their shingle sets."""

    PRIME = (1 << 61) - 1  # a Mersenne prime above every 32-bit shingle

    def __init__(self, permutations: int = 128, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        # a, b < 2**31 and x < 2**32: a*x + b < 2**63 fits in uint64 without overflow
        self.a = rng.integers(1, 1 << 31, permutations, dtype=np.uint64)
        self.b = rng.integers(0, 1 << 31, permutations, dtype=np.uint64)

    def signature(self, shingle_set: set[int]) -> np.ndarray:
        x = np.fromiter(shingle_set, dtype=np.uint64, count=len(shingle_set))
        return ((np.outer(x, self.a) + self.b) % np.uint64(self.PRIME)).min(axis=0)


class Deduplicator:
    """The documents kept so far, asked whether a new one is an exact or near duplicate.

    Near duplicates are found by locality-sensitive hashing: signatures are cut into `bands`
    bands of equal rows; documents sharing any band are candidates, and a candidate is a near
    duplicate when its estimated Jaccard reaches `threshold`. With 32 bands of 4 rows, a pair at
    Jaccard 0.7 shares a band with probability 0.9996, a pair at 0.3 with 0.23 (then compared).
    """

    def __init__(self, threshold: float = NEAR_JACCARD, permutations: int = 128,
                 bands: int = 32) -> None:
        if permutations % bands:
            raise ValueError(f"{permutations} permutations do not split into {bands} bands")
        self.threshold = threshold
        self.bands = bands
        self.hasher = MinHasher(permutations)
        self.exact: set[str] = set()
        self.signatures: list[np.ndarray] = []
        self.buckets: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]

    def __len__(self) -> int:
        return len(self.signatures)

    def check(self, text: str) -> Rejection | None:
        """A Rejection when `text` duplicates a kept document, else None (nothing is kept)."""
        if normalised_hash(text) in self.exact:
            return Rejection("duplicate", "the same text (up to case and whitespace) is already "
                                          "in the corpus")
        signature = self.hasher.signature(shingles(text))
        best = max((float(np.mean(self.signatures[i] == signature))
                    for i in self._candidates(signature)), default=0.0)
        if best >= self.threshold:
            return Rejection("near_duplicate", f"{best:.0%} of its {NGRAM}-word shingles match "
                                               f"a kept document (limit {self.threshold:.0%})")
        return None

    def add(self, text: str) -> None:
        """Keep `text`: later documents are compared with it."""
        self.exact.add(normalised_hash(text))
        signature = self.hasher.signature(shingles(text))
        index = len(self.signatures)
        self.signatures.append(signature)
        for band, key in enumerate(self._band_keys(signature)):
            self.buckets[band].setdefault(key, []).append(index)

    def _band_keys(self, signature: np.ndarray) -> list[bytes]:
        return [row.tobytes() for row in np.split(signature, self.bands)]

    def _candidates(self, signature: np.ndarray) -> set[int]:
        return {i for band, key in enumerate(self._band_keys(signature))
                for i in self.buckets[band].get(key, ())}

