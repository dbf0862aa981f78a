"""The ledger end to end on real SQLite files: keys, claims and verdicts, what is refused,
audits of tampered copies, two processes appending at once, proofs, and the CLI."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import keys, merkle
from ledger.book import Ledger
from ledger.canonical import LedgerError, canonical, sha256_hex
from ledger.entries import CLAIM, SLASH, VERIFICATION, Entry, claim_id, from_signed, make_entry
from ledger.open import open_ledger
from ledger.rules import (
    DISPUTED,
    SLASHED,
    VERIFIED,
    VERIFIER_STAKE,
    VERIFY_POINTS,
    reward_points,
)

CLI = Path(sys.executable).with_name("magnet-agent")


def claim_body(run: str, *, commit: str | None = None, stake: int = 100, before: float = 2.0,
               after: float = 1.9) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A synthetic claim and its bundle (the ledger does not interpret `replay`)."""
    bundle = f"bundle of {run}".encode()
    body = {"goal": "goal.yaml", "run": run, "exp": 3,
            "commit": commit or hashlib.sha1(run.encode()).hexdigest(), "parent": "0" * 40,
            "metric": {"name": "val_bpb", "goal": "minimize", "before": before, "after": after},
            "replay": {"seed": 1, "steps": 10}, "bundle": sha256_hex(bundle), "stake": stake}
    return body, {"bundle": bundle}


def counts(path: Path) -> tuple[int, int]:
    """(entries, tree heads) as committed in the file, read by a connection of its own."""
    with sqlite3.connect(path) as db:
        return (db.execute("SELECT count(*) FROM entries").fetchone()[0],
                db.execute("SELECT count(*) FROM tree_heads").fetchone()[0])


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}  # rich would wrap the table's columns at 80
    return subprocess.run([str(CLI), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60)


@dataclass
class Book:
    """An open ledger: claims 0-3 by `a`; 4 verifies claim 0 honest (by `b`); 5 calls claim 3
    false (by `c`), 6 agrees (by `b`: no single verifier slashes) and 7 slashes it. Claims 1
    and 2 are pending."""

    lg: Ledger
    path: Path
    a: Ed25519PrivateKey
    b: Ed25519PrivateKey
    c: Ed25519PrivateKey
    claims: list[Entry]

    def head(self) -> tuple[int, str]:
        entries = self.lg.entries()
        return len(entries), entries[-1].hash


@pytest.fixture
def book(tmp_path: Path) -> Iterator[Book]:
    a, b, c = (Ed25519PrivateKey.generate() for _ in range(3))
    path = tmp_path / "ledger.sqlite"
    lg = open_ledger(path)
    claims = [lg.claim(a, *claim_body(f"run-{i}")) for i in range(4)]
    lg.verify(b, claims[0], "honest", {"reason": "replayed within tolerance"})
    assert len(lg.verify(c, claims[3], "false", {"reason": "val_bpb 2.01 on replay"})) == 1
    lg.verify(b, claims[3], "false", {"reason": "val_bpb 2.02 on replay"})
    opened = Book(lg, path, a, b, c, claims)
    yield opened
    opened.lg.close()  # tampered_copy reopens it


# ---------------------------------------------------------------------------------------------
# keys


def test_keygen_writes_0600_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "me.key"
    done = cli("ledger", "keygen", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    public = keys.public_hex(keys.load_key(path))
    assert public in done.stdout.replace("\n", "")
    pem = path.read_bytes()

    again = cli("ledger", "keygen", str(path), cwd=tmp_path)
    assert again.returncode == 2
    assert again.stderr.startswith("magnet-agent: error: ") and "already exists" in again.stderr
    with pytest.raises(LedgerError, match="already exists"):
        keys.generate_key(path)
    assert path.read_bytes() == pem  # the key survives both attempts


def test_a_key_others_may_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "me.key"
    public = keys.generate_key(path)
    path.chmod(0o644)
    with pytest.raises(LedgerError) as err:
        keys.load_key(path)
    assert "chmod 600" in str(err.value) and "\n" not in str(err.value)
    path.chmod(0o600)
    assert keys.public_hex(keys.load_key(path)) == public


def test_a_file_that_is_no_key_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a key\nat all\n")
    path.chmod(0o600)
    with pytest.raises(LedgerError) as err:
        keys.load_key(path)
    message = str(err.value)
    assert "\n" not in message and "not a MAGNET key file" in message and str(path) in message


# ---------------------------------------------------------------------------------------------
# claims and verdicts


def test_honest_verdict_pays_the_claimant_and_the_verifier(tmp_path: Path) -> None:
    a, b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    with open_ledger(tmp_path / "l.sqlite") as lg:
        body, artifacts = claim_body("run-a", before=2.0, after=1.8)
        entry = lg.claim(a, body, artifacts)
        assert lg.balances() == {}  # nothing is owed before a replay verifies it
        written = lg.verify(b, entry, "honest", {"reason": "ok"})
        assert [e.fields["kind"] for e in written] == [VERIFICATION]
        balances = lg.balances()
        points = reward_points(body["metric"])
        assert points == 1000  # 10% better: 1000 points at one per 0.01%
        assert balances == {keys.public_hex(a): points, keys.public_hex(b): VERIFY_POINTS}
        assert lg.claim_state(entry).status == VERIFIED
        assert lg.artifact(body["bundle"]) == artifacts["bundle"]


def test_a_lone_false_verdict_does_not_slash_a_second_agreeing_one_does(tmp_path: Path) -> None:
    """No single verifier slashes: one dishonest key cannot take an honest claimant's stake."""
    a, b, c = (Ed25519PrivateKey.generate() for _ in range(3))
    with open_ledger(tmp_path / "l.sqlite") as lg:
        body, artifacts = claim_body("run-a", stake=250)
        entry = lg.claim(a, body, artifacts)
        written = lg.verify(b, entry, "false", {"reason": "no gain on replay"})
        assert [e.fields["kind"] for e in written] == [VERIFICATION]
        assert lg.claim_state(entry).status == DISPUTED
        assert lg.balances() == {keys.public_hex(b): VERIFY_POINTS}  # the claimant keeps it
        with pytest.raises(LedgerError, match="is disputed, not refuted by 2 false verdicts"):
            lg.append(b, SLASH, {"claim": entry.body_id})  # nor by writing the slash itself
        with pytest.raises(LedgerError, match="you already judged claim .* false"):
            lg.verify(b, entry, "false", {})  # the same key twice is still one verifier

        written = lg.verify(c, entry, "false", {"reason": "no gain on my replay either"})
        assert [e.fields["kind"] for e in written] == [VERIFICATION, SLASH]
        assert [e.fields["seq"] for e in written] == [2, 3]
        assert written[1].fields["body"]["stake"] == 250
        assert lg.balances() == {keys.public_hex(a): -250, keys.public_hex(b): VERIFY_POINTS,
                                 keys.public_hex(c): VERIFY_POINTS}
        assert lg.claim_state(entry).status == SLASHED
        # the slashed commit is free again for an honest claim of it
        honest = lg.claim(a, *claim_body("run-a again", commit=body["commit"]))
        assert honest.fields["seq"] == 4
        assert lg.audit().ok


def test_a_contradicted_false_verifier_loses_its_own_stake(tmp_path: Path) -> None:
    a, liar, b, c = (Ed25519PrivateKey.generate() for _ in range(4))
    with open_ledger(tmp_path / "l.sqlite") as lg:
        body, artifacts = claim_body("run-a", before=2.0, after=1.8)
        entry = lg.claim(a, body, artifacts)
        lg.verify(liar, entry, "false", {"reason": "made up"})
        assert lg.verify(b, entry, "honest", {"reason": "ok"})[0].fields["kind"] == VERIFICATION
        assert lg.claim_state(entry).status == DISPUTED  # one against one: not settled yet
        assert keys.public_hex(a) not in lg.balances()
        written = lg.verify(c, entry, "honest", {"reason": "ok"})
        assert [e.fields["kind"] for e in written] == [VERIFICATION]
        assert lg.claim_state(entry).status == VERIFIED
        points = reward_points(body["metric"])
        assert lg.balances() == {keys.public_hex(a): points,
                                 keys.public_hex(liar): VERIFY_POINTS - VERIFIER_STAKE,
                                 keys.public_hex(b): VERIFY_POINTS,
                                 keys.public_hex(c): VERIFY_POINTS}
        assert lg.audit().ok
    with open_ledger(tmp_path / "l.sqlite") as again:  # re-derived from the entries alone
        assert again.balances()[keys.public_hex(liar)] == VERIFY_POINTS - VERIFIER_STAKE


def test_an_entry_signed_elsewhere_is_accepted(book: Book) -> None:
    seq, prev = book.head()
    body = {**claim_body("run-b")[0], "contributor": keys.public_hex(book.b)}
    signed = make_entry(book.b, seq=seq, prev=prev, kind=CLAIM, body=body)
    document = json.loads(json.dumps({"entry": signed.fields,
                                      "signature": signed.signature.hex()}))
    appended = book.lg.submit(from_signed(document), book.a)
    assert appended.hash == signed.hash and counts(book.path) == (seq + 1, seq + 1)
    assert book.lg.store.latest_tree_head().signer == keys.public_hex(book.a)


def _forged(book: Book) -> Entry:
    """Signed by a, but naming b as its author."""
    seq, prev = book.head()
    fields = make_entry(book.a, seq=seq, prev=prev, kind=CLAIM,
                        body=claim_body("run-forged")[0]).fields
    data = canonical({**fields, "author": keys.public_hex(book.b)})
    return Entry(data, keys.sign(book.a, data))


def _stale(book: Book) -> Entry:
    """Correctly signed, but for the position of the last entry (after the one before it)."""
    entries = book.lg.entries()
    return make_entry(book.b, seq=len(entries) - 1, prev=entries[-2].hash, kind=CLAIM,
                      body=claim_body("run-late")[0])


REFUSALS: dict[str, tuple[Callable[[Book], object], str]] = {
    "replayed claim": (lambda bk: bk.lg.claim(bk.a, *claim_body("run-1")),
                       "is already entry 1 (a replayed claim)"),
    # another key's claim names it as contributor, so it is a new claim, for a claimed commit
    "replayed by another key": (lambda bk: bk.lg.claim(bk.b, *claim_body("run-1")),
                                "is already claimed by entry 1"),
    "a contributor who did not sign it": (
        lambda bk: bk.lg.claim(bk.b, {**claim_body("run-x")[0],
                                      "contributor": keys.public_hex(bk.a)},
                               claim_body("run-x")[1]),
        "but is signed by"),
    "commit already claimed": (
        lambda bk: bk.lg.claim(bk.b, *claim_body("other", commit=bk.claims[2].fields["body"][
            "commit"])), "is already claimed by entry 2 (pending)"),
    "commit already verified": (
        lambda bk: bk.lg.claim(bk.b, *claim_body("other", commit=bk.claims[0].fields["body"][
            "commit"])), "is already claimed by entry 0 (verified)"),
    "stake 0": (lambda bk: bk.lg.claim(bk.a, *claim_body("run-new", stake=0)),
                "a claim without stake is refused"),
    "metric no better": (lambda bk: bk.lg.claim(bk.a, *claim_body("run-new", after=2.05)),
                         "val_bpb 2.05 does not improve on the parent's 2;"),
    "metric unchanged": (lambda bk: bk.lg.claim(bk.a, *claim_body("run-new", after=2.0)),
                         "does not improve"),
    "own claim": (lambda bk: bk.lg.verify(bk.a, bk.claims[1], "honest", {}),
                  "is your own; another key must verify it"),
    "verified claim": (lambda bk: bk.lg.verify(bk.c, bk.claims[0], "false", {}),
                       "is already verified (entry 4)"),
    "slashed claim": (lambda bk: bk.lg.verify(bk.b, bk.claims[3], "honest", {}),
                      "is already slashed (entry 6)"),
    "slash without a false verdict": (
        lambda bk: bk.lg.append(bk.c, SLASH, {"claim": bk.claims[2].body_id}),
        "is pending, not refuted by 2 false verdicts of distinct keys"),
    "forged signature": (lambda bk: bk.lg.submit(_forged(bk), bk.a),
                         "its signature is not " + "{b}"),
    "stale head": (lambda bk: bk.lg.submit(_stale(bk), bk.b),
                   "is for position 7 after {prev7}, but the ledger's head is 8 after {prev8}; "
                   "sign it again on the current head"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_refused_in_one_line_and_nothing_written(book: Book, case: str) -> None:
    attempt, expected = REFUSALS[case]
    entries = book.lg.entries()
    expected = expected.format(b=keys.public_hex(book.b)[:12], prev7=entries[6].hash[:12],
                               prev8=entries[7].hash[:12])
    before, balances = counts(book.path), book.lg.balances()
    with pytest.raises(LedgerError) as err:
        attempt(book)
    assert "\n" not in str(err.value)
    assert expected in str(err.value)
    assert counts(book.path) == before == (8, 8)
    assert book.lg.standing.size == 8 and book.lg.balances() == balances
    # the refusal left the ledger usable: the next honest entry lands at 8
    assert book.lg.claim(book.b, *claim_body("run-next")).fields["seq"] == 8
    assert book.lg.audit().ok


def test_nothing_comes_between_a_false_verdict_and_its_slash(book: Book) -> None:
    """Another process's honest verdict may not land between a false verdict and its slash."""
    claim = book.claims[2]
    state = book.lg.claim_state(claim)
    book.lg.append(book.b, VERIFICATION, {"claim": state.id, "verdict": "false"})
    book.lg.append(book.c, VERIFICATION, {"claim": state.id, "verdict": "false"})
    with pytest.raises(LedgerError, match=r"is already refuted \(entry 9\)"):
        book.lg.append(Ed25519PrivateKey.generate(), VERIFICATION,
                       {"claim": state.id, "verdict": "honest"})
    book.lg.append(book.b, SLASH, {"claim": state.id, "claimant": state.claimant,
                                   "stake": state.stake, "revoked": state.points,
                                   "reason": "false"})
    assert book.lg.claim_state(claim).status == SLASHED and book.lg.audit().ok


# Entry.body_id cuts the body out of the entry's bytes at the last `,"kind":`: a `time` object
# holding a "kind" key would give the same body another id, so entries must have their shape.
def test_a_replayed_claim_is_refused_whatever_its_time_field(book: Book) -> None:
    body = book.claims[3].fields["body"]  # slashed, so its commit is free again
    seq, prev = book.head()
    fields = {"seq": seq, "prev": prev, "kind": CLAIM, "author": keys.public_hex(book.a),
              "time": {"a": 1, "kind": 0}, "body": body}
    data = canonical(fields)
    with pytest.raises(LedgerError, match="malformed: its time is a dict, not a str"):
        book.lg.submit(Entry(data, keys.sign(book.a, data)), book.a)


# ---------------------------------------------------------------------------------------------
# audit


def test_audit_of_a_clean_ledger(book: Book) -> None:
    report = book.lg.audit()
    assert report.ok and report.problem is None
    assert (report.entries, report.tree_heads) == (8, 8)
    assert report.root == merkle.root([e.leaf for e in book.lg.entries()]).hex()


def _flip(data: bytes, at: int = 0) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]


def _change_data_byte(db: sqlite3.Connection) -> None:
    (data,) = db.execute("SELECT data FROM entries WHERE seq = 2").fetchone()
    changed = bytes(data).replace(b'"run":"run-2"', b'"run":"run-X"')
    assert len(changed) == len(data) and changed != data
    db.execute("UPDATE entries SET data = ? WHERE seq = 2", (changed,))


def _flip_signature(db: sqlite3.Connection, *, fix_leaf: bool) -> None:
    data, signature = db.execute("SELECT data, signature FROM entries WHERE seq = 6").fetchone()
    forged = Entry(bytes(data), _flip(bytes(signature), 10))
    db.execute("UPDATE entries SET signature = ? WHERE seq = 6", (forged.signature,))
    if fix_leaf:  # a careful forger also rewrites the stored leaf to match
        db.execute("UPDATE entries SET leaf = ? WHERE seq = 6", (forged.leaf,))


TAMPERS: dict[str, tuple[Callable[[sqlite3.Connection], object], str]] = {
    "data byte": (_change_data_byte, "entry 2: its stored leaf hash is not the hash of its bytes"),
    "stored leaf": (
        lambda db: db.execute("UPDATE entries SET leaf = ? WHERE seq = 4",
                              (hashlib.sha256(b"x").digest(),)),
        "entry 4: its stored leaf hash is not the hash of its bytes"),
    "tree head root": (
        lambda db: db.execute("UPDATE tree_heads SET root = ? WHERE tree_size = 5",
                              (hashlib.sha256(b"x").digest(),)),
        "tree head at size 5: its root is not the Merkle root of the first 5 entries"),
    "row deleted": (lambda db: db.execute("DELETE FROM entries WHERE seq = 2"),
                    "entry 2: it is numbered 3 (row 3) at position 2"),
    "signature byte": (lambda db: _flip_signature(db, fix_leaf=False),
                       "entry 6: its stored leaf hash is not the hash of its bytes"),
    "signature byte, leaf rewritten": (lambda db: _flip_signature(db, fix_leaf=True),
                                       "entry 6: its signature does not verify"),
}


def tampered_copy(book: Book, tamper: Callable[[sqlite3.Connection], object]) -> Path:
    book.lg.close()  # the last connection's close checkpoints the WAL into the file
    copy = book.path.with_name("tampered.sqlite")
    shutil.copyfile(book.path, copy)
    db = sqlite3.connect(copy)
    with db:
        tamper(db)
    db.close()
    book.lg = open_ledger(book.path)
    return copy


@pytest.mark.parametrize("case", TAMPERS)
def test_audit_names_the_first_bad_entry(book: Book, case: str) -> None:
    tamper, expected = TAMPERS[case]
    copy = tampered_copy(book, tamper)
    with open_ledger(copy) as lg:
        report = lg.audit()
    assert not report.ok
    assert report.problem is not None and report.problem.startswith(expected), report.problem
    assert "\n" not in report.problem
    assert book.lg.audit().ok  # the original is untouched


def test_audit_cli_exit_codes(book: Book) -> None:
    clean = cli("ledger", "audit", "--ledger", str(book.path), cwd=book.path.parent)
    assert clean.returncode == 0 and clean.stdout.startswith("ok: 8 entries and 8 signed tree")
    copy = tampered_copy(book, TAMPERS["stored leaf"][0])
    bad = cli("ledger", "audit", "--ledger", str(copy), cwd=book.path.parent)
    assert bad.returncode == 1, bad.stderr
    assert bad.stdout.startswith("bad: entry 4: its stored leaf hash")
    as_json = json.loads(cli("ledger", "audit", "--json", "--ledger", str(copy),
                             cwd=book.path.parent).stdout)
    assert not as_json["ok"] and as_json["problem"].startswith("entry 4: ")


def _change_artifact_byte(db: sqlite3.Connection) -> None:
    name, data = db.execute("SELECT sha256, data FROM artifacts ORDER BY sha256").fetchone()
    db.execute("UPDATE artifacts SET data = ? WHERE sha256 = ?", (_flip(bytes(data), 3), name))


ARTIFACT_TAMPERS: dict[str, tuple[Callable[[sqlite3.Connection], object], str]] = {
    "one changed byte": (_change_artifact_byte, "its bundle artifact ({sha}): its stored "
                         "bytes hash to"),
    "deleted": (lambda db: db.execute("DELETE FROM artifacts WHERE sha256 = (SELECT min(sha256) "
                                      "FROM artifacts)"), "its bundle artifact ({sha}) is not "
                "stored"),
}


@pytest.mark.parametrize("case", ARTIFACT_TAMPERS)
def test_audit_reads_every_stored_artifact(book: Book, case: str) -> None:
    """One changed byte in a claim's stored artifact (or the artifact gone) fails audit, naming
    the claim entry and the artifact; the entries themselves are untouched."""
    tamper, expected = ARTIFACT_TAMPERS[case]
    sha = min(c.fields["body"]["bundle"] for c in book.claims)
    seq = next(c.fields["seq"] for c in book.claims if c.fields["body"]["bundle"] == sha)
    copy = tampered_copy(book, tamper)
    with open_ledger(copy) as lg:
        report = lg.audit()
    assert report.problem is not None, "audit passed a ledger whose artifact was changed"
    assert report.problem.startswith(f"entry {seq}: " + expected.format(sha=sha[:12])), \
        report.problem
    assert "\n" not in report.problem
    done = cli("ledger", "audit", "--ledger", str(copy), cwd=book.path.parent)
    assert done.returncode == 1 and done.stdout.startswith(f"bad: entry {seq}: its bundle")
    assert book.lg.audit().ok


def test_audit_names_an_altered_artifact_no_claim_names(book: Book) -> None:
    book.lg.store.db.execute("INSERT INTO artifacts VALUES (?, ?)", ("ab" * 32, b"stray"))
    report = book.lg.audit()
    assert report.problem is not None and report.problem.startswith(
        f"artifact {'ab' * 6}: its stored bytes hash to {sha256_hex(b'stray')[:12]}")


# The rules cannot replay these (a verdict on a claim that is gone; bytes that are not JSON),
# so the ledger must open without replaying its entries for audit to name the bad one.
@pytest.mark.parametrize("tamper, expected", [
    ("DELETE FROM entries WHERE seq = 3", "entry 3: it is numbered 4"),  # 5-7 name claim 3
    ("UPDATE entries SET data = CAST(substr(data, 2) AS BLOB) WHERE seq = 1",
     "entry 1: unreadable"),
])
def test_audit_of_entries_the_rules_cannot_read(book: Book, tamper: str, expected: str) -> None:
    copy = tampered_copy(book, lambda db: db.execute(tamper))
    with open_ledger(copy) as lg:
        report = lg.audit()
    assert report.problem is not None and report.problem.startswith(expected), report.problem
    done = cli("ledger", "audit", "--ledger", str(copy), cwd=book.path.parent)
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith(f"bad: {expected}")


# ---------------------------------------------------------------------------------------------
# two processes appending at once

WORKER = """
import sys, time
from pathlib import Path
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ledger.open import open_ledger
from ledger.canonical import sha256_hex
from ledger.keys import public_hex
{claim_body}
path, worker, n, barrier = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
key = Ed25519PrivateKey.generate()
lg = open_ledger(path)  # imports and open done before the barrier: only appends race
(barrier / f"ready-{{worker}}").touch()
deadline = time.monotonic() + 30
while not (barrier / "go").exists() and time.monotonic() < deadline:
    time.sleep(0.001)
for i in range(n):
    lg.claim(key, *claim_body(f"{{worker}}-{{i}}"))
print(public_hex(key))
"""


def test_two_processes_appending_at_once_lose_nothing(tmp_path: Path) -> None:
    path, n = tmp_path / "shared.sqlite", 150
    open_ledger(path).close()  # created up front, so neither worker races to create the schema
    script = WORKER.format(claim_body=textwrap.dedent(inspect.getsource(claim_body)))
    script = "import hashlib\nfrom typing import Any\n" + script
    workers = {name: subprocess.Popen([sys.executable, "-c", script, str(path), name, str(n),
                                       str(tmp_path)], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
               for name in ("w0", "w1")}
    deadline = time.monotonic() + 30
    while not all((tmp_path / f"ready-{name}").exists() for name in workers):
        assert time.monotonic() < deadline, "the workers never got ready"
        assert all(p.poll() is None for p in workers.values()), "a worker died early"
        time.sleep(0.005)
    (tmp_path / "go").touch()
    publics = {}
    for name, process in workers.items():
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        publics[name] = out.strip()

    with open_ledger(path) as lg:
        entries = lg.entries()
        assert len(entries) == 2 * n == lg.standing.size
        assert [e.fields["seq"] for e in entries] == list(range(2 * n))
        assert counts(path) == (2 * n, 2 * n)  # one signed tree head per append
        report = lg.audit()
        assert report.ok, report.problem
        claims = lg.standing.claims
        for name, public in publics.items():
            for i in range(n):
                body = {**claim_body(f"{name}-{i}")[0], "contributor": public}
                state = claims[claim_id(body)]
                assert state.claimant == public
        # each worker's claims are in its own order
        for public in publics.values():
            exps = [e.fields["body"]["run"] for e in entries if e.fields["author"] == public]
            assert [int(run.split("-")[1]) for run in exps] == list(range(n))


# ---------------------------------------------------------------------------------------------
# proofs


def test_inclusion_proofs_check_and_fail_when_altered(book: Book) -> None:
    entries = book.lg.entries()
    for seq in (0, 3, 5, 7):
        proof = book.lg.prove(seq)
        assert proof.check()
        assert proof.leaf == entries[seq].leaf and proof.head.tree_size == 8
        assert len(proof.proof) == 3  # log2(8) siblings
        assert not replace(proof, leaf=entries[(seq + 1) % 8].leaf).check()
        assert not replace(proof, seq=(seq + 1) % 8).check()
        for i in range(len(proof.proof)):
            altered = [*proof.proof]
            altered[i] = _flip(altered[i], 31)
            assert not replace(proof, proof=altered).check()
        assert not replace(proof, proof=proof.proof[:-1]).check()
        assert not replace(proof, head=replace(proof.head, root=_flip(proof.head.root))).check()
    # by hash prefix and by claim id, too
    assert book.lg.prove(entries[4].hash[:10]).seq == 4
    assert book.lg.prove(book.claims[2].body_id[:10]).seq == 2


def test_consistency_from_old_sizes(book: Book) -> None:
    heads = {head.tree_size: head for head in book.lg.store.tree_heads()}
    for old in (1, 3, 5, 7, 8):
        doc = book.lg.consistency(old)
        assert doc["verified"] is True
        # the old root is the one signed when the ledger had `old` entries
        assert bytes.fromhex(doc["old_root"]) == heads[old].root
        proof = [bytes.fromhex(h) for h in doc["proof"]]
        new_root = bytes.fromhex(doc["tree_head"]["root"])
        assert merkle.verify_consistency(old, 8, heads[old].root, new_root, proof)
        if proof:
            assert not merkle.verify_consistency(old, 8, heads[old].root, new_root,
                                                 [_flip(proof[0]), *proof[1:]])
            assert not merkle.verify_consistency(old, 8, _flip(heads[old].root), new_root,
                                                 proof)
    with pytest.raises(LedgerError, match="not between 1 and the ledger's 8 entries"):
        book.lg.consistency(9)


def test_prove_cli(book: Book) -> None:
    done = cli("ledger", "prove", "3", "--from", "2", "--ledger", str(book.path),
               cwd=book.path.parent)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["verified"] is True and doc["consistency"]["verified"] is True
    assert doc["inclusion"]["entry"] == 3 and doc["consistency"]["old_size"] == 2
    assert doc["inclusion"]["leaf_hash"] == book.claims[3].hash
    assert doc["inclusion"]["tree_head"]["tree_size"] == 8


# ---------------------------------------------------------------------------------------------
# a file that is not a ledger, and the CLI's views


def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite"
    content = b"these are my notes, not a ledger\n" * 200
    path.write_bytes(content)
    with pytest.raises(LedgerError) as err:
        open_ledger(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    done = cli("ledger", "show", "--ledger", str(path), cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("magnet-agent: error: ")
    assert done.stderr.count("\n") == 1 and "is not a ledger" in done.stderr
    assert path.read_bytes() == content


def test_reading_a_ledger_that_does_not_exist_creates_none(tmp_path: Path) -> None:
    path = tmp_path / "typo.sqlite"
    for action in ("show", "audit", "balance"):
        done = cli("ledger", action, "--ledger", str(path), cwd=tmp_path)
        assert done.returncode == 2 and done.stderr.count("\n") == 1
        assert f"no ledger at {path}" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_someone_elses_sqlite_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "app.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE entries (x)")
        db.execute("INSERT INTO entries VALUES (1)")
    db.close()
    content = path.read_bytes()
    done = cli("ledger", "show", "--ledger", str(path), cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "is a SQLite database but not a ledger (tables entries)" in done.stderr
    assert path.read_bytes() == content


def test_show_and_balance_cli(book: Book) -> None:
    where = ("--ledger", str(book.path))
    table = cli("ledger", "show", *where, cwd=book.path.parent)
    assert table.returncode == 0, table.stderr
    for i in range(4):
        assert f"run-{i} exp 3" in table.stdout
    assert "slash of claim" in table.stdout and "honest verdict" in table.stdout

    documents = json.loads(cli("ledger", "show", "--json", *where, cwd=book.path.parent).stdout)
    entries = book.lg.entries()
    assert [d["entry"]["seq"] for d in documents] == list(range(8))
    for document, entry in zip(documents, entries, strict=True):
        fields = document["entry"]
        assert keys.verify(fields["author"], bytes.fromhex(document["signature"]),
                           canonical(fields))
        assert document["hash"] == entry.hash == from_signed(document).hash
    one = json.loads(cli("ledger", "show", "6", "--json", *where, cwd=book.path.parent).stdout)
    assert [d["entry"]["body"]["verdict"] for d in one] == ["false"]

    balances = json.loads(cli("ledger", "balance", "--json", *where,
                              cwd=book.path.parent).stdout)
    assert balances == book.lg.balances()
    assert balances[keys.public_hex(book.a)] == reward_points(
        book.claims[0].fields["body"]["metric"]) - 100
