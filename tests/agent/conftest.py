"""Shared fixtures for the agent tests: a scripted OpenAI-compatible server.

pytest runs with --import-mode=importlib, so this folder is put on sys.path for test modules to
`from openai_server import proposal, error, ...`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from openai_server import ScriptedServer  # noqa: E402 - needs the path above


@pytest.fixture
def openai_server() -> Iterator[ScriptedServer]:
    """A started ScriptedServer on 127.0.0.1 (empty script; `push` replies), stopped after."""
    with ScriptedServer() as server:
        yield server
