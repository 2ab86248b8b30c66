"""Commands that read: a run's log, the machine (GPUs, CPU, memory), and the list of commands."""

from __future__ import annotations

import os
import re
from typing import Any

import psutil

from twinkle_tui.commands.registry import command, slash, slash_help
from twinkle_tui.commands.results import CommandError, Reply
from twinkle_tui.commands.session import Session
from twinkle_tui.gpu import GpuProbe, format_bytes
from twinkle_tui.runs.tail import read_last_lines

LOG_LINES_MAX = 200


@command("read_log", "The end of a run's output log, or the lines that match a search (a regular expression).",
         "read",
         {"run_id": {"type": "string"}, "lines": {"type": "integer", "minimum": 1, "maximum": LOG_LINES_MAX},
          "search": {"type": "string", "description": "only lines matching this (case-insensitive regex)"}})
def read_log(s: Session, a: dict[str, Any]) -> Reply:
    run_id = s.target(a)
    paths = s.controller.existing(run_id)
    count = int(a.get("lines") or 40)
    lines = read_last_lines(paths.log, 5000 if a.get("search") else count)
    if a.get("search"):
        try:
            pattern = re.compile(a["search"], re.IGNORECASE)
        except re.error as exc:
            raise CommandError(f"bad search pattern {a['search']!r}: {exc}") from None
        lines = [line for line in lines if pattern.search(line)][-count:]
        if not lines:
            return Reply(f"no line of `{run_id}`'s log matches {a['search']!r}")
    if not lines:
        return Reply(f"`{run_id}` has written no log yet")
    return Reply(f"`{run_id}` output.log, {len(lines)} line(s):\n\n```\n" + "\n".join(lines) + "\n```", data=lines)


@command("get_cluster_info", "This machine's GPUs (utilisation, memory, which runs use them), CPU and memory, and "
         "the selected run's processes.", "read")
def get_cluster_info(s: Session, a: dict[str, Any]) -> Reply:
    sample = s.resources()
    gpus = sample.gpus if sample else GpuProbe().snapshot()
    lines = []
    if gpus.error:
        lines.append(f"GPUs: {gpus.error}")
    for g in gpus.gpus:
        lines.append(f"GPU{g.index} {g.name}: {g.utilization or 0:.0f}% util, {format_bytes(g.memory_used)} of "
                     f"{format_bytes(g.memory_total)}" + (f", {len(g.pids)} process(es)" if g.pids else ""))
    mem = psutil.virtual_memory()
    lines.append(f"CPU: {os.cpu_count()} cores, {psutil.cpu_percent(interval=None):.0f}% busy · memory "
                 f"{format_bytes(mem.total - mem.available)} used of {format_bytes(mem.total)}")
    if sample and sample.usage:
        u = sample.usage
        lines.append(f"selected run: CPU {u.cpu_percent:.0f}%, RAM {format_bytes(u.rss)}, {u.processes} process(es)"
                     + (f", GPU memory {format_bytes(u.gpu_memory)}" if u.gpu_memory else ""))
    return Reply("\n\n".join(lines), data={"gpus": [g.__dict__ for g in gpus.gpus], "gpu_error": gpus.error})


@command("help", "The chat commands and what they do.", "read", agent=False)
def help_(s: Session, a: dict[str, Any]) -> Reply:
    rows = "\n".join(f"- `{usage}` {text}" for usage, text in slash_help())
    return Reply(rows + "\n\nAnything else goes to the LLM agent (when one is connected).")


slash("log", "read_log", "/log [PATTERN]", "the end of the run's log, or its lines that match PATTERN",
      lambda args: {"search": " ".join(args)} if args else {})
slash("gpu", "get_cluster_info", "/gpu", "GPUs, CPU, memory and the run's processes")
slash("help", "help", "/help", "list commands and keys")
