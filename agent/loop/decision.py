"""Keep, discard or confirm: the keep rule, with its reasoning written down.

The noise is the pooled run-to-run spread of every repeated measurement (ranking.noise_sd). A
candidate's gain over the best is compared with the standard error of that difference, which
depends on how many runs stand behind each side:

- gain > CLEAR_Z standard errors (and > min_delta): kept at once;
- a change that removes more lines than it adds and is not worse by more than one standard
  error: kept, simpler code at equal quality (autoresearch's simplicity criterion);
- gain between FLOOR_Z and CLEAR_Z standard errors: run once more with another seed, and judge
  the mean of the two runs: kept if its gain exceeds KEEP_Z standard errors (and min_delta);
- otherwise discarded: as worse when it is worse than the reference by more than WORSE_Z
  standard errors (the reason says by how much), else as within noise.

One difference of two baseline runs is a poor estimate of the noise, so a single threshold at
it throws away real gains and keeps lucky runs; the confirmation costs one run, only in the band
where a single run cannot tell.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from agent.rundir import ranking

FLOOR_Z = 0.5  # below this a single run's gain is noise: discard without confirming
CLEAR_Z = 2.0  # above this a single run's gain is clear: keep without confirming
KEEP_Z = 1.0  # the confirmed mean must beat the best by this many standard errors
WORSE_Z = 1.0  # worse than the best by more than this many standard errors: beyond the noise


@dataclass(frozen=True)
class Judgement:
    action: str  # keep | discard | confirm
    rule: str  # clear gain | confirmed gain | simpler | confirm | within noise | not confirmed
    #            | worse
    metric: float  # the value judged: the mean of the runs
    reference: float  # the best so far (or the baseline mean) it was compared with
    gain: float  # metric's improvement over the reference (negative: worse)
    stderr: float  # standard error of that difference, from the pooled noise
    reason: str  # the reasoning, one line

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def decide(runs: Sequence[float], records: Sequence[ranking.Record], goal: str, *,
           min_delta: float = 0.0, lines_added: int = 0, lines_removed: int = 0) -> Judgement:
    """Judge a candidate measured `runs` (one value, or two after a confirmation) against the
    run's records so far."""
    metric = statistics.fmean(runs)
    reference, behind = ranking.reference(records, goal)
    assert reference is not None, "the baseline is measured before any candidate is judged"
    # the candidate's own repeated runs are a measurement of the noise too
    sd = ranking.noise_sd([*records, {"status": "candidate", "metric": metric,
                                     "runs": list(runs)}]) or 0.0
    stderr = sd * math.sqrt(1 / len(runs) + 1 / max(behind, 1))
    gain = ranking.gain(metric, reference, goal)
    z = gain / stderr if stderr else math.copysign(math.inf, gain) if gain else 0.0
    simpler = lines_removed > lines_added
    facts = (f"{metric:.4f} vs best {reference:.4f}: gain {gain:+.4f} = {z:+.2f} standard "
             f"errors (run-to-run sd {sd:.4f}, {len(runs)} run(s) vs {behind})")

    def verdict(action: str, rule: str, why: str) -> Judgement:
        return Judgement(action, rule, metric, reference, gain, stderr, f"{rule}: {facts}; {why}")

    if len(runs) == 1 and z > CLEAR_Z and gain > min_delta:
        return verdict("keep", "clear gain", f"above {CLEAR_Z:g} standard errors")
    if simpler and z >= -WORSE_Z:
        return verdict("keep", "simpler", f"removes {lines_removed} lines, adds {lines_added}, "
                                          "and is not worse beyond the noise")
    if len(runs) == 1 and z > FLOOR_Z and gain > min_delta:
        return verdict("confirm", "confirm", "between the noise floor and a clear margin: "
                                             "run once more with another seed")
    if len(runs) > 1 and z > KEEP_Z and gain > min_delta:
        return verdict("keep", "confirmed gain", f"the mean of {len(runs)} runs is above "
                                                 f"{KEEP_Z:g} standard error")
    if z < -WORSE_Z:
        errors = f" ({-z:.1f} standard errors)" if stderr else ""
        return verdict("discard", "worse", f"worse than the best {reference:.4f} by "
                                           f"{-gain:.4f}{errors}")
    if len(runs) > 1:
        return verdict("discard", "not confirmed", f"the mean of {len(runs)} runs is within "
                                                   "the noise")
    floor = f"at most {FLOOR_Z:g} standard errors" + (f" or {min_delta:g}" if min_delta else "")
    return verdict("discard", "within noise", f"{floor}: not a real gain")
