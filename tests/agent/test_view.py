"""The live view states where the run stands with scores.verdict: the baseline mean, the best."""

from rich.console import Console

from agent.loop.view import RunView


def rendered(records: list[dict]) -> str:
    console = Console(record=True, width=200, force_terminal=False)
    view = RunView("run-1", "val_bpb", "minimize", "search", console=console, live=False)
    view.preload(records)
    console.print(view)
    return console.export_text()


BASELINES = [{"exp": 0, "status": "baseline", "metric": 3.6, "hypothesis": "baseline"},
             {"exp": 1, "status": "baseline", "metric": 3.7, "hypothesis": "baseline again"}]


def test_live_view_says_when_nothing_beat_the_baseline():
    text = rendered([*BASELINES, {"exp": 2, "status": "discard", "metric": 3.0,
                                  "hypothesis": "a lucky run"}])
    assert "Nothing beat the baseline 3.6500." in text  # the mean, not the first baseline
    assert "3.0000" in text and "a lucky run" in text  # the row is shown, not counted as best


def test_live_view_shows_the_best_kept_against_the_baseline_mean():
    text = rendered([*BASELINES, {"exp": 2, "status": "keep", "metric": 3.285,
                                  "hypothesis": "wider"}])
    assert "Baseline 3.6500 → best 3.2850 (+10.00% better)." in text
