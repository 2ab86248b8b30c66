from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO = Path(__file__).resolve().parents[1]
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers share the machine's cores: each worker, and every training or service process it starts, gets
    # one torch thread (torch and the trainer treat OMP_NUM_THREADS as their ceiling). Two processes with a thread
    # per core each on two cores made a 0.1 s step take over 3 s.
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, "1")
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


async def settle(pilot: object, condition: Callable[[], object], timeout: float = 30.0, what: str = "",
                 interval: float = 0.05) -> None:
    """wait_for under Textual's Pilot: let the app run until condition() holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await pilot.pause(interval)  # type: ignore[attr-defined]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh $TWINKLE_HOME for the test and for every process it starts; runs still alive at the end are
    killed, so a failing test never leaves training running."""
    h = tmp_path / "twinkle-home"
    h.mkdir()
    monkeypatch.setenv("TWINKLE_HOME", str(h))
    monkeypatch.delenv("TWINKLE_RUN_ID", raising=False)
    monkeypatch.delenv("TWINKLE_SUPERVISED", raising=False)
    # children import the package from the checkout even without an installed copy
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    yield h
    kill_live_runs(h)


def quiescent(app: object) -> bool:
    """The dashboard has nothing left to read and nothing waiting to be drawn (tests wait for this, not sleep)."""
    return not app.reader.running and app.scheduler.idle  # type: ignore[attr-defined]


def process_alive(ctl: object, run_id: str) -> bool:
    """The run's recorded process is alive and is the same process (pid and start time)."""
    from twinkle_trainer.protocol import process_is

    meta = ctl.meta(run_id)  # type: ignore[attr-defined]
    return process_is(meta.pid, meta.pid_start_time)


def patch_meta(paths: object, **fields: object) -> None:
    """Set fields of a run's meta.json (as another writer would), under the protocol's lock."""
    from twinkle_trainer.protocol import RunMeta, RunStatus, update_meta

    def change(meta: RunMeta) -> None:
        for key, value in fields.items():
            setattr(meta, key, RunStatus(value) if key == "status" else value)

    update_meta(paths, change)  # type: ignore[arg-type]


def kill_live_runs(home: Path) -> None:
    from twinkle_trainer.protocol import process_is, read_regular_file

    for meta_path in home.glob("*/meta.json"):
        try:
            meta = json.loads(read_regular_file(meta_path, 1 << 20))
        except (OSError, ValueError, RecursionError):
            continue  # a test's deliberately broken meta.json (a FIFO, deep nesting, not JSON)
        if not isinstance(meta, dict):
            continue
        for pid_key, start_key in (("pid", "pid_start_time"), ("supervisor_pid", "supervisor_start_time")):
            pid = meta.get(pid_key)
            if pid == os.getpid():  # a TrainingRuntime used in-process records the test process itself
                continue
            if pid and process_is(pid, meta.get(start_key)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL) if pid_key == "pid" and meta.get("pgid") == pid else os.kill(pid, signal.SIGKILL)


PYTHON = sys.executable


@pytest.fixture(autouse=True)
def restore_process_hooks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A TrainingRuntime started inside the test process takes its SIGTERM handler, excepthook, sys.exit and an
    atexit hook; give them back after every test, so a CI timeout can still stop pytest."""
    from twinkle_trainer.runtime import TrainingRuntime

    started: list[TrainingRuntime] = []
    install = TrainingRuntime._install_hooks

    def tracking(self: TrainingRuntime) -> None:
        started.append(self)
        install(self)

    monkeypatch.setattr(TrainingRuntime, "_install_hooks", tracking)
    sigterm, excepthook, exit_ = signal.getsignal(signal.SIGTERM), sys.excepthook, sys.exit
    yield
    for rt in started:
        rt.close()
    signal.signal(signal.SIGTERM, sigterm)
    sys.excepthook, sys.exit = excepthook, exit_


def write_sigterm_ignoring_script(path: Path, steps: int = 100_000) -> Path:
    """A training script that ignores SIGTERM, for testing the grace period and the second Ctrl-C."""
    path.write_text(
        "import signal, time\nfrom trainer.runtime import TrainingRuntime\n"
        "rt = TrainingRuntime().start(model_id='x')\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"for i in range({steps}):\n    rt.log_metrics(step=i, v=1.0); time.sleep(0.01)\n"
    )
    return path


ScreenT = TypeVar("ScreenT")


def screen_of(app: Any, kind: type[ScreenT]) -> ScreenT:
    """The app's screen as the kind a test expects (the test fails, naming both, when another is shown)."""
    screen = app.screen
    assert isinstance(screen, kind), f"{type(screen).__name__} is shown, not {kind.__name__}"
    return screen


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """These environment variables in this process (for an SDK, git, ...), restored afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
