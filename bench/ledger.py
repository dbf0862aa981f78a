"""The ledger's costs: signed appends, audit, proof sizes and times, and gas on the EVM.

Measured in a temporary directory on real SQLite files (WAL):
  appends   `--claims` claims appended one per `Ledger.claim` call, as the CLI does (each one a
            BEGIN IMMEDIATE transaction, an Ed25519-signed entry, its bundle artifact and a
            signed tree head); then two processes appending `--claims` / 2 each to one fresh
            file at once (started together on a barrier file), reported as the total rate
  audit     `Ledger.audit()` of the `--claims` entries, `--audits` times (median and each)
  proofs    inclusion proofs of `--proofs` random entries (`Ledger.prove`: the latest signed
            tree head and the path to it) and consistency proofs from as many random old sizes
            (`Ledger.consistency`, which also verifies it): median time, and size as
            hashes x 32 bytes and as the JSON `ledger prove` prints
  gas       the Vyper contract (ledger/chain.py) deployed on the in-process py-evm tester;
            `--gas-claims` of the ledger's claims submitted from a funded account derived from
            the claimant's key, each anchoring the signed root of the tree that holds it;
            the median gasUsed, then one challenge, both quorum votes, one finalize and one
            withdraw

Goals: >= 1,000 appends/s, audit of 10,000 entries < 2 s.

    .venv/bin/python bench/ledger.py [--claims 10000] [--audits 3] [--proofs 200]
                                     [--gas-claims 20] [--bundle-kb 4]

Ends with `RESULT appends_per_s=<n> audit_10k_s=<s> claim_gas=<n> proof_bytes=<n> proof_ms=<x>
appends_per_s_2proc=<n> consistency_bytes=<n> consistency_ms=<x>`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.table import Table

# this file is bench/ledger.py: put the repository first, or `import ledger` finds this script
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ledger import chain, keys  # noqa: E402
from ledger.book import Ledger  # noqa: E402
from ledger.canonical import sha256_hex  # noqa: E402
from ledger.open import open_ledger  # noqa: E402
from ledger.rules import reward_points  # noqa: E402

GOAL_FILE = b"name: tinystories-bpb\nmetric: {name: val_bpb, goal: minimize}\n" * 8
MIN_STAKE, WINDOW, QUORUM, VERIFIER_REWARD = 10**15, 3600, 2, 5  # wei, seconds, votes, points


def claim(tag: str, i: int, bundle_kb: int) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A claim shaped like agent/claims.py's, with a bundle of `bundle_kb` KiB of its own."""
    bundle = random.Random(f"{tag}-{i}").randbytes(bundle_kb * 1024)
    after = 2.0 - 0.5 * (i + 1) / (i + 2)  # always below the parent's 2.0: an improvement
    body = {
        "goal": {"name": "tinystories-bpb", "sha256": sha256_hex(GOAL_FILE)},
        "run": f"{tag}-run-{i // 50:04d}", "exp": i % 50,
        "commit": sha256_hex(f"{tag} commit {i}".encode())[:40],
        "parent": sha256_hex(f"{tag} commit {i - 1}".encode())[:40],
        "hypothesis": "raise the learning rate warmup to 200 steps to steady early training",
        "metric": {"name": "val_bpb", "goal": "minimize", "before": 2.0, "after": after},
        "replay": {"seed": i, "steps": 400, "time_budget": 300.0, "threads": 2,
                   "torch": "2.5.1", "corpus": {"name": "tinystories", "bytes": 1 << 20},
                   "knobs": {"lr": 3e-3, "warmup": 200, "batch_size": 16}},
        "bundle": sha256_hex(bundle), "goal_file": sha256_hex(GOAL_FILE), "stake": 100,
    }
    return body, {"bundle": bundle, "goal_file": GOAL_FILE}


def append_claims(lg: Ledger, key: Ed25519PrivateKey, tag: str, n: int,
                  bundle_kb: int) -> float:
    """Seconds to append n claims, one `Ledger.claim` call each (bodies built beforehand)."""
    claims = [claim(tag, i, bundle_kb) for i in range(n)]
    start = time.perf_counter()
    for body, artifacts in claims:
        lg.claim(key, body, artifacts)
    return time.perf_counter() - start


def worker(path: str, tag: str, n: int, barrier: str, bundle_kb: int) -> None:
    """One of the two appending processes: ready, wait for go, append, print wall times."""
    key = Ed25519PrivateKey.generate()
    claims = [claim(tag, i, bundle_kb) for i in range(n)]
    with open_ledger(path) as lg:
        Path(barrier, f"ready-{tag}").touch()
        while not Path(barrier, "go").exists():
            time.sleep(0.0005)
        start = time.time()  # wall clock: compared across the two processes
        for body, artifacts in claims:
            lg.claim(key, body, artifacts)
        print(json.dumps({"start": start, "end": time.time(), "author": keys.public_hex(key)}))


def two_processes(tmp: Path, n: int, bundle_kb: int) -> dict[str, Any]:
    path = tmp / "shared.sqlite"
    open_ledger(path).close()  # the schema exists before either worker opens it
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(path), tag, str(n),
                               str(tmp), str(bundle_kb)], stdout=subprocess.PIPE, text=True)
             for tag in ("w0", "w1")]
    while not all((tmp / f"ready-{tag}").exists() for tag in ("w0", "w1")):
        if any(p.poll() is not None for p in procs):
            sys.exit("a worker process died before the barrier")
        time.sleep(0.005)
    (tmp / "go").touch()
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        if p.returncode:
            sys.exit(f"a worker process failed with exit code {p.returncode}")
        results.append(json.loads(out))
    seconds = max(r["end"] for r in results) - min(r["start"] for r in results)
    with open_ledger(path) as lg:
        authors = [e.fields["author"] for e in lg.entries()]
        ok = lg.audit().ok
    switches = sum(a != b for a, b in zip(authors, authors[1:], strict=False))
    return {"seconds": seconds, "entries": len(authors), "audit_ok": ok, "switches": switches,
            "overlap": min(r["end"] for r in results) - max(r["start"] for r in results)}


def proofs(lg: Ledger, count: int, rng: random.Random) -> dict[str, Any]:
    size = lg.standing.size
    inclusion_ms, inclusion_hashes, inclusion_json, checks = [], [], [], 0
    for seq in rng.sample(range(size), count):
        start = time.perf_counter()
        proof = lg.prove(seq)
        inclusion_ms.append((time.perf_counter() - start) * 1e3)
        checks += proof.check()
        inclusion_hashes.append(len(proof.proof))
        inclusion_json.append(len(json.dumps(proof.as_json(), indent=1)))
    consistency_ms, consistency_hashes, consistency_json, verified = [], [], [], 0
    for old in rng.sample(range(1, size), count):
        start = time.perf_counter()
        doc = lg.consistency(old)
        consistency_ms.append((time.perf_counter() - start) * 1e3)
        verified += doc["verified"]
        consistency_hashes.append(len(doc["proof"]))
        consistency_json.append(len(json.dumps(doc, indent=1)))
    if checks != count or verified != count:
        sys.exit(f"only {checks}/{count} inclusion and {verified}/{count} consistency proofs "
                 "verified")
    median = statistics.median
    return {"inclusion": {"ms": median(inclusion_ms), "bytes": median(inclusion_hashes) * 32,
                          "max_bytes": max(inclusion_hashes) * 32,
                          "json": median(inclusion_json)},
            "consistency": {"ms": median(consistency_ms),
                            "bytes": median(consistency_hashes) * 32,
                            "max_bytes": max(consistency_hashes) * 32,
                            "json": median(consistency_json)}}


def gas(lg: Ledger, key: Ed25519PrivateKey, count: int) -> dict[str, Any]:
    """Gas of the contract's calls, fed with this ledger's claims and signed roots."""
    w3 = chain.tester()
    owner, v1, v2, challenger = w3.eth.accounts[:4]
    address = chain.deploy(w3, owner, challenge_window=WINDOW, min_stake=MIN_STAKE,
                           quorum=QUORUM, verifier_reward=VERIFIER_REWARD)
    contract = chain.LedgerContract(w3, address)
    for verifier in (v1, v2):
        contract.register_verifier(verifier, sender=owner)
    claimant = chain.derive_account(keys.seed(key))
    tx = w3.eth.send_transaction({"from": owner, "to": claimant.address, "value": 10**18})
    w3.eth.wait_for_transaction_receipt(tx)

    heads = {h.tree_size: h for h in lg.store.tree_heads()[:count]}
    entries = lg.entries()[:count]
    submitted = []
    for entry in entries:
        seq = entry.fields["seq"]
        receipt = contract.submit_claim(
            bytes.fromhex(entry.body_id), reward_points(entry.fields["body"]["metric"]), seq + 1,
            heads[seq + 1].root, stake=MIN_STAKE, sender=claimant)
        submitted.append(receipt["gasUsed"])
    challenged, finalized = bytes.fromhex(entries[0].body_id), bytes.fromhex(entries[1].body_id)
    used = {"challenge": contract.challenge(challenged, bond=MIN_STAKE,
                                            sender=challenger)["gasUsed"],
            "vote (1st)": contract.vote(challenged, False, sender=v1)["gasUsed"],
            "vote (quorum)": contract.vote(challenged, False, sender=v2)["gasUsed"]}
    tester = w3.provider.ethereum_tester
    tester.time_travel(contract.claim(finalized)["deadline"])  # past its challenge window
    tester.mine_blocks()
    used["finalize"] = contract.finalize(finalized, sender=owner)["gasUsed"]
    used["withdraw"] = contract.withdraw(sender=claimant)["gasUsed"]
    if contract.claim(challenged)["state"] != "SLASHED" or \
            contract.claim(finalized)["state"] != "REWARDED":
        sys.exit("the contract did not settle the challenged and finalized claims")
    return {"submit_claim": statistics.median(submitted), "submit_all": submitted, **used}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claims", type=int, default=10_000)
    parser.add_argument("--audits", type=int, default=3)
    parser.add_argument("--proofs", type=int, default=200)
    parser.add_argument("--gas-claims", type=int, default=20)
    parser.add_argument("--bundle-kb", type=int, default=4, help="bundle artifact per claim")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        path, tag, n, barrier, bundle_kb = args.worker
        worker(path, tag, int(n), barrier, int(bundle_kb))
        return

    console = Console()
    chain.compiled()  # compile (or read the cache) before anything is timed
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        key = Ed25519PrivateKey.generate()
        with console.status(f"appending {args.claims:,} claims"):
            lg = open_ledger(tmp / "one.sqlite")
            seconds = append_claims(lg, key, "one", args.claims, args.bundle_kb)
        file_mb = sum(p.stat().st_size for p in tmp.glob("one.sqlite*")) / 1e6
        with console.status("two processes appending at once"):
            both = two_processes(tmp, args.claims // 2, args.bundle_kb)
        with console.status("auditing"):
            audits = []
            for _ in range(args.audits):
                start = time.perf_counter()
                report = lg.audit()
                audits.append(time.perf_counter() - start)
                if not report.ok or report.entries != args.claims:
                    sys.exit(f"audit failed: {report.problem}")
        with console.status("proving"):
            proved = proofs(lg, args.proofs, random.Random(0))
        with console.status("gas on the in-process EVM"):
            used = gas(lg, key, args.gas_claims)
        lg.close()

    appends = args.claims / seconds
    appends_2 = both["entries"] / both["seconds"]
    audit_s = statistics.median(audits)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    table = Table(title=f"ledger at {args.claims:,} entries ({cores} cores, SQLite WAL, "
                        f"{args.bundle_kb} KiB bundle per claim, {file_mb:.1f} MB file)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("notes")
    table.add_row("signed appends/s, 1 process", f"{appends:,.0f}",
                  f"{args.claims:,} Ledger.claim calls in {seconds:.2f} s (goal >= 1,000/s)")
    table.add_row("signed appends/s, 2 processes", f"{appends_2:,.0f}",
                  f"{both['entries']:,} in {both['seconds']:.2f} s; audit "
                  f"{'ok' if both['audit_ok'] else 'BAD'}; authors alternate "
                  f"{both['switches']}x; both ran together {max(both['overlap'], 0):.2f} s")
    table.add_row("audit s (median)", f"{audit_s:.3f}",
                  "runs: " + ", ".join(f"{s:.3f}" for s in audits) + " (goal < 2 s)")
    for name, label in (("inclusion", "inclusion proof"), ("consistency", "consistency proof")):
        p = proved[name]
        table.add_row(f"{label} bytes (median)", f"{p['bytes']:,.0f}",
                      f"hashes x 32, max {p['max_bytes']:,}; as JSON {p['json']:,.0f} B "
                      "(with the signed tree head)")
        table.add_row(f"{label} ms (median)", f"{p['ms']:.2f}",
                      f"over {args.proofs} random "
                      f"{'entries' if name == 'inclusion' else 'old sizes'}")
    table.add_row("gas: submit_claim (median)", f"{used['submit_claim']:,.0f}",
                  f"{len(used['submit_all'])} claims, each anchoring a new root; range "
                  f"{min(used['submit_all']):,}-{max(used['submit_all']):,}")
    for call in ("challenge", "vote (1st)", "vote (quorum)", "finalize", "withdraw"):
        table.add_row(f"gas: {call}", f"{used[call]:,}", "once")
    Console(width=max(console.width, 120)).print(table)  # the notes column needs the room
    print(f"RESULT appends_per_s={appends:.0f} audit_10k_s={audit_s:.3f} "
          f"claim_gas={used['submit_claim']:.0f} proof_bytes={proved['inclusion']['bytes']:.0f} "
          f"proof_ms={proved['inclusion']['ms']:.2f} appends_per_s_2proc={appends_2:.0f} "
          f"consistency_bytes={proved['consistency']['bytes']:.0f} "
          f"consistency_ms={proved['consistency']['ms']:.2f}")


if __name__ == "__main__":
    main()
