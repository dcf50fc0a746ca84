"""Unit-test fixtures: the embedded engine (StubBroker + SQLite), which is also our embedded mode."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import examples.steps  # noqa: E402,F401  (registers the example steps)
import tests.steps_for_tests  # noqa: E402,F401  (registers the test steps)
from miniflow.ops.embedded import EmbeddedEngine  # noqa: E402

# tests/data holds scenario files the tests run with `miniflow test` (one fails on purpose, some need
# private services): the pytest plugin is not to collect them as tests of their own.
collect_ignore = ["data"]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[EmbeddedEngine]:
    """A started embedded engine on a fresh SQLite file; stopped afterwards."""
    eng = EmbeddedEngine(f"sqlite:///{tmp_path / 'miniflow.db'}", threads=4)
    eng.start()
    try:
        yield eng
    finally:
        eng.stop()
