"""`magnet-agent ledger ...`: keys, claims, verification by replay, balances, audit, proofs.

    magnet-agent ledger keygen ~/.magnet/me.key
    magnet-agent ledger claim RUN EXP --key ~/.magnet/me.key      # a kept improvement
    magnet-agent ledger verify ENTRY --key ~/.magnet/verifier.key # replay it; 2 false: slash
    magnet-agent ledger show | balance | audit | prove ENTRY

Every command takes `--ledger PATH|evm:URL` (default $MAGNET_LEDGER, else
~/.local/share/magnet/ledger.sqlite). Parsing and printing only: the ledger itself is `ledger/`,
claiming and replaying are agent.claims.ledger_ops (which the ledger tools call too).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console

from agent.cli import options
from agent.cli.errors import fail

COMMANDS = ("ledger",)


def add_commands(commands: options.Subparsers) -> None:
    ledger = commands.add_parser(
        "ledger", help="signed claims of verified improvements: keygen, claim, show, balance, "
                       "verify (replay), audit, prove")
    actions = ledger.add_subparsers(dest="action", required=True)

    def sub(name: str, help: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help)
        parser.add_argument("--ledger", metavar="PATH|evm:URL",
                            help="default $MAGNET_LEDGER, else ~/.local/share/magnet/"
                                 "ledger.sqlite")
        return parser

    keygen = actions.add_parser("keygen", help="write a new Ed25519 key file (mode 0600)")
    keygen.add_argument("keyfile")
    claim = sub("claim", "claim a kept improvement of a run, with its replay facts and bundle")
    claim.add_argument("run", help="run id or directory")
    claim.add_argument("exp", type=int, help="the kept experiment's number")
    claim.add_argument("--key", required=True, metavar="KEYFILE")
    claim.add_argument("--stake", type=int, default=None, help="points put up (default 100)")
    options.runs_dir(claim)
    show = sub("show", "the entries as a table, or one entry")
    show.add_argument("entry", nargs="?", help="number, or 6+ characters of a hash or claim id")
    show.add_argument("--last", type=int, default=50, metavar="N",
                      help="the table's last N entries (default 50; 0: all)")
    show.add_argument("--json", action="store_true", help="the signed entries as JSON (all)")
    balance = sub("balance", "points per key")
    balance.add_argument("--json", action="store_true")
    verify = sub("verify", "replay a claim in a fresh sandbox; a false claim is slashed "
                 "once a second key's replay agrees")
    verify.add_argument("entry")
    verify.add_argument("--key", required=True, metavar="KEYFILE", help="the verifier's key")
    verify.add_argument("--unconfined", action="store_true",
                        help="replay without bubblewrap (only where bwrap cannot run)")
    verify.add_argument("--json", action="store_true")
    audit = sub("audit", "re-check every signature, hash link and Merkle root")
    audit.add_argument("--json", action="store_true")
    prove = sub("prove", "an inclusion proof of an entry in the latest signed tree head")
    prove.add_argument("entry")
    prove.add_argument("--from", dest="old_size", type=int, metavar="SIZE",
                       help="also a consistency proof from the tree of SIZE entries")


def main(args: argparse.Namespace) -> int:
    """Run one `ledger` action; 0 on success, 1 when audit finds a bad entry or a claim is
    judged false, 2 with one line when the ledger, a run or a replay refuses."""
    from agent.claims.ledger_ops import ledger_errors
    from ledger.keys import generate_key
    from ledger.open import open_ledger

    console = Console(highlight=False)
    try:
        if args.action == "keygen":
            public = generate_key(args.keyfile)
            console.print(f"wrote {args.keyfile} (mode 0600); public key {public}",
                          soft_wrap=True)
            return 0
        with open_ledger(args.ledger, create=args.action == "claim") as ledger:
            return ACTION_RUNNERS[args.action](ledger, args, console)
    except ledger_errors() as err:
        return fail(str(err))


def _claim(ledger: Any, args: argparse.Namespace, console: Console) -> int:
    from agent.claims.ledger_ops import claim_experiment, claim_line
    from agent.rundir.runs import find_run
    from ledger.keys import load_key

    key = load_key(args.key)
    claimed = claim_experiment(ledger, key, find_run(args.run, args.runs_dir), args.exp,
                               stake=args.stake)
    console.print(claim_line(claimed.entry), soft_wrap=True)
    return 0


def _show(ledger: Any, args: argparse.Namespace, console: Console) -> int:
    from rich.table import Table

    entries = [ledger.find(args.entry)] if args.entry else ledger.entries()
    if args.json:
        print(json.dumps([{"entry": e.fields, "signature": e.signature.hex(), "hash": e.hash}
                          for e in entries], indent=1))
        return 0
    size = ledger.standing.size
    if not args.entry and 0 < args.last < size:
        entries = entries[-args.last:]
    shown = f"the last {len(entries)} of {size}" if len(entries) < size else f"{size}"
    table = Table(title=f"ledger {ledger.location} ({shown} entries)")
    for column in ("#", "kind", "author", "what", "hash"):
        table.add_column(column, justify="right" if column == "#" else "left")
    claims = ledger.standing.claims
    for entry in entries:
        fields = entry.fields
        table.add_row(str(fields["seq"]), fields["kind"], fields["author"][:12],
                      describe(claims, entry), entry.hash[:12])
    console.print(table)
    return 0


def describe(claims: dict[str, Any], entry: Any) -> str:
    """One line of what an entry says; `claims`: the ledger's claim states by id."""
    from ledger.entries import CLAIM, VERIFICATION

    fields = entry.fields
    body = fields["body"]
    if fields["kind"] == CLAIM:
        metric = body["metric"]
        state = claims.get(entry.body_id)
        return (f"{body['run']} exp {body['exp']} ({body['commit'][:8]}): {metric['name']} "
                f"{metric['before']:.4f} -> {metric['after']:.4f}, stake {body['stake']}"
                f"{f', {state.status}' if state else ''}")
    if fields["kind"] == VERIFICATION:
        return f"{body['verdict']} verdict on claim {body['claim'][:12]}: {body.get('reason', '')}"
    return f"slash of claim {body['claim'][:12]}: stake {body['stake']} cut, {body['revoked']} " \
           "points revoked"


def _balance(ledger: Any, args: argparse.Namespace, console: Console) -> int:
    from rich.table import Table

    balances = ledger.balances()
    if args.json:
        print(json.dumps(balances, indent=1))
        return 0
    table = Table(title="points per key (verified improvements + verifications - slashed "
                        "stakes)")
    table.add_column("public key")
    table.add_column("points", justify="right")
    for public, points in sorted(balances.items(), key=lambda kv: -kv[1]):
        table.add_row(public, str(points))
    console.print(table)
    return 0


def _verify(ledger: Any, args: argparse.Namespace, console: Console) -> int:
    from agent.claims.ledger_ops import replay_entry
    from ledger.keys import load_key
    from ledger.rules import DISPUTED, DISPUTED_NOTE, HONEST

    # with --json, stdout is the JSON document alone: the progress goes to stderr
    progress = Console(stderr=True, highlight=False) if args.json else console
    replayed = replay_entry(ledger, load_key(args.key), args.entry, unconfined=args.unconfined,
                            console=progress)
    verdict, written = replayed.verdict, replayed.written
    status = ledger.claim_state(replayed.claim).status  # what the verdict settled, if anything
    if args.json:
        print(json.dumps({**verdict.facts(), "verdict": verdict.verdict, "claim_status": status,
                          "entries": [e.fields["seq"] for e in written]}, indent=1))
    else:
        colour = "green" if verdict.verdict == HONEST else "red"
        console.print(f"[{colour}]{verdict.verdict}[/]: {verdict.reason}", soft_wrap=True)
        console.print(f"recorded as entr{'ies' if len(written) > 1 else 'y'} "
                      f"{', '.join(str(e.fields['seq']) for e in written)}; the claim is "
                      f"{DISPUTED_NOTE if status == DISPUTED else status}", soft_wrap=True)
    return 0 if verdict.verdict == HONEST else 1


def _audit(ledger: Any, args: argparse.Namespace, console: Console) -> int:
    report = ledger.audit()
    if args.json:
        print(json.dumps({"ok": report.ok, "entries": report.entries,
                          "tree_heads": report.tree_heads, "root": report.root,
                          "seconds": round(report.seconds, 3), "problem": report.problem}))
    elif report.ok:
        console.print(f"[green]ok[/]: {report.entries} entries and {report.tree_heads} signed "
                      f"tree heads check out (root {report.root[:16]}…, {report.seconds:.2f} s)")
    else:
        console.print(f"[red]bad[/]: {report.problem}", soft_wrap=True)
    return 0 if report.ok else 1


def _prove(ledger: Any, args: argparse.Namespace, console: Console) -> int:
    proof = ledger.prove(args.entry)
    document: dict[str, Any] = {"inclusion": proof.as_json(), "verified": proof.check()}
    if args.old_size is not None:
        document["consistency"] = ledger.consistency(args.old_size)
        document["verified"] &= document["consistency"]["verified"]
    print(json.dumps(document, indent=1))
    return 0 if document["verified"] else 1


ACTION_RUNNERS = {"claim": _claim, "show": _show, "balance": _balance, "verify": _verify,
                  "audit": _audit, "prove": _prove}
