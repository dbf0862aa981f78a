import os
from pathlib import Path

import pytest

from sandbox import EditError, KnobSet, SearchReplace, apply_edits
from sandbox.knobs import KnobSpec


@pytest.fixture
def root(tmp_path: Path, train_py: str) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "train.py").write_text(train_py)
    (ws / "model.py").write_text("X = 1\nY = 2\nX = 3\n")
    (ws / "config.py").write_text("SECRET = 1\n")
    return ws


def snapshot(root: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in root.iterdir() if p.is_file()}


def test_search_replace_applies(root: Path):
    changed = apply_edits(
        root,
        [SearchReplace("train.py", "LEARNING_RATE = 0.001", "LEARNING_RATE = 0.002")],
        ["train.py"],
    )
    assert changed == ["train.py"]
    assert "LEARNING_RATE = 0.002\n" in (root / "train.py").read_text()


def test_ambiguous_search_says_how_often_and_where(root: Path):
    before = snapshot(root)
    with pytest.raises(EditError) as err:
        apply_edits(root, [{"path": "model.py", "search": "X = ", "replace": "Z = "}], ["model.py"])
    msg = str(err.value)
    assert "occurs 2 times" in msg and "lines 1, 3" in msg and "exactly once" in msg
    assert "   1| X = 1" in msg and "   3| X = 3" in msg
    assert snapshot(root) == before


def test_missing_search_shows_closest_lines(root: Path):
    with pytest.raises(EditError) as err:
        apply_edits(root, [SearchReplace("train.py", "LEARNING_RATE = 0.01", "x")], ["train.py"])
    msg = str(err.value)
    assert "occurs 0 times" in msg
    assert "LEARNING_RATE = 0.001" in msg  # the closest line, shown with its number
    assert "   5| LEARNING_RATE = 0.001" in msg


@pytest.mark.parametrize(
    ("path", "editable", "fragment"),
    [
        ("config.py", ["train.py"], "config.py is not editable; edit only: train.py"),
        ("../outside.py", ["*"], "uses `..` and is refused"),
        ("sub/../config.py", ["*"], "uses `..` and is refused"),
        (str(Path("/etc/passwd")), ["*", "/etc/passwd"], "absolute path '/etc/passwd' refused"),
        (".git/config", ["*"], "is refused"),
    ],
)
def test_refused_paths(root: Path, path: str, editable: list[str], fragment: str):
    (root.parent / "outside.py").write_text("SECRET = 1\n")
    before = snapshot(root)
    with pytest.raises(EditError) as err:
        apply_edits(root, [SearchReplace(path, "SECRET = 1", "SECRET = 2")], editable)
    assert fragment in str(err.value)
    assert snapshot(root) == before
    assert (root.parent / "outside.py").read_text() == "SECRET = 1\n"


def test_symlink_escape_refused(root: Path, tmp_path: Path):
    target = tmp_path / "victim.py"
    target.write_text("A = 1\n")
    os.symlink(target, root / "link.py")
    (root / "sub").symlink_to(tmp_path)  # a directory symlink leading out
    for path in ("link.py", "sub/victim.py"):
        with pytest.raises(EditError, match="symlink that leads outside"):
            apply_edits(root, [SearchReplace(path, "A = 1", "A = 2")], ["link.py", "sub/*"])
    assert target.read_text() == "A = 1\n"


def test_symlink_to_non_editable_file_refused(root: Path):
    os.symlink(root / "config.py", root / "alias.py")
    with pytest.raises(EditError, match="not editable"):
        apply_edits(root, [SearchReplace("alias.py", "SECRET = 1", "SECRET = 2")], ["alias.py"])
    assert (root / "config.py").read_text() == "SECRET = 1\n"


def test_failed_compile_is_all_or_nothing(root: Path):
    before = snapshot(root)
    edits = [
        SearchReplace("model.py", "Y = 2", "Y = 20"),  # fine on its own
        SearchReplace("train.py", "N_LAYER = 4", "N_LAYER = (4"),  # does not compile
    ]
    with pytest.raises(EditError, match="train.py would not compile"):
        apply_edits(root, edits, ["train.py", "model.py"])
    assert snapshot(root) == before


def test_later_edit_failure_leaves_earlier_edits_unapplied(root: Path):
    before = snapshot(root)
    edits = [
        SearchReplace("train.py", "N_LAYER = 4", "N_LAYER = 6"),
        SearchReplace("train.py", "N_LAYER = 4", "N_LAYER = 8"),  # gone after the first edit
    ]
    with pytest.raises(EditError, match="occurs 0 times"):
        apply_edits(root, edits, ["train.py"])
    assert snapshot(root) == before


def test_knob_assignment_keeps_types_and_rest_of_file(root: Path, train_py: str, knobs: dict):
    changed = apply_edits(
        root,
        [
            KnobSet("LEARNING_RATE", 0.003),
            KnobSet("N_LAYER", 6.0),  # int knob: a whole float becomes an int
            {"knob": "ACTIVATION", "value": "gelu"},
            KnobSet("BATCH", 16),
        ],
        ["train.py"],
        knobs,
    )
    text = (root / "train.py").read_text()
    assert changed == ["train.py"]
    assert "LEARNING_RATE = 0.003\n" in text
    assert "N_LAYER = 6\n" in text
    assert "ACTIVATION = 'gelu'\n" in text
    assert "BATCH: int = 16\n" in text
    assert (
        text.replace("0.003", "0.001")
        .replace("= 6\n", "= 4\n")
        .replace("'gelu'", '"relu"')
        .replace("= 16\n", "= 8\n")
        == train_py
    )


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("LEARNING_RATE", 0.5, "outside [0.0001, 0.01]"),
        ("LEARNING_RATE", 1e-5, "outside"),
        ("N_LAYER", 9, "outside [1, 8]"),
        ("N_LAYER", 3.5, "not a whole number"),
        ("ACTIVATION", "tanh", "choose one of ['relu', 'gelu', 'relu2']"),
        ("LEARNING_RATE", "fast", "takes a number"),
        ("DROPOUT", 0.1, "unknown knob DROPOUT"),
    ],
)
def test_knob_range_checks(root: Path, name: str, value, fragment: str, knobs: dict):
    before = snapshot(root)
    with pytest.raises(EditError) as err:
        apply_edits(root, [KnobSet(name, value)], ["train.py"], knobs)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)  # one line
    assert snapshot(root) == before


def test_knob_must_be_assigned_once_at_top_level(root: Path):
    with pytest.raises(EditError, match="assigned 2 times"):
        apply_edits(root, [KnobSet("X", 2, "model.py")], ["model.py"], {"X": {"low": 0, "high": 9}})


def test_knob_spec_parsing():
    spec = KnobSpec.parse("LR", {"low": "1e-4", "high": "1e-2", "log": True})  # YAML strings
    assert (spec.low, spec.high, spec.log, spec.integer) == (1e-4, 1e-2, True, False)
    assert KnobSpec.parse("N", {"low": 1, "high": 8}).integer
    assert KnobSpec.parse("D", {"low": 0, "high": 1}).check(1, current=0.5) == 1.0
    with pytest.raises(EditError, match="log scale needs low > 0"):
        KnobSpec.parse("LR", {"low": 0, "high": 1, "log": True})
    with pytest.raises(EditError, match="low <= high"):
        KnobSpec.parse("LR", {"low": 2, "high": 1})
    with pytest.raises(EditError, match="unknown key"):
        KnobSpec.parse("LR", {"min": 2, "max": 1})
