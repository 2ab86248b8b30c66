"""Import boundaries of DESIGN.md, checked for every module: each is imported in a fresh process (a fork of a bare
interpreter) and what it pulled into sys.modules is inspected."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN_FOR_TRAINER_CORE = {"torch", "transformers", "peft", "numpy", "textual", "accelerate"}
FORBIDDEN_FOR_APP = {"textual", "torch", "transformers", "peft", "accelerate", "vllm"}
TRAINER_CORE = ("twinkle_trainer.protocol", "twinkle_trainer.runtime", "twinkle_trainer.config", "twinkle_trainer.preflight")

CHECKER = r"""
import importlib, json, os, sys
results = {}
for name in json.loads(sys.argv[1]):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            importlib.import_module(name)
            out = {"modules": sorted({m.split(".")[0] for m in sys.modules})}
        except BaseException as exc:
            out = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.waitpid(pid, 0)
    results[name] = json.loads(data)
print(json.dumps(results))
"""


def modules_of(package: str, skip: tuple[str, ...] = ()) -> list[str]:
    root = REPO / package.replace(".", "/")
    names = [package]
    for info in pkgutil.walk_packages([str(root)], prefix=package + "."):
        if not info.name.startswith(skip) and not info.name.endswith("__main__"):
            names.append(info.name)
    return sorted(names)


def imported(modules: list[str]) -> dict[str, dict]:
    proc = subprocess.run([sys.executable, "-c", CHECKER, json.dumps(modules)], capture_output=True, text=True,
                          timeout=300, cwd=REPO, check=True)
    return json.loads(proc.stdout)


APP_MODULES = modules_of("twinkle_tui", skip=("twinkle_tui.ui",))


def test_the_module_lists_are_not_empty() -> None:
    assert "twinkle_tui.commands.session" in APP_MODULES and "twinkle_tui.process.supervisor" in APP_MODULES
    assert not any(m.startswith("twinkle_tui.ui") for m in APP_MODULES)


def test_trainer_core_imports_no_torch_numpy_or_textual() -> None:
    core = [m for m in modules_of("twinkle_trainer") if m.startswith(TRAINER_CORE)]
    assert len(core) >= 6
    for name, result in imported(core).items():
        assert "error" not in result, (name, result)
        assert not FORBIDDEN_FOR_TRAINER_CORE & set(result["modules"]), name


def test_no_app_module_outside_ui_imports_textual_or_torch() -> None:
    for name, result in imported(APP_MODULES).items():
        assert "error" not in result, (name, result)
        bad = FORBIDDEN_FOR_APP & set(result["modules"])
        assert not bad, f"{name} imports {sorted(bad)}"


@pytest.mark.parametrize("package", ["twinkle_tui"])
def test_no_module_outside_ui_mentions_textual_in_source(package: str) -> None:
    root = REPO / package
    offenders = [
        str(p.relative_to(root)) for p in root.rglob("*.py")
        if "ui" not in p.relative_to(root).parts and ("import textual" in p.read_text() or "from textual" in p.read_text())
    ]
    assert offenders == []
