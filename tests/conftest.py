"""How the suite runs in parallel (`make test`: pytest-xdist, `-n 5 --dist loadgroup`; see the
Makefile).

Most tests wait on processes (git, bubblewrap, tiny training runs, servers), so five workers
share the two cores. Three things make that fast and safe:
- a work unit is one test, except in the modules of UNITS, whose tests share a module- or
  session-scoped fixture that is costly to make (a trained run, a loaded model): each of those
  is one unit run by one worker, so the fixture is made once, not once per worker (an
  `xdist_group` mark groups tests too);
- units are handed out longest first (LONG_FIRST, measured; `--no-loadscope-reorder` keeps this
  order), so no long one starts last;
- each worker's PyTorch uses one thread: two OpenMP threads on a CPU that other workers keep
  busy spin at every barrier, which made in-process training several times slower.
"""

from __future__ import annotations

import os

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):  # before any test module imports torch
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")


@pytest.fixture(scope="session", autouse=True)
def replay_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The suite's verifiers keep their replays (agent.claims.replay_cache) in one folder of this
    session, shared by the workers, never the user's: the claims on conftest's kept run replay
    its runs once between them."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # every worker's basetemp is a folder of this session's
    os.environ["MAGNET_REPLAY_CACHE"] = str(shared / "replays")

# Modules whose tests run as one unit: they share a costly module-scoped fixture.
MODULES = (
    "tests/agent/test_specialist.py",  # a trained base run
    "tests/agent/test_planner_local.py",  # the bundled SmolLM2 as a planner
    "tests/agent/test_train_command.py",  # a `magnet-agent train` run
    "tests/agent/test_export_command.py",  # a checkpoint
    "tests/agent/test_review.py",  # a finished run
    "tests/agent/test_checkpoint_ref.py",  # a finished run
    "tests/bitnet/test_template.py",  # template training runs
    "tests/bitnet/test_generate.py",  # a model trained in-process
    "tests/bitnet/test_llamacpp_parity.py",  # two models trained in-process
    "tests/bitnet/test_data.py",  # corpus caches
    "tests/bitnet/test_portable.py",  # corpus caches
    "tests/merge/test_diloco_torchft.py",  # corpora and a base checkpoint
    "tests/merge/test_merge_command.py",  # a base and its specialists
    "tests/ledger/test_chain.py",  # a deployed contract
    "tests/ledger/test_evm_ledger.py",  # a deployed contract
)
# These read tests/agent/conftest.py's kept_run, made once per session whichever worker asks
# first (the others wait for it) and share module fixtures on it: each module is its own unit,
# so they run side by side. test_ledger_replay's tests need nothing but the kept run and each
# writes its own ledger: they are units of their own, spread over the workers (one unit, its
# replays took 6 minutes).
KEPT_RUN = ("tests/agent/test_tools_ledger_merge.py", "tests/agent/test_held_out.py")
UNITS = {m: m for m in (*MODULES, *KEPT_RUN)}
# The modules that take longest (measured with --durations), longest first: their units are
# handed out first. Every other test follows in file order. One unit that needs conftest's
# kept_run leads, and makes it on one CPU; test_ledger_replay's units, which all need it, come
# once the other workers have long units of their own: ahead of them, all five workers waited
# for it and the suite's first half minute ran on one core of two.
LONG_FIRST = (
    "tests/agent/test_tokenizer_train.py",
    "tests/agent/test_tools_ledger_merge.py",
    "tests/agent/test_teacher.py",
    "tests/agent/test_specialist.py",
    "tests/agent/test_planner_local.py",
    "tests/bitnet/test_template.py",
    "tests/agent/test_ledger_replay.py",
    "tests/bitnet/test_generate.py",
    "tests/agent/test_template_scoring.py",
    "tests/agent/test_server_limits.py",
    "tests/agent/test_bad_inputs.py",
    "tests/agent/test_repl.py",
    "tests/agent/test_export_command.py",
    "tests/agent/test_records_truth.py",
    "tests/merge/test_diloco_torchft.py",
    "tests/agent/test_resume.py",
    "tests/agent/test_tools_resume.py",
    "tests/agent/test_architecture_edit.py",
    "tests/agent/test_legacy_run.py",
    "tests/agent/test_train_command.py",
    "tests/bitnet/test_score.py",
    "tests/merge/test_merge_command.py",
)


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Long units first (a stable sort: file order otherwise); xdist hands them out in this
    order, and every worker sorts alike, so their collections still agree."""
    rank = {module: i for i, module in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(_module(item.nodeid), len(rank)))


try:
    from xdist.scheduler import LoadGroupScheduling
except ImportError:  # pytest-xdist is a dev extra: without it the suite runs serially
    LoadGroupScheduling = None

if LoadGroupScheduling is not None:

    class GroupedScheduling(LoadGroupScheduling):
        """loadgroup, where a test of a module in UNITS belongs to that module's unit."""

        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return UNITS.get(_module(nodeid), scope) if scope == nodeid else scope

    @pytest.hookimpl(optionalhook=True)  # an xdist hook: unknown under -p no:xdist
    def pytest_xdist_make_scheduler(config: pytest.Config, log):
        if config.getvalue("dist") == "loadgroup":
            return GroupedScheduling(config, log)
        return None
