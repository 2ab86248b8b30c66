"""Commands over runs: list, status, select, compare, pause, resume, stop, kill, start, update, delete, archive."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from twinkle_trainer.protocol import RunKind, RunStatus, validate_run_id
from twinkle_tui.commands.compare import (
    MAX_DIFFS,
    config_diff,
    format_config_value,
    last_common_step,
    overrides,
    short_names,
    value_at,
)
from twinkle_tui.commands.registry import command, optional_arg, required_arg, slash
from twinkle_tui.commands.results import CommandError, Confirmation, Reply
from twinkle_tui.commands.session import Session
from twinkle_tui.process import scripts
from twinkle_tui.process.controller import CONFIG_SUFFIXES, launchable
from twinkle_tui.process.supervisor import stop_grace
from twinkle_tui.runs.progress import RunProgress, format_duration, format_rate, format_value
from twinkle_tui.runs.store import RunCache, RunSummary

RUN_ID = {"type": "string", "description": "run id or a unique prefix of it (default: the selected run)"}
MAX_LISTED = 30


def run_label(summary: RunSummary) -> str:
    name = summary.meta.display_name
    return f"{name} (`{summary.run_id}`)" if name else f"`{summary.run_id}`"


def run_line(summary: RunSummary, now: float) -> str:
    step = f"{summary.last_step}/{summary.total_steps}" if summary.total_steps else f"step {summary.last_step}"
    model = (summary.model_id or "?").split("/")[-1].removeprefix("builtin:")
    ran = summary.meta.running_seconds(now)  # pauses and the gaps between launches are not running time
    if ran is None:
        when = ""
    else:
        when = f"running for {format_duration(ran)}" if summary.status.is_active else f"ran {format_duration(ran)}"
    return " · ".join(p for p in (run_label(summary), f"**{summary.status.value}**", step, model, when) if p)


@command("list_training_runs", "List the training runs, newest first, with status, step, model and duration.", "read",
         {"status": {"type": "string", "description": "only runs with this status",
                     "enum": [s.value for s in RunStatus]},
          "limit": {"type": "integer", "minimum": 1, "maximum": 200}})
def list_training_runs(s: Session, a: dict[str, Any]) -> Reply:
    runs = s.summaries()
    if a.get("status"):
        runs = [r for r in runs if r.status.value == a["status"]]
    if not runs:
        return Reply(f"no runs under {s.store.home}" + (f" with status {a['status']}" if a.get("status") else ""))
    limit = int(a.get("limit") or MAX_LISTED)
    now = s.clock()
    lines = [f"- {run_line(r, now)}" + (" ← selected" if r.run_id == s.selected else "") for r in runs[:limit]]
    if len(runs) > limit:
        lines.append(f"- … and {len(runs) - limit} more")
    return Reply("\n".join(lines), data=[r.run_id for r in runs[:limit]])


def status_text(view: RunCache, now: float, selected: bool = False) -> str:
    p = RunProgress.of(view, now)
    meta = view.meta
    head = f"**{view.run_id}** · {view.status.value} · step {p.step}" + (f"/{p.total}" if p.total else "")
    if p.fraction is not None:
        head += f" ({p.fraction:.0%})"
    head += f" · {format_rate(p.rate)}"
    if p.eta is not None and view.status.is_active:
        head += f" · ETA {format_duration(p.eta)}"
    head += f" · {'elapsed' if view.status.is_active else 'ran'} {format_duration(p.elapsed)}"
    lines = [head]
    facts = []
    if meta.model_id:
        facts.append(f"model {meta.model_id}")
    if meta.launches > 1:
        facts.append(f"launch {meta.launches}")
    checkpoint = meta.last_checkpoint
    facts.append(f"last checkpoint step {checkpoint.step}" if checkpoint else "no checkpoint yet")
    if meta.fix_attempts:
        facts.append(f"{meta.fix_attempts} fix attempt(s)")
    lines.append(" · ".join(facts))
    latest = []
    for name in view.metrics.names()[:8]:
        last = view.metrics.series[name].last()
        if last is not None:
            latest.append(f"{name} {format_value(last[1])}")
    if latest:
        lines.append("latest: " + " · ".join(latest))
    ended = how_it_ended(view)
    if ended:
        lines.append(ended)
    if meta.error:
        lines.append(f"error: {meta.error}")
    if view.problem:
        lines.append(f"problem: {view.problem}")
    return "\n\n".join(lines)


def how_it_ended(view: RunCache) -> str | None:
    """Why a stopped or killed run is not running, from its events ("why did my run stop?"); None otherwise."""
    if view.status not in (RunStatus.STOPPED, RunStatus.KILLED):
        return None
    asked = next((ev.step for ev in reversed(view.events.events) if ev.kind == "stop"), None)
    checkpoint = view.meta.last_checkpoint
    if view.status is RunStatus.KILLED:
        text = (f"ended: a stop was asked at step {asked}, but the run did not end within its grace period and "
                f"was killed at step {view.last_step}" if asked is not None
                else f"ended: killed on request at step {view.last_step}, with no time to save")
        text += (f"; resume continues from its checkpoint at step {checkpoint.step}" if checkpoint
                 else "; it has no checkpoint, so resume starts it again")
        return text
    text = "ended: stopped on request" + (f" at step {asked}" if asked is not None else "")
    if checkpoint and checkpoint.step == view.last_step:
        text += f"; it finished step {checkpoint.step} and saved a checkpoint there"
    elif checkpoint:
        text += f"; its last checkpoint is step {checkpoint.step}"
    return text + " (resume continues it)" if checkpoint else text


@command("get_training_status", "Status of a run: state, step/total, rate, ETA, latest metric values, checkpoint, "
         "error.", "read", {"run_id": RUN_ID})
def get_training_status(s: Session, a: dict[str, Any]) -> Reply:
    run_id = s.target(a)
    view = s.view(run_id)
    with s.store.lock:
        return Reply(status_text(view, s.clock()), data={"run_id": run_id, "status": view.status.value,
                                                         "step": view.last_step, "total": view.total_steps})


@command("select_run", "Show a run in the dashboard (its charts, status and log).", "view",
         {"run_id": {"type": "string", "description": "run id or a unique prefix"}}, ("run_id",))
def select_run(s: Session, a: dict[str, Any]) -> Reply:
    s.select(a["run_id"])
    return Reply(f"selected `{s.selected}`", redraw={"list", "status", "charts", "log"})


def compare_text(s: Session, a_id: str, b_id: str) -> str:
    """Two runs side by side: their metrics at the last step both logged and at each one's final step, and the
    configuration keys whose values differ. Runs are named by the shortest form that tells them apart."""
    a, b = s.view(a_id), s.view(b_id)
    short = short_names([a_id, b_id])
    na, nb = (f"`{short[i]}`" + (" " + " ".join(overrides(v.meta)[:2]) if overrides(v.meta) else "")
              for i, v in ((a_id, a), (b_id, b)))
    out = []
    with s.store.lock:
        names = [n for n in a.metrics.names() if n in b.metrics.series][:8]
        if names:
            rows = [f"| metric | {na} | {nb} |", "|---|---|---|"]
            for name in names:
                sa, sb = a.metrics.series[name], b.metrics.series[name]
                step = last_common_step(sa, sb)
                if step is not None:
                    va, vb = value_at(sa, step), value_at(sb, step)
                    rows.append(f"| {name} @ step {step} | {_cell(va)} | {_cell(vb)} |")
                la, lb = sa.last(), sb.last()
                if la and lb and not (la[0] == lb[0] == step):
                    rows.append(f"| {name}, final | {_cell(la[1])} @ {la[0]} | {_cell(lb[1])} @ {lb[0]} |")
            out.append("\n".join(rows))
        else:
            out.append("the two runs log no metric in common")
    diff = config_diff(a.meta, b.meta)
    if diff:
        shown = [f"| {key} | {format_config_value(va)} | {format_config_value(vb)} |" for key, va, vb in diff[:MAX_DIFFS]]
        more = f"\n\n… and {len(diff) - MAX_DIFFS} more" if len(diff) > MAX_DIFFS else ""
        out.append(f"| config that differs | {na} | {nb} |\n|---|---|---|\n" + "\n".join(shown) + more)
    else:
        out.append("their configurations do not differ")
    return "\n\n".join(out)


def _cell(value: float | None) -> str:
    return format_value(value) if value is not None else "–"


@command("compare_runs", "Overlay another run on the charts of the selected run and compare their latest metric "
         "values; run_id 'none' turns the comparison off.", "view",
         {"run_id": {"type": "string", "description": "the run to compare with, or 'none'"}}, ("run_id",))
def compare_runs(s: Session, a: dict[str, Any]) -> Reply:
    if a["run_id"].lower() in ("none", "off", ""):
        s.settings.compare = None
        s.save_settings()
        return Reply("comparison off", redraw={"charts"})
    other = s.resolve_run(a["run_id"])
    base = s.target({})
    if other == base:
        raise CommandError(f"`{other}` is the selected run; compare it with another one")
    s.settings.compare = other
    s.save_settings()
    return Reply(f"comparing `{base}` (cyan) with `{other}` (orange)\n\n" + compare_text(s, base, other),
                 redraw={"charts"})


# ------------------------------------------------------------------ control
@command("pause_training", "Pause a run (SIGSTOP to all its processes: memory and GPU state are kept).", "control",
         {"run_id": RUN_ID})
def pause_training(s: Session, a: dict[str, Any]) -> Reply:
    run_id = s.target(a)
    s.controller.pause(run_id)
    return Reply(f"paused `{run_id}`", redraw={"list", "status"})


def _resume_confirm(s: Session, a: dict[str, Any]) -> Confirmation | None:
    """A paused run continues without a question; a run that ended is relaunched only after a yes: it spends
    compute, and for a stopped run it reverses what the user decided."""
    run_id = s.target(a)
    plan = s.controller.resume_plan(run_id)
    if not plan.relaunch:
        return None
    view = s.view(run_id)
    meta, status = view.meta, view.status
    if meta.kind == RunKind.SERVICE:
        url = (meta.service or {}).get("url") or "its address"
        return Confirmation(f"Start the training service {run_id} again?", f"It listens at {url} again; its "
                            "clients start new sessions.", "Start")
    ended = {RunStatus.STOPPED: "You stopped it", RunStatus.KILLED: "It was killed",
             RunStatus.FAILED: "It failed"}.get(status, f"It is {status.value}")
    if plan.from_step is None:
        return Confirmation(f"Restart {run_id} from step 0?", f"{ended}, and it has no checkpoint to resume from, "
                            "so a relaunch starts over from the beginning.", "Restart")
    return Confirmation(f"Relaunch {run_id} from step {plan.from_step}?", f"{ended} at step {view.last_step}. A "
                        f"relaunch continues from its checkpoint of step {plan.from_step} and trains again.",
                        "Relaunch")


@command("resume_training", "Resume a run: continue a paused one (SIGCONT), or relaunch a stopped, failed or "
         "killed one from its last checkpoint.", "control", {"run_id": RUN_ID}, confirm=_resume_confirm)
def resume_training(s: Session, a: dict[str, Any]) -> Reply:
    run_id = s.target(a)
    plan = s.controller.resume_plan(run_id)
    launched = s.controller.resume(run_id)
    s.services.remember(launched)
    if not plan.relaunch:
        return Reply(f"resumed `{run_id}`", redraw={"list", "status"})
    where = f"from the checkpoint of step {plan.from_step}" if plan.from_step is not None else "from step 0"
    return Reply(f"relaunched `{run_id}` {where}", redraw={"list", "status", "log"})


def _stop_confirm(s: Session, a: dict[str, Any]) -> Confirmation:
    run_id = s.target(a)
    view = s.view(run_id)
    if view.status not in (RunStatus.RUNNING, RunStatus.STARTING, RunStatus.PAUSED):
        hint = "; it can be killed (k)" if view.status == RunStatus.STOPPING else ""
        raise CommandError(f"cannot stop run {run_id!r}: it is {view.status.value}{hint}")
    return Confirmation(f"Stop run {run_id}?", _what_stop_does(s, view), "Stop")


def _what_stop_does(s: Session, view: RunCache) -> str:
    kind = view.meta.kind
    if kind == RunKind.SERVICE_CLIENT:
        return ("It is a client of the training service: the client process gets the stop signal and the service "
                "ends its session. What is saved is up to the client (its save_state); resume it from the client.")
    if kind == RunKind.SERVICE:
        return ("The training service closes its sessions (their runs end as stopped) and exits; start it again with "
                "twinkle-tui serve or the agent's start_server.")
    grace = stop_grace(view.meta, s.controller.grace)
    step = view.meta.progress.step_seconds
    why = (f" (3 of its {format_duration(step)} steps and its last save; --grace {s.controller.grace:g}s is the least)"
           if grace > s.controller.grace and step else f" (--grace {s.controller.grace:g}s)")
    done = f"the last one logged is step {view.last_step}" if view.last_step else "none is logged yet"
    return (f"It finishes the step it is on ({done}), saves a checkpoint and exits; it has up to "
            f"{format_duration(grace)} for that{why}, then it is killed. Resume it later with r (a relaunch from "
            "that checkpoint).")


@command("stop_training", "Stop a run gracefully: it finishes the current step, saves a checkpoint and exits "
         "(killed after the grace period if it does not).", "control", {"run_id": RUN_ID}, destructive=True,
         confirm=_stop_confirm)
def stop_training(s: Session, a: dict[str, Any]) -> Reply:
    run_id = s.target(a)
    s.controller.stop(run_id)
    what = "it saves a checkpoint and exits" if s.view(run_id).meta.saves_on_stop else "the stop signal is sent"
    return Reply(f"stopping `{run_id}`: {what}", redraw={"list", "status"})


def _kill_confirm(s: Session, a: dict[str, Any]) -> Confirmation:
    run_id = s.target(a)
    view = s.view(run_id)
    if not view.status.is_active:
        raise CommandError(f"cannot kill run {run_id!r}: it is {view.status.value}")
    checkpoint = view.meta.last_checkpoint
    since = f"since the checkpoint of step {checkpoint.step}" if checkpoint else "(it has no checkpoint)"
    return Confirmation(f"Kill run {run_id}?", f"SIGKILL to all its processes now: the steps {since} are lost.",
                        "Kill")


@command("kill_training", "Kill a run now (SIGKILL to all its processes; no checkpoint).", "control",
         {"run_id": RUN_ID}, destructive=True, confirm=_kill_confirm)
def kill_training(s: Session, a: dict[str, Any]) -> Reply:
    run_id = s.target(a)
    s.controller.kill(run_id)
    return Reply(f"killed `{run_id}`", redraw={"list", "status"})


# ------------------------------------------------------------------ starting runs
def _to_cli(overrides: dict[str, Any]) -> list[str]:
    out = []
    for key, value in overrides.items():
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        out += [f"--{key}", str(value)]
    return out


def _start_plan(s: Session, a: dict[str, Any]) -> tuple[Path, list[str], str | None]:
    """The path to launch, its arguments and run id, checked before anything starts: a recipe's configuration is
    resolved (unknown keys, bad values and missing data files are refused here, not after the model loads)."""
    args = [str(x) for x in a.get("args") or []] + _to_cli(a.get("overrides") or {})
    run_id = validate_run_id(a["run_id"]) if a.get("run_id") else None
    if a.get("script"):
        name = Path(a.get("path") or "agent_script.py").name
        name = name if name.endswith(".py") else name + ".py"
        scripts.check_compiles(a["script"], name)
        return unused_path(s.store.home / ".scripts" / name), args, run_id
    if not a.get("path"):
        raise CommandError("start_training needs a recipe or script path, or the script's content")
    path = Path(a["path"]).expanduser()
    if not path.is_absolute() and not path.exists():
        for folder in s.recipe_dirs:
            if (folder / path).exists():
                path = folder / path
                break
    if launchable(path, a["path"]) in CONFIG_SUFFIXES:
        from twinkle_trainer.config import CLI
        from twinkle_trainer.preflight import preflight

        preflight(CLI.from_args([str(path), *args]))
    return path, args, run_id


def unused_path(path: Path) -> Path:
    """path, or path-2, path-3 ... whichever does not exist yet: a written script never replaces another."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def _start_confirm(s: Session, a: dict[str, Any]) -> Confirmation:
    path, args, run_id = _start_plan(s, a)
    line = " ".join(shlex.quote(x) for x in [str(path), *args])
    detail = line + (f"\nas run {run_id}" if run_id else "")
    if a.get("script"):
        return Confirmation("Start a training run from this script?", f"It is written to {path} and run as "
                            f"{line}" + (f" (run {run_id})" if run_id else "") + ". Read it before you start it:",
                            "Start", code=a["script"])
    return Confirmation("Start a training run?", detail, "Start")


@command("start_training", "Start a training run from a recipe (.toml/.yaml for the embedded trainer, e.g. "
         "examples/sft_smollm2.toml) or a Python script, with config overrides; or from a full script's content.",
         "control",
         {"path": {"type": "string", "description": "recipe or script path (examples/ is searched too)"},
          "overrides": {"type": "object", "description": "config keys to override, e.g. {\"learning_rate\": 5e-4}",
                        "additionalProperties": {"type": ["string", "number", "boolean", "array"]}},
          "args": {"type": "array", "items": {"type": "string"}, "description": "extra command-line arguments"},
          "script": {"type": "string", "description": "the complete content of a Python training script"},
          "run_id": {"type": "string", "description": "a run id to use instead of a generated one"}},
         destructive=True, confirm=_start_confirm)
def start_training(s: Session, a: dict[str, Any]) -> Reply:
    path, args, run_id = _start_plan(s, a)
    if a.get("script"):  # written only now, after the yes, and never over another file
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "xb") as f:
            f.write(scripts.encode_source(a["script"], path.name))
    launched = s.controller.launch(path, args, run_id)
    s.services.remember(launched)
    return Reply(f"started `{launched.run_id}` from {path.name}", select=launched.run_id,
                 redraw={"list", "status", "charts", "log"})


# ------------------------------------------------------------------ managing runs
def _ended_confirm(verb: str, detail: str) -> Any:
    def confirm(s: Session, a: dict[str, Any]) -> Confirmation:
        run_id = s.target(a)
        status = s.view(run_id).status
        if status.is_active:
            raise CommandError(f"cannot {verb} run {run_id!r}: it is {status.value}; stop it first")
        return Confirmation(f"{verb.capitalize()} run {run_id}?", detail, verb.capitalize())

    return confirm


@command("delete_run", "Delete an ended run and all its files (metrics, log, checkpoints). Never a live run.",
         "control", {"run_id": RUN_ID}, destructive=True,
         confirm=_ended_confirm("delete", "Its directory (metrics, log, checkpoints) is removed for good."))
def delete_run(s: Session, a: dict[str, Any]) -> Reply:
    run_id = s.target(a)
    s.controller.delete(run_id)
    s.views.forget(run_id)
    _forget(s, run_id)
    return Reply(f"deleted `{run_id}`", redraw={"list", "status", "charts", "log"})


@command("archive_run", "Move an ended run out of the run list into $TWINKLE_HOME/.archive/.", "control",
         {"run_id": RUN_ID}, destructive=True,
         confirm=_ended_confirm("archive", "It moves to .archive/ under the runs directory and leaves the list."))
def archive_run(s: Session, a: dict[str, Any]) -> Reply:
    run_id = s.target(a)
    target = s.controller.archive(run_id)
    _forget(s, run_id)
    return Reply(f"archived `{run_id}` to {target}", redraw={"list", "status", "charts", "log"})


def _forget(s: Session, run_id: str) -> None:
    with s.store.lock:
        s.store.forget(run_id)
    if s.selected == run_id:
        s.selected = None
    if s.settings.compare == run_id:
        s.settings.compare = None


@command("rename_run", "Give a run a display name (its id stays).", "control",
         {"run_id": RUN_ID, "name": {"type": "string", "maxLength": 80}}, ("name",))
def rename_run(s: Session, a: dict[str, Any]) -> Reply:
    run_id = s.target(a)
    s.controller.rename(run_id, a["name"])
    return Reply(f"`{run_id}` is now called {a['name']!r}" if a["name"].strip() else f"`{run_id}`: name removed",
                 redraw={"list", "status"})


# ------------------------------------------------------------------ chat commands
def _new_args(args: list[str]) -> dict[str, Any]:
    if not args:
        raise CommandError("usage: /new RECIPE_OR_SCRIPT [-- args]")
    rest = [x for x in args[1:] if x != "--"]
    return {"path": args[0], "args": rest}


def _rename_args(args: list[str]) -> dict[str, Any]:
    if len(args) < 2:
        raise CommandError("usage: /rename RUN_ID new name")
    return {"run_id": args[0], "name": " ".join(args[1:])}


slash("runs", "list_training_runs", "/runs", "list runs")
slash("status", "get_training_status", "/status [RUN_ID]", "status of the selected (or named) run",
      optional_arg("run_id", "/status [RUN_ID]"))
slash("select", "select_run", "/select RUN_ID", "select a run (a unique prefix is enough; Tab completes)",
      required_arg("run_id", "/select RUN_ID"))
slash("compare", "compare_runs", "/compare RUN_ID", "overlay another run on the charts (/compare none: off)",
      required_arg("run_id", "/compare RUN_ID"))
slash("pause", "pause_training", "/pause", "pause the selected run (SIGSTOP)", optional_arg("run_id", "/pause"))
slash("resume", "resume_training", "/resume", "resume: SIGCONT, or relaunch from the last checkpoint",
      optional_arg("run_id", "/resume"))
slash("stop", "stop_training", "/stop", "stop gracefully: checkpoint, then exit (asks first)",
      optional_arg("run_id", "/stop"))
slash("kill", "kill_training", "/kill", "kill now, no checkpoint (asks first)", optional_arg("run_id", "/kill"))
slash("new", "start_training", "/new PATH [-- args]", "start a run from a recipe or script (asks first)", _new_args)
slash("delete", "delete_run", "/delete RUN_ID", "delete an ended run and its files (asks first)",
      required_arg("run_id", "/delete RUN_ID"))
slash("archive", "archive_run", "/archive RUN_ID", "move an ended run to .archive/ (asks first)",
      required_arg("run_id", "/archive RUN_ID"))
slash("rename", "rename_run", "/rename RUN_ID NAME", "give a run a display name", _rename_args)
