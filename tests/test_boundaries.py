"""Import boundaries of DESIGN.md, checked in a fresh interpreter through sys.modules."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FORBIDDEN_FOR_TRAINER_CORE = ("torch", "transformers", "peft", "numpy", "textual")
FORBIDDEN_FOR_CORE = ("textual", "torch", "transformers")


def imported_after(module: str) -> set[str]:
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return set(json.loads(out.stdout))


@pytest.mark.parametrize("module", ["trainer.protocol", "trainer.runtime"])
def test_trainer_core_imports_no_torch(module: str) -> None:
    mods = imported_after(module)
    assert not {m for m in mods if m.split(".")[0] in FORBIDDEN_FOR_TRAINER_CORE}


@pytest.mark.parametrize(
    "module",
    ["twinkle_tui.cli", "twinkle_tui.runs.store", "twinkle_tui.runs.progress", "twinkle_tui.process.controller",
     "twinkle_tui.process.supervisor", "twinkle_tui.headless"],
)
def test_core_imports_no_textual_and_no_torch(module: str) -> None:
    mods = imported_after(module)
    assert not {m for m in mods if m.split(".")[0] in FORBIDDEN_FOR_CORE}


def test_no_module_outside_ui_imports_textual_in_source() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "twinkle_tui"
    offenders = [
        str(p.relative_to(root)) for p in root.rglob("*.py")
        if "ui" not in p.relative_to(root).parts and ("import textual" in p.read_text() or "from textual" in p.read_text())
    ]
    assert offenders == []
