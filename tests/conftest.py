from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
TOY = EXAMPLES / "toy_regression.py"


def wait_for(condition: Callable[[], object], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> object:
    """Poll until condition() is truthy; fail the test with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh $TWINKLE_HOME for the test and for every process it starts."""
    h = tmp_path / "twinkle-home"
    h.mkdir()
    monkeypatch.setenv("TWINKLE_HOME", str(h))
    monkeypatch.delenv("TWINKLE_RUN_ID", raising=False)
    monkeypatch.delenv("TWINKLE_SUPERVISED", raising=False)
    # children import the package from the checkout even without an installed copy
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    return h


PYTHON = sys.executable
