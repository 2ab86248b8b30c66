"""Read commands the agent answers "why", "when" and "which" questions with: the monitor's findings of a run (from
its events.jsonl, source "monitor"), which run has the lowest or highest value of a metric, and what is failing
across all runs. Facts come from here; a model only phrases them."""

from __future__ import annotations

from typing import Any

import numpy as np

from twinkle_trainer.protocol import RunStatus
from twinkle_tui.commands.chart_commands import match_metrics
from twinkle_tui.commands.registry import command, optional_arg, slash
from twinkle_tui.commands.results import CommandError, Reply
from twinkle_tui.commands.session import Session
from twinkle_tui.runs.progress import format_value

RUN_ID = {"type": "string", "maxLength": 128, "description": "run id or a unique prefix of it (default: the selected run)"}
MAX_FINDINGS_SHOWN = 12


def findings_of(s: Session, run_id: str) -> list[dict[str, Any]]:
    """The monitor's findings of a run, oldest first: rule, severity, step, message, evidence."""
    view = s.view(run_id)
    with s.store.lock:
        events = list(view.events.events)
    out = []
    for ev in events:
        if ev.data.get("source") != "monitor" or not ev.data.get("rule"):
            continue
        evidence = ev.data.get("evidence")
        out.append({"rule": str(ev.data["rule"]), "severity": str(ev.data.get("severity") or ev.kind),
                    "step": ev.step, "message": str(ev.data.get("message") or ""),
                    "evidence": [str(e) for e in evidence[:4]] if isinstance(evidence, list) else [], "ts": ev.ts})
    return out


def finding_line(f: dict[str, Any]) -> str:
    where = f" at step {f['step']}" if f.get("step") is not None else ""
    return f"[{f['severity']}] {f['rule']}{where}: {f['message']}"


@command("get_findings", "The health monitor's findings for a run (NaN loss, divergence, spikes, stalls, crashes), "
         "each with its step and evidence: what went wrong and when.", "read", {"run_id": RUN_ID})
def get_findings(s: Session, a: dict[str, Any]) -> Reply:
    run_id = s.target(a)
    found = findings_of(s, run_id)
    view = s.view(run_id)
    error = view.meta.error
    if not found:
        text = f"`{run_id}`: no findings from the monitor ({view.status.value}, step {view.last_step})"
        return Reply(text + (f"; error: {error}" if error else ""), data={"run_id": run_id, "findings": []})
    first = found[0]
    head = (f"`{run_id}`: {len(found)} finding(s); first {finding_line(first)}")
    lines = [head, ""] + [f"- {finding_line(f)}" + (f" ({'; '.join(f['evidence'][:2])})" if f["evidence"] else "")
                          for f in found[-MAX_FINDINGS_SHOWN:]]
    if error:
        lines.append(f"\nerror: {error}")
    return Reply("\n".join(lines), data={"run_id": run_id, "findings": found, "status": view.status.value})


def last_finite(s: Session, run_id: str, metric: str) -> tuple[int, float] | None:
    view = s.view(run_id)
    with s.store.lock:
        series = view.metrics.series.get(metric)
        if series is None:
            return None
        steps, values = series.snapshot()
    finite = np.isfinite(values)
    if not finite.any():
        return None
    i = int(np.flatnonzero(finite)[-1])
    return int(steps[i]), float(values[i])


def all_metric_names(s: Session) -> list[str]:
    names: dict[str, None] = {}
    for r in s.summaries():
        view = s.view(r.run_id)
        with s.store.lock:
            names.update(dict.fromkeys(view.metrics.names()))
    return list(names)


@command("rank_runs", "Which run has the lowest (or highest) latest value of a metric, across all runs.", "read",
         {"metric": {"type": "string", "maxLength": 128}, "order": {"type": "string", "enum": ["lowest", "highest"]}},
         ("metric",))
def rank_runs(s: Session, a: dict[str, Any]) -> Reply:
    metric = match_metrics([a["metric"]], all_metric_names(s))[0]
    rows = []
    for r in s.summaries():
        last = last_finite(s, r.run_id, metric)
        if last is not None:
            rows.append((last[1], r.run_id, last[0]))
    if not rows:
        raise CommandError(f"no run has a finite value of {metric!r}")
    highest = a.get("order") == "highest"
    rows.sort(key=lambda row: row[0], reverse=highest)
    value, best, step = rows[0]
    head = f"`{best}` has the {'highest' if highest else 'lowest'} {metric}: {format_value(value)} at step {step}"
    others = [f"- `{rid}`: {format_value(v)} at step {st}" for v, rid, st in rows[1:8]]
    return Reply(head + (f" (of {len(rows)} runs)\n\n" + "\n".join(others) if others else ""),
                 data={"run_id": best, "metric": metric, "value": value, "step": step,
                       "ranking": [{"run_id": rid, "value": v, "step": st} for v, rid, st in rows]})


@command("check_runs", "Whether anything is failing: failed runs (with their error) and the monitor's warnings on "
         "the others.", "read")
def check_runs(s: Session, a: dict[str, Any]) -> Reply:
    failed, warned = [], []
    for r in s.summaries():
        if r.status == RunStatus.FAILED:
            failed.append(f"`{r.run_id}` failed at step {r.last_step}" + (f": {r.meta.error}" if r.meta.error else ""))
            continue
        serious = [f for f in findings_of(s, r.run_id) if f["severity"] in ("warning", "critical")]
        if serious:
            warned.append(f"`{r.run_id}` ({r.status.value}): {finding_line(serious[0])}"
                          + (f" (+{len(serious) - 1} more)" if len(serious) > 1 else ""))
    if not failed and not warned:
        return Reply(f"nothing is failing: {len(s.summaries())} run(s), no failure and no monitor warning",
                     data={"failed": [], "warned": []})
    head = f"{len(failed)} failed run(s), {len(warned)} run(s) with warnings"
    return Reply(head + "\n\n" + "\n".join(f"- {x}" for x in failed + warned),
                 data={"failed": failed, "warned": warned})


slash("findings", "get_findings", "/findings [RUN_ID]", "the monitor's findings of the run, with steps",
      optional_arg("run_id", "/findings [RUN_ID]"))
