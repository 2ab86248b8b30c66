"""PROGRAM.md: the human's file. A YAML front matter says what to run and what may change; the text after it is for
the agent.

    ---
    target: train.py                 # the script (.py) or recipe (.toml/.yaml) an experiment runs
    args: [--steps, "300"]           # fixed arguments of every experiment
    editable: [train.py]             # what the LLM proposer may change
    harness: [evaluation.py]         # what nothing may change (the evaluation); checked by hash around each run
    metric: val_loss                 # logged by the harness into the run's metrics
    goal: minimize                   # or maximize
    budget: 60                       # seconds per experiment
    knobs:                           # for the optuna proposer: passed as --name VALUE
      lr: loguniform(1e-4, 1e-1)
    ---
    Free text: what the task is, what is worth trying.

Every problem with the front matter is one line that names the field.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,59}")
KNOB_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
KNOB_RE = re.compile(r"^\s*(uniform|loguniform|int|logint|choice)\s*\((.*)\)\s*$", re.S)
TARGET_SUFFIXES = (".py", ".toml", ".yaml", ".yml")
PROPOSERS = ("llm", "optuna")
GOALS = ("minimize", "maximize")
FIELDS = ("name", "target", "args", "editable", "harness", "metric", "goal", "budget", "experiments", "knobs",
          "repeats", "proposer", "lanes")
DEFAULT_BUDGET = 300.0
DEFAULT_EXPERIMENTS = 10


class ProgramError(ValueError):
    """PROGRAM.md cannot be used; the message is one line that names the field."""


@dataclass(frozen=True)
class Knob:
    """One tunable argument: `--name VALUE`, VALUE drawn from a distribution (Optuna's names)."""

    name: str
    kind: str  # uniform, loguniform, int, logint, choice
    low: float = 0.0
    high: float = 0.0
    choices: tuple[str | int | float, ...] = ()

    @property
    def spec(self) -> str:
        if self.kind == "choice":
            return f"choice({', '.join(str(c) for c in self.choices)})"
        low, high = (int(self.low), int(self.high)) if self.kind in ("int", "logint") else (self.low, self.high)
        return f"{self.kind}({low}, {high})"


@dataclass(frozen=True)
class Program:
    """A parsed PROGRAM.md, with its paths resolved against the program's folder."""

    path: Path
    name: str
    target: str
    editable: tuple[str, ...]
    harness: tuple[str, ...]
    metric: str
    goal: str
    text: str
    args: tuple[str, ...] = ()
    budget: float = DEFAULT_BUDGET
    experiments: int = DEFAULT_EXPERIMENTS
    knobs: tuple[Knob, ...] = ()
    repeats: int = 1
    proposer: str | None = None
    lanes: int = 1
    front: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def maximize(self) -> bool:
        return self.goal == "maximize"

    def better(self, a: float, b: float, margin: float = 0.0) -> bool:
        """True when metric `a` beats `b` by more than `margin` (a tie is not better)."""
        return a - b > margin if self.maximize else b - a > margin

    def harness_hashes(self, folder: Path | None = None) -> dict[str, str]:
        """sha256 of each harness file under `folder` (the program's own folder by default)."""
        root = folder or self.folder
        return {name: file_hash(root / name) for name in self.harness}

    def default_proposer(self) -> str:
        if self.proposer:
            return self.proposer
        return "optuna" if self.knobs and not self.editable else "llm"


def file_hash(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "missing"


def split_front_matter(text: str, where: str) -> tuple[str, str]:
    """(YAML, body) of a markdown file that starts with a `---` block."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        raise ProgramError(f"{where}: no front matter (a YAML block between two --- lines at the top)")
    for i in range(1, len(lines)):
        if lines[i].strip() in ("---", "..."):
            return "".join(lines[1:i]), "".join(lines[i + 1 :]).strip()
    raise ProgramError(f"{where}: the front matter has no closing --- line")


def load_program(path: str | Path) -> Program:
    """Read and check PROGRAM.md; ProgramError (one line naming the field) for anything wrong."""
    path = Path(path).expanduser()
    where = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProgramError(f"no such program: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProgramError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    front, body = split_front_matter(text, where)
    try:
        data = yaml.safe_load(front) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 2})" if mark is not None else ""
        raise ProgramError(f"{where}: the front matter is not YAML{line}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ProgramError(f"{where}: the front matter must be a mapping of fields (target:, metric:, ...)")
    return parse_front(data, body, path.resolve())


def _fail(where: str, name: str, problem: str) -> ProgramError:
    return ProgramError(f"{where}: field '{name}': {problem}")


def parse_front(data: dict[str, Any], body: str, path: Path) -> Program:
    where = path.name
    for key in data:
        if key not in FIELDS:
            close = difflib.get_close_matches(str(key), FIELDS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; the fields are: {', '.join(FIELDS)}"
            raise ProgramError(f"{where}: unknown field '{key}'{hint}")
    folder = path.parent

    def text_field(name: str, required: bool = True) -> str | None:
        value = data.get(name)
        if value is None:
            if required:
                raise _fail(where, name, "missing")
            return None
        if not isinstance(value, str) or not value.strip():
            raise _fail(where, name, f"must be a non-empty string, not {value!r}")
        return value.strip()

    def number(name: str, default: float, integer: bool = False, low: float = 0.0) -> Any:
        value = data.get(name, default)
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if integer:
            ok = ok and float(value).is_integer()
        if not ok or value <= low:
            kind = "an integer" if integer else "a number"
            raise _fail(where, name, f"must be {kind} above {low:g}, not {value!r}")
        return int(value) if integer else float(value)

    def files(name: str) -> tuple[str, ...]:
        value = data.get(name) or []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise _fail(where, name, "must be a file name or a list of file names")
        out = []
        for item in value:
            rel = relative_path(item)
            if rel is None:
                raise _fail(where, name, f"{item!r} must be a path inside the program's folder")
            if not (folder / rel).is_file():
                raise _fail(where, name, f"no file {rel} next to {where}")
            out.append(rel)
        return tuple(dict.fromkeys(out))

    name = text_field("name", required=False) or (folder.name if path.stem.upper() == "PROGRAM" else path.stem)
    if not NAME_RE.fullmatch(name):
        raise _fail(where, "name", f"{name!r} must be 1-60 letters, digits, '.', '_' or '-' (it names the runs)")
    target = text_field("target")
    assert target is not None
    target_rel = relative_path(target)
    if target_rel is None:
        raise _fail(where, "target", f"{target!r} must be a path inside the program's folder")
    if not target_rel.lower().endswith(TARGET_SUFFIXES):
        raise _fail(where, "target", f"{target_rel} is not a script (.py) or a recipe (.toml, .yaml)")
    if not (folder / target_rel).is_file():
        raise _fail(where, "target", f"no file {target_rel} next to {where}")
    editable, harness = files("editable"), files("harness")
    both = sorted(set(editable) & set(harness))
    if both:
        raise _fail(where, "harness", f"{both[0]} is also editable; a file is one or the other")
    if target_rel in harness:
        raise _fail(where, "harness", f"the target {target_rel} cannot be harness: the metric must come from a "
                    "file the experiment imports or runs, not from the whole script")
    metric = text_field("metric")
    assert metric is not None
    goal = text_field("goal")
    if goal not in GOALS:
        raise _fail(where, "goal", f"must be minimize or maximize, not {goal!r}")
    args = data.get("args") or []
    if isinstance(args, str):
        args = args.split()
    if not isinstance(args, list) or not all(isinstance(a, str | int | float) and not isinstance(a, bool)
                                             for a in args):
        raise _fail(where, "args", "must be a list of arguments")
    proposer = text_field("proposer", required=False)
    if proposer is not None and proposer not in PROPOSERS:
        raise _fail(where, "proposer", f"must be llm or optuna, not {proposer!r}")
    knobs_raw = data.get("knobs") or {}
    if not isinstance(knobs_raw, dict):
        raise _fail(where, "knobs", "must be a mapping of name: distribution, e.g. lr: loguniform(1e-5, 1e-3)")
    knobs = tuple(parse_knob(str(k), v, where) for k, v in knobs_raw.items())
    return Program(
        path=path, name=name, target=target_rel, editable=editable, harness=harness, metric=metric, goal=str(goal),
        text=body, args=tuple(str(a) for a in args), budget=number("budget", DEFAULT_BUDGET),
        experiments=number("experiments", DEFAULT_EXPERIMENTS, integer=True),
        knobs=knobs, repeats=number("repeats", 1, integer=True), proposer=proposer,
        lanes=number("lanes", 1, integer=True), front=dict(data),
    )


def relative_path(text: str) -> str | None:
    """A normalized relative POSIX path inside a folder, or None for absolute paths and paths that leave it."""
    pure = PurePosixPath(text.strip().replace("\\", "/"))
    if pure.is_absolute() or not pure.parts or ".." in pure.parts or pure.parts[0] == ".git":
        return None
    parts = [p for p in pure.parts if p != "."]
    return "/".join(parts) if parts else None


def parse_knob(name: str, spec: Any, where: str) -> Knob:
    field_name = f"knobs.{name}"
    if not KNOB_NAME_RE.fullmatch(name):
        raise _fail(where, field_name, "a knob's name is an argument name: letters, digits, '_' or '-'")
    match = KNOB_RE.match(str(spec)) if isinstance(spec, str) else None
    if match is None:
        raise _fail(where, field_name, f"{spec!r} is not uniform(a, b), loguniform(a, b), int(a, b), logint(a, b) "
                    "or choice(x, y, ...)")
    kind, inner = match.group(1), match.group(2)
    values = [_plain_value(v) for v in inner.split(",") if v.strip()]
    if not values:
        raise _fail(where, field_name, f"cannot read the values of {spec!r}")
    if kind == "choice":
        if not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in values):
            raise _fail(where, field_name, "choice() takes plain values")
        return Knob(name, kind, choices=tuple(values))
    if len(values) != 2 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise _fail(where, field_name, f"{kind}() takes two numbers, low and high")
    low, high = float(values[0]), float(values[1])
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise _fail(where, field_name, f"low must be below high in {spec!r}")
    if kind.startswith("log") and low <= 0:
        raise _fail(where, field_name, f"a log scale needs low above 0 in {spec!r}")
    if kind in ("int", "logint") and not (low.is_integer() and high.is_integer()):
        raise _fail(where, field_name, f"{kind}() takes integers in {spec!r}")
    return Knob(name, kind, low, high)


def _plain_value(text: str) -> str | int | float:
    """1e-4 is a number here (YAML 1.1 would read it as text), 'relu' and "relu" are text."""
    text = text.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip("'\"")


def knob_args(params: dict[str, Any]) -> list[str]:
    """Knob values as command-line arguments: --name VALUE."""
    out: list[str] = []
    for name, value in params.items():
        out += [f"--{name}", format_knob_value(value)]
    return out


def format_knob_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
