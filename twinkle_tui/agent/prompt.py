"""The system prompt: who the agent is, what it can see now, the rules it works by, and the skills."""

from __future__ import annotations

from twinkle_tui.agent.skills import SkillLibrary
from twinkle_tui.commands.session import Session

ROLE = """You are the assistant inside twinkle-tui, a terminal dashboard for fine-tuning language models locally.
You answer questions about training runs and act on them with tools: list and inspect runs, read metrics and logs,
pause, resume, stop, start runs, change what the charts show. Rules:
- Look before you answer: use get_training_status, get_metrics or read_log rather than guessing, and name the
  evidence (steps, values) in a sentence or two.
- Act only when the user asks you to. Destructive tools (stop, kill, start, update_script, delete) ask the user
  in the dashboard first; if the user declines, say so and do not try again.
- If a tool returns ERROR, read the message: fix the arguments and call it again, or explain the problem.
- Keep answers short, in Markdown. Run ids go in backticks."""


def state_text(session: Session) -> str:
    runs = session.summaries()
    if not runs:
        return f"There are no runs yet under {session.store.home}."
    lines = [f"Runs (newest first, {len(runs)} in all):"]
    for r in runs[:8]:
        step = f"{r.last_step}/{r.total_steps}" if r.total_steps else f"step {r.last_step}"
        mark = " (selected in the dashboard)" if r.run_id == session.selected else ""
        lines.append(f"- {r.run_id}: {r.status.value}, {step}, model {r.model_id or '?'}{mark}")
    if session.selected is None:
        lines.append("No run is selected; tools without run_id use the newest live run, else the newest run.")
    return "\n".join(lines)


def system_prompt(session: Session, skills: SkillLibrary | None, query: str) -> str:
    parts = [ROLE, state_text(session)]
    if skills is not None and skills.skills:
        parts.append("Skills (read one in full with load_skill):\n" + skills.index())
        relevant = skills.relevant(query)
        if relevant:
            parts.append("Relevant skills:\n\n" + "\n".join(s.text for s in relevant))
    return "\n\n".join(parts)
