"""The rules judge the whole run while a check reads only what is new: an early divergence stays found at every
later check, a check of a long run looks at a bounded window, time spent paused or restarting is not stall time (and
the dashboard's monitor and doctor agree), and the RL rules read the names other trainers log. Runs are real run
directories (meta.json, metrics.jsonl, events.jsonl, output.log) read through the run store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from twinkle_trainer.protocol import process_start_time
from twinkle_tui.monitor import TrainingMonitor, run_rules, take_snapshot
from twinkle_tui.monitor.history import CONTEXT, WINDOW
from twinkle_tui.monitor.rules import Finding
from twinkle_tui.runs.store import RunStore


def make_run(home: Path, run_id: str, status: str = "running", total: int | None = None, log: str = "") -> Path:
    root = home / run_id
    root.mkdir(parents=True)
    alive = status == "running"
    pid = os.getpid() if alive else None  # a live process stands in for the run: the store sees it running
    meta = {"schema": 1, "run_id": run_id, "model_id": "m", "status": status, "pid": pid,
            "pid_start_time": process_start_time(pid) if pid else None, "start_time": time.time() - 3600,
            "progress": {"last_step": 0, "total_steps": total}, "launches": 1}
    (root / "meta.json").write_text(json.dumps(meta))
    (root / "output.log").write_text("===== twinkle launch 1 · python -u train.py =====\n" + log)
    return root


def append_metrics(root: Path, rows: list[dict[str, float]]) -> None:
    with open(root / "metrics.jsonl", "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def diverging_run(n: int, seed: int = 3) -> list[dict[str, float]]:
    """A loss that falls to 0.05 by step 40, when the learning rate jumps 1000x: it explodes to ~1000 and stays
    high, drifting down only as the learning rate decays."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(1, n + 1):
        if s < 42:
            loss = 5 * np.exp(-s / 8) + 0.05 * (1 + 0.1 * rng.standard_normal())
        else:
            loss = 1000 * np.exp(-(s - 42) / (n / 3)) * (1 + 0.3 * rng.standard_normal()) + 5
        lr = 2e-2 * (1000 if s >= 40 else 1) * (1 - s / n)
        rows.append({"step": s, "ts": 1000.0 + s, "loss": float(abs(loss)), "learning rate": lr,
                     "grad_norm": float(abs(1 + 0.2 * rng.standard_normal()) * (50 if s >= 42 else 1))})
    return rows


def test_a_divergence_at_step_40_is_seen_at_every_later_check(home: Path) -> None:
    """The issue's run: the learning rate jumped 1000x at step 40 and every check from step 3,825 to 6,326 said
    nothing, since the spike rules looked at the last steps only. Each check here reads only what was added."""
    rows = diverging_run(6326)
    root = make_run(home, "early", total=6326)
    view = RunStore(home).view("early")  # the monitor's own view: its history persists between checks
    seen_at = []
    for end in range(250, 6326 + 250, 250):
        append_metrics(root, rows[end - 250 : min(end, 6326)])
        view.refresh()
        snapshot = take_snapshot(view)
        found = {f.rule: f for f in run_rules(snapshot)}
        assert len(snapshot.metrics["loss"].steps) <= max(WINDOW, 250 + CONTEXT)  # a window, not the whole run
        assert "loss-spike" in found and found["loss-spike"].severity == "critical"
        assert 42 <= (found["loss-spike"].step or 0) <= 44
        assert "divergence" in found and (found["divergence"].step or 0) < 100
        seen_at.append(snapshot.last_step)
    assert seen_at[0] == 250 and 3825 < seen_at[15] < seen_at[-1] == 6326
    # doctor reads the ended run whole, once, and says the same
    doctor = subprocess.run([sys.executable, "-m", "twinkle_tui", "doctor", "early", "--llm", "none"],
                            capture_output=True, text=True, timeout=120)
    assert doctor.returncode == 1 and "[critical] loss-spike at step 4" in doctor.stdout
    assert "divergence at step" in doctor.stdout


def test_a_spike_among_many_points_added_between_two_checks_is_found(home: Path) -> None:
    """A fast run takes thousands of steps between two checks: all of them are scanned, not only the last ones."""
    rng = np.random.default_rng(5)
    root = make_run(home, "fast", total=20000)
    view = RunStore(home).view("fast")

    def rows(a: int, b: int, spike: int | None = None) -> list[dict[str, float]]:
        return [{"step": s, "ts": 1000.0 + s, "loss": float(1.0 + 0.02 * rng.standard_normal()
                                                            + (80.0 if s == spike else 0.0))} for s in range(a, b)]

    append_metrics(root, rows(1, 2000))
    view.refresh()
    assert "loss-spike" not in {f.rule for f in run_rules(take_snapshot(view))}
    append_metrics(root, rows(2000, 6000, spike=3000))  # 4,000 new points, the spike 3,000 from the end
    view.refresh()
    snapshot = take_snapshot(view)
    assert len(snapshot.metrics["loss"].steps) == 4000 + CONTEXT
    spike = next(f for f in run_rules(snapshot) if f.rule == "loss-spike")
    assert spike.step == 3000 and spike.severity == "critical"
    append_metrics(root, rows(6000, 6100))
    view.refresh()
    snapshot = take_snapshot(view)
    assert len(snapshot.metrics["loss"].steps) == WINDOW  # back to the bounded window
    assert any(f.rule == "loss-spike" and f.step == 3000 for f in run_rules(snapshot))  # remembered


def steady_steps(now: float, start_ago: float, n: int = 20) -> list[dict[str, float]]:
    return [{"step": s, "ts": now - start_ago + 0.1 * s, "loss": 1.0 - 0.001 * s} for s in range(1, n + 1)]


def write_events(root: Path, events: list[dict[str, object]]) -> None:
    with open(root / "events.jsonl", "a") as f:
        for ev in events:
            f.write(json.dumps(ev) + "\n")


def doctor(run_id: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "twinkle_tui", "doctor", run_id, "--llm", "none"],
                          capture_output=True, text=True, timeout=120)


def test_time_paused_is_not_stall_time_and_the_dashboard_and_doctor_agree(home: Path) -> None:
    """Issue 22: paused for five minutes, then resumed; the dashboard warned "no new step for 293s ... alive and
    not paused" while doctor said nothing. Now neither does, and both still see a real stall."""
    now = time.time()
    paused = make_run(home, "paused", total=1000)
    append_metrics(paused, steady_steps(now, 320))
    write_events(paused, [{"ts": now - 317, "kind": "pause", "step": 20},
                          {"ts": now - 5, "kind": "resume", "step": 20}])
    stalled = make_run(home, "stalled", total=1000)
    append_metrics(stalled, steady_steps(now, 320))  # the same run without the pause: a real stall
    relaunched = make_run(home, "relaunched", total=1000)
    append_metrics(relaunched, steady_steps(now, 320))
    write_events(relaunched, [{"ts": now - 340, "kind": "launch", "launch": 1},
                              {"ts": now - 60, "kind": "resume", "relaunch": True},
                              {"ts": now - 58, "kind": "launch", "launch": 2}])  # restarting: no step yet
    monitor = TrainingMonitor(home, clock=lambda: now)
    said = {r.snapshot.run_id: [f.rule for f in r.findings] for r in monitor.check(["paused", "stalled",
                                                                                   "relaunched"])}
    assert "stall" not in said.get("paused", []) and "stall" not in said.get("relaunched", [])
    assert "stall" in said["stalled"]
    assert doctor("paused").returncode == 0 and "no findings" in doctor("paused").stdout
    assert doctor("relaunched").returncode == 0
    out = doctor("stalled")
    assert out.returncode == 1 and "[warning] stall" in out.stdout and "running time" in out.stdout
    # once the resumed run stays silent long enough on its own, it is a stall again
    view = RunStore(home).view("paused")
    view.refresh()
    later = take_snapshot(view, now=now + 60)
    assert "stall" in {f.rule for f in run_rules(later)}


def rl_rows(n: int, **series: np.ndarray) -> list[dict[str, float]]:
    return [{"step": s + 1, "ts": 1000.0 + s, **{k: float(v[s]) for k, v in series.items()}} for s in range(n)]


def rules_of(home: Path, run_id: str) -> dict[str, Finding]:
    view = RunStore(home).view(run_id)
    view.refresh()
    return {f.rule: f for f in run_rules(take_snapshot(view))}


def test_entropy_collapse_is_judged_against_the_runs_own_early_level(home: Path) -> None:
    n = 200
    reward = np.linspace(0.2, 0.6, n)
    healthy = make_run(home, "llm-policy", status="completed")  # a policy LLM's token entropy of 0.45 is normal
    append_metrics(healthy, rl_rows(n, reward=reward, entropy=0.45 + 0.02 * np.sin(np.arange(n))))
    assert "entropy-collapse" not in rules_of(home, "llm-policy")
    collapsed = make_run(home, "collapsed", status="completed")
    entropy = np.where(np.arange(n) < 120, 0.45, 0.08)
    append_metrics(collapsed, rl_rows(n, reward=reward, entropy=entropy))
    found = rules_of(home, "collapsed")["entropy-collapse"]
    assert found.severity == "critical" and found.step == 121  # where the drop began
    sft = make_run(home, "sft-entropy", status="completed")  # SFT trainers log entropy too: not an RL signal
    append_metrics(sft, rl_rows(n, loss=np.linspace(2, 1, n), entropy=entropy))
    assert "entropy-collapse" not in rules_of(home, "sft-entropy")


def test_rl_without_a_learning_signal_is_read_under_other_trainers_names(home: Path) -> None:
    n = 60
    late = np.arange(n) >= 30
    cases = {
        "zero-var": ({"reward": np.where(late, 0.0, 0.4), "zero_var_ratio": np.where(late, 0.95, 0.2)}, "too hard"),
        "all-correct": ({"reward": np.where(late, 1.0, 0.5), "all_correct": np.where(late, 0.9, 0.1),
                         "all_wrong": np.where(late, 0.05, 0.1)}, "too easy"),
        "std-zero": ({"reward": np.where(late, 0.0, 0.3), "reward_std": np.where(late, 0.0, 0.4)}, "too hard"),
    }
    for run_id, (series, kind) in cases.items():
        append_metrics(make_run(home, run_id, status="completed"), rl_rows(n, **series))
        found = rules_of(home, run_id)["zero-spread"]
        assert found.category == kind, run_id


def test_metrics_printed_to_the_console_are_judged_when_there_is_no_metrics_file(home: Path) -> None:
    stuck = "".join(f"{{'loss': {2.0 - 0.01 * s}, 'grad_norm': inf, 'learning_rate': 1e-05, 'epoch': {s / 100}}}\n"
                    for s in range(1, 31))
    make_run(home, "stuck-scaler", status="completed", log=stuck)
    found = rules_of(home, "stuck-scaler")["nan"]
    assert found.severity == "critical" and "grad_norm is inf at every step" in found.summary
    once = stuck.replace("'grad_norm': inf", "'grad_norm': 1.5", 29).replace("'grad_norm': 1.5", "'grad_norm': inf", 1)
    make_run(home, "one-overflow", status="completed", log=once)
    assert [f.severity for f in rules_of(home, "one-overflow").values()] in ([], ["info"])
