"""pytest runs with --import-mode=importlib: this folder goes on sys.path so test modules can
`from model_fixtures import trained_like`."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
