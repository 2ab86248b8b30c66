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
forbidden = set(json.loads(sys.argv[2]))
for name in json.loads(sys.argv[3]):  # allowed libraries many modules import, loaded once before the forks
    try:
        importlib.import_module(name)
    except ImportError:
        pass
preloaded = forbidden & {m.split(".")[0] for m in sys.modules}
assert not preloaded, f"a preloaded library imports {sorted(preloaded)}: the check would blame every module"
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


# Third-party libraries that none of the forbidden ones import, imported once in the parent (each fork would
# otherwise import them again: the test took 16-25 s).
PRELOAD = ["numpy", "yaml", "httpx", "openai", "pydantic", "psutil", "watchfiles", "rich"]


def imported(modules: list[str], forbidden: set[str] = FORBIDDEN_FOR_APP) -> dict[str, dict]:
    proc = subprocess.run([sys.executable, "-c", CHECKER, json.dumps(modules), json.dumps(sorted(forbidden)),
                           json.dumps([m for m in PRELOAD if m not in forbidden])], capture_output=True, text=True,
                          timeout=300, cwd=REPO, check=True)
    return json.loads(proc.stdout)


APP_MODULES = modules_of("twinkle_tui", skip=("twinkle_tui.ui",))


def test_the_module_lists_are_not_empty() -> None:
    assert "twinkle_tui.commands.session" in APP_MODULES and "twinkle_tui.process.supervisor" in APP_MODULES
    assert not any(m.startswith("twinkle_tui.ui") for m in APP_MODULES)


def test_trainer_core_imports_no_torch_numpy_or_textual() -> None:
    core = [m for m in modules_of("twinkle_trainer") if m.startswith(TRAINER_CORE)]
    assert len(core) >= 6
    for name, result in imported(core, FORBIDDEN_FOR_TRAINER_CORE).items():
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


# ------------------------------------------------------------------ the layers (ARCHITECTURE.md)
# Lowest floor first. A module may import from its own floor and the floors below it, never from a floor above;
# and no two modules may import each other through any chain (function-level and type-only imports count too).
FLOORS = [
    ("twinkle_trainer", 0), ("trainer", 0),
    ("twinkle_tui.runs", 1), ("twinkle_tui.gpu", 1),
    ("twinkle_tui.process", 2),
    ("twinkle_tui.commands", 3),
    ("twinkle_tui.agent", 4),
    ("twinkle_tui.monitor", 5),
    ("twinkle_tui.research", 6),
    ("twinkle_tui.ui", 7), ("twinkle_tui.headless", 7), ("twinkle_tui.serve", 7),
    ("twinkle_tui.cli", 8), ("twinkle_tui.__main__", 9), ("twinkle_tui", 0),
]


def floor_of(module: str) -> int:
    for prefix, floor in FLOORS:
        if module == prefix or module.startswith(prefix + "."):
            return floor
    raise AssertionError(f"{module} is on no floor of ARCHITECTURE.md: add it to FLOORS")


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its source (top level, in functions, for types)."""
    import ast

    files = {}
    for package in ("twinkle_tui", "twinkle_trainer", "trainer"):
        for path in (REPO / package).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [f"{node.module}.{a.name}" for a in node.names] \
                if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for name in names:
                target = resolve(name)
                if target and target != module and not module.startswith(target + "."):
                    graph[module].add(target)
    return graph


def test_no_import_points_up_a_floor() -> None:
    graph = import_graph()
    assert len(graph) > 80
    up = sorted((m, t) for m, targets in graph.items() for t in targets if floor_of(t) > floor_of(m))
    assert up == []


def test_no_circle_of_modules() -> None:
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for module in graph:
        if module not in index:
            visit(module)
    assert circles == []


def test_mypy_checks_every_test_and_bench_module_as_one() -> None:
    """mypy names modules, not globs: a test or bench module missing from pyproject's tests override would be held
    to strict (and fail on its unannotated fixtures) or, worse, be named wrongly. Each is listed."""
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]
    assert {"twinkle_tui", "twinkle_trainer", "tests", "bench"} <= set(config["files"])
    relaxed = next(o for o in config["overrides"] if "conftest" in o["module"])
    modules = {p.stem for folder in ("tests", "tests/gpu", "bench") for p in (REPO / folder).glob("*.py")}
    assert sorted(modules - {m.removeprefix("gpu.") for m in relaxed["module"]}) == []
