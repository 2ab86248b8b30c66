"""What a research leaves on disk under $TWINKLE_HOME/research/<name>/, and how it is read back.

    program.md         the program as the loop runs it (a copy)
    state.json         the loop's state (written atomically by the loop only)
    control.json       what front ends ask of the loop: pause, stop (written atomically, under a lock)
    reviews/eNNN.json  a proposal waiting for the user's yes (--review), and the answer beside it
    results.tsv        autoresearch's columns: commit, metric, memory_gb, status, description
    experiments.jsonl  the full record: one JSON object per experiment (and per refused proposal)
    workspace/         the git workspace (see workspace.py); checkouts/eNNN/ the files an experiment runs
    loop.log           what a loop started from the dashboard printed
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from twinkle_trainer.protocol import append_jsonl, read_regular_file, twinkle_home, write_json_atomic

RESULTS_HEADER = "commit\tmetric\tmemory_gb\tstatus\tdescription\n"
RESULT_STATUSES = ("keep", "discard", "crash", "timeout")
MAX_RECORD_BYTES = 64 * 1024 * 1024


@dataclass
class Experiment:
    """One experiment (or one refused proposal), as experiments.jsonl keeps it."""

    id: str  # e007; a refused proposal is e007-r1 (an attempt, not a run)
    number: int
    status: str  # keep, discard, crash, timeout; refused, stopped
    description: str
    proposer: str
    lane: int = 0
    run_id: str | None = None
    commit: str | None = None
    parent: str | None = None
    metric: float | None = None
    best_before: float | None = None
    started: float | None = None
    ended: float | None = None
    duration: float | None = None
    steps: int = 0
    peak_memory_gb: float = 0.0
    added: int = 0
    removed: int = 0
    files: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    node: str | None = None
    baseline: bool = False

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if self.metric is not None and not math.isfinite(self.metric):
            out["metric"] = None
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Experiment:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @property
    def is_run(self) -> bool:
        return self.status in RESULT_STATUSES

    def tsv_row(self) -> str:
        commit = (self.commit or "0000000")[:7]
        metric = self.metric if self.metric is not None and self.status in ("keep", "discard") else 0.0
        description = " ".join((self.description or "").split()).replace("\t", " ")
        return f"{commit}\t{metric:.6f}\t{self.peak_memory_gb:.1f}\t{self.status}\t{description}\n"


def research_root(home: str | os.PathLike[str] | None = None) -> Path:
    return twinkle_home(home) / "research"


class ResearchDir:
    """The files of one research."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def of(cls, name: str, home: str | os.PathLike[str] | None = None) -> ResearchDir:
        return cls(research_root(home) / name)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    @property
    def control_path(self) -> Path:
        return self.root / "control.json"

    @property
    def results(self) -> Path:
        return self.root / "results.tsv"

    @property
    def experiments(self) -> Path:
        return self.root / "experiments.jsonl"

    @property
    def program(self) -> Path:
        return self.root / "program.md"

    @property
    def workspace(self) -> Path:
        return self.root / "workspace"

    @property
    def reviews(self) -> Path:
        return self.root / "reviews"

    @property
    def log(self) -> Path:
        return self.root / "loop.log"

    def checkout(self, experiment: str) -> Path:
        return self.root / "checkouts" / experiment

    @property
    def exists(self) -> bool:
        return self.state_path.is_file()

    # ------------------------------------------------------------------ state (the loop writes it)
    def read_state(self) -> dict[str, Any]:
        return _read_json(self.state_path)

    def write_state(self, state: dict[str, Any]) -> None:
        write_json_atomic(self.state_path, state)

    # ------------------------------------------------------------------ control (front ends write it)
    def read_control(self) -> dict[str, Any]:
        return _read_json(self.control_path)

    def update_control(self, **changes: Any) -> dict[str, Any]:
        """Change control.json under a lock (two front ends and the loop may write it)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with _flock(self.root / ".control.lock"):
            control = self.read_control()
            control.update(changes)
            write_json_atomic(self.control_path, control)
            return control

    def request_review(self, experiment: str, proposal: dict[str, Any]) -> None:
        write_json_atomic(self.reviews / f"{experiment}.json", proposal)

    def decide(self, experiment: str, approve: bool) -> None:
        """Answer a proposal waiting for review (the loop reads it on its next look)."""
        if not (self.reviews / f"{experiment}.json").exists():
            raise LookupError(f"no proposal {experiment} is waiting for review")
        write_json_atomic(self.reviews / f"{experiment}.answer.json", {"approve": approve})

    def decision(self, experiment: str) -> bool | None:
        answer = _read_json(self.reviews / f"{experiment}.answer.json")
        return bool(answer["approve"]) if "approve" in answer else None

    def pending_reviews(self) -> list[dict[str, Any]]:
        """Proposals waiting for an answer, oldest first."""
        if not self.reviews.is_dir():
            return []
        out = []
        for path in sorted(self.reviews.glob("e*.json")):
            if path.name.endswith(".answer.json") or (path.with_suffix("").with_suffix(".answer.json")).exists():
                continue
            data = _read_json(path)
            if data:
                out.append(data)
        return out

    def close_review(self, experiment: str) -> None:
        for suffix in (".json", ".answer.json"):
            with contextlib.suppress(FileNotFoundError):
                (self.reviews / f"{experiment}{suffix}").unlink()

    # ------------------------------------------------------------------ records
    def record(self, experiment: Experiment) -> None:
        """Append the experiment to experiments.jsonl (and to results.tsv when it was a run)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if experiment.is_run:
            if not self.results.exists():
                self.results.write_text(RESULTS_HEADER)
            with open(self.results, "a", encoding="utf-8") as f:
                f.write(experiment.tsv_row())
        append_jsonl(self.experiments, experiment.to_json())

    def read_experiments(self) -> list[Experiment]:
        try:
            raw = read_regular_file(self.experiments, MAX_RECORD_BYTES)
        except FileNotFoundError:
            return []
        out = []
        for line in raw.splitlines():
            try:
                data = json.loads(line)
                out.append(Experiment.from_json(data))
            except (ValueError, TypeError):
                continue  # a torn last line (the loop was killed mid-write) or a foreign line
        return out


def list_researches(home: str | os.PathLike[str] | None = None) -> list[ResearchDir]:
    root = research_root(home)
    if not root.is_dir():
        return []
    found = [ResearchDir(p) for p in root.iterdir() if p.is_dir() and (p / "state.json").is_file()]
    return sorted(found, key=lambda d: d.state_path.stat().st_mtime, reverse=True)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(read_regular_file(path, MAX_RECORD_BYTES))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def hold_loop_lock(research: ResearchDir) -> int | None:
    """Take the research's loop lock for the life of this process: the fd, or None if another loop holds it."""
    research.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(research.root / ".loop.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
