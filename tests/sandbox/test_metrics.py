from pathlib import Path

from sandbox.metrics import is_finite, parse_metric_line, parse_metric_lines, read_metrics_json


def test_metric_lines_parse_numbers_and_ignore_noise():
    lines = [
        "step 10 loss 3.2",
        "METRIC val_bpb=1.2345",
        "METRIC steps=1200",
        "  METRIC lr = 3e-4  ",
        "METRIC broken=abc",
        "xMETRIC nope=1",
        "METRIC val_bpb=1.1",  # a later line wins
        "METRIC tokens/s=912.5",
    ]
    metrics = parse_metric_lines(lines)
    assert metrics == {"val_bpb": 1.1, "steps": 1200, "lr": 3e-4, "tokens/s": 912.5}
    assert isinstance(metrics["steps"], int)
    assert isinstance(metrics["val_bpb"], float)


def test_metric_line_rejects_missing_value():
    assert parse_metric_line("METRIC val_bpb=") is None
    assert parse_metric_line("METRIC =1") is None
    assert parse_metric_line("METRIC x=nan")[0] == "x"


def test_metrics_json(tmp_path: Path):
    path = tmp_path / "metrics.json"
    path.write_text('{"val_bpb": 1.5, "steps": 3, "note": "text", "ok": true, "s": "2.5"}')
    assert read_metrics_json(path) == {"val_bpb": 1.5, "steps": 3, "s": 2.5}
    path.write_text("{not json")
    assert read_metrics_json(path) == {}
    assert read_metrics_json(tmp_path / "missing.json") == {}


def test_an_overlong_integer_is_not_a_number():
    """4,000 digits crashed the controller (float() overflows; int() refuses 4,300+)."""
    assert parse_metric_line("METRIC val_bpb=" + "9" * 4000) is None
    assert parse_metric_line("METRIC val_bpb=" + "9" * 5000) is None
    assert parse_metric_line("METRIC steps=-" + "9" * 31) is None
    assert parse_metric_line("METRIC steps=" + "9" * 30) == ("steps", int("9" * 30))
    assert parse_metric_line("METRIC x=1e999") == ("x", float("inf"))  # diverged, named so


def test_metrics_json_drops_overlong_integers(tmp_path: Path):
    path = tmp_path / "metrics.json"
    long, longer, quoted = "9" * 4000, "9" * 5000, "9" * 40
    path.write_text(f'{{"a": {long}, "b": {longer}, "c": 2, "s": "{quoted}"}}')
    assert read_metrics_json(path) == {"c": 2}


def test_is_finite_survives_huge_integers():
    assert not is_finite(10**4000) and not is_finite(float("nan")) and not is_finite(True)
    assert is_finite(10**30) and is_finite(-1.5)
