"""The local planner's narrowed vocabulary: the automaton of a proposal's schema, built over only
the tokens its characters can spell, allows exactly what the one over all 49k tokens allows.

The real bundled SmolLM2 tokenizer (read from the GGUF: no model weights are loaded).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.goal.spec import load_goal
from agent.planners.chat_tokenizer import ChatTokenizer
from agent.planners.local import find_gguf
from agent.planners.local_model import LoadedModel, _literal_alphabet, schema_index, vocabulary_of
from agent.planners.local_prompt import proposal_schema, value_grid

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tokenizer_only() -> LoadedModel:
    transformers = pytest.importorskip("transformers")
    gguf = find_gguf()
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                           local_files_only=True)
    ours = ChatTokenizer.of(tokenizer)
    return LoadedModel(ours, None, *vocabulary_of(ours))


def _allowed_everywhere(index) -> dict[int, tuple[int, ...]]:
    """Every state reachable from the start, with the tokens it allows."""
    seen: dict[int, tuple[int, ...]] = {}
    todo = [index.get_initial_state()]
    while todo:
        state = todo.pop()
        if state in seen:
            continue
        allowed = tuple(sorted(index.get_allowed_tokens(state) or []))
        seen[state] = allowed
        todo += [nxt for token in allowed
                 if (nxt := index.get_next_state(state, token)) is not None]
    return seen


@pytest.mark.parametrize("goal_file", ["goals/portable-code-bitnet.md", "goals/pycode-bitnet.md"])
def test_the_narrowed_automaton_allows_what_the_full_one_does(tokenizer_only, goal_file):
    from outlines_core import Index
    from outlines_core.json_schema import build_regex_from_schema

    goal = load_goal(ROOT / goal_file)
    schema = proposal_schema({name: value_grid(spec) for name, spec in goal.knobs.items()})
    tokenizer_only._narrowed.clear()
    narrowed = schema_index(tokenizer_only, schema)
    full = Index(build_regex_from_schema(json.dumps(schema), ""), tokenizer_only.vocabulary)
    reachable = _allowed_everywhere(full)
    assert len(reachable) > 50  # a real automaton: every knob, every value
    assert _allowed_everywhere(narrowed) == reachable
    # narrowed by much, and once: the next proposal's schema reuses it
    (alphabet,) = tokenizer_only._narrowed
    kept = [text for text in tokenizer_only.token_strings if set(text) <= alphabet]
    assert 0 < len(kept) < len(tokenizer_only.token_strings) / 10
    schema_index(tokenizer_only, schema)
    assert len(tokenizer_only._narrowed) == 1


@pytest.mark.parametrize(("regex", "alphabet"), [
    (r'\{"knob":"N_LAYER","value":(3|4)\}', set('{"knob:N_LAYER,value34}()|')),
    (r"(ab)+c?", set("ab()+c?")),
    (r"a.c", None),  # any character
    (r"[0-9]", None),  # a class
    (r"\d", None),  # an escaped class
])
def test_only_plainly_literal_regexes_are_narrowed(regex, alphabet):
    found = _literal_alphabet(regex)
    assert (found if found is None else set(found)) == alphabet
