"""Which run a request means, from the words a person uses: an id or a unique part of it, a display name, the
words of an id in another order ("the toy diverge run"), or "it" / "the run" (the selected run, else the only live
one, else the only one). Never a guess: two candidates, or none, is an answer of its own."""

from __future__ import annotations

import re
from dataclasses import dataclass

from twinkle_tui.commands.session import Session
from twinkle_tui.runs.store import RunSummary

WORD = re.compile(r"[a-z0-9]+")
THE_RUN = re.compile(r"^(?:it|this|that|the run|this run|that run|my run|the current run|the selected run|"
                     r"the training|my training|the job|current run|selected run)$")
FILLER = {"the", "run", "my", "a", "job", "training"}


@dataclass(frozen=True)
class Found:
    """The run a phrase names (run_id), or why none: `ambiguous` lists the candidates, `missing` says nothing
    matched."""

    run_id: str | None
    ambiguous: tuple[str, ...] = ()
    implicit: bool = False  # "it", "the run": the selected or only run, not a name the user typed

    @property
    def ok(self) -> bool:
        return self.run_id is not None


def tokens(text: str) -> list[str]:
    return WORD.findall(text.lower())


def find_run(phrase: str, runs: list[RunSummary], selected: str | None) -> Found:
    """The run a phrase names, among runs (newest first)."""
    text = " ".join(tokens(phrase.replace("`", "")))
    raw = phrase.strip().strip("`'\"").lower()
    if not runs:
        return Found(None)
    if THE_RUN.match(text) or not text:
        return _implicit(runs, selected)
    ids = {r.run_id.lower(): r.run_id for r in runs}
    if raw in ids:
        return Found(ids[raw])
    names = {(r.meta.display_name or "").lower(): r.run_id for r in runs if r.meta.display_name}
    if raw in names:
        return Found(names[raw])
    for matches in ([r.run_id for r in runs if r.run_id.lower().startswith(raw)],
                    [r.run_id for r in runs if raw in r.run_id.lower()],
                    [r.run_id for r in runs if raw in (r.meta.display_name or "").lower()]):
        if len(matches) == 1:
            return Found(matches[0])
        if len(matches) > 1:
            return Found(None, tuple(matches))
    wanted = [w for w in tokens(phrase) if w not in FILLER]
    if not wanted:
        return _implicit(runs, selected)
    by_words = [r.run_id for r in runs
                if all(any(t.startswith(w) for t in tokens(r.run_id) + tokens(r.meta.display_name or ""))
                       for w in wanted)]
    if len(by_words) == 1:
        return Found(by_words[0])
    return Found(None, tuple(by_words))


def _implicit(runs: list[RunSummary], selected: str | None) -> Found:
    if selected is not None and any(r.run_id == selected for r in runs):
        return Found(selected, implicit=True)
    live = [r.run_id for r in runs if r.status.is_active]
    if len(live) == 1:
        return Found(live[0], implicit=True)
    if len(runs) == 1:
        return Found(runs[0].run_id, implicit=True)
    return Found(None, tuple(live or [r.run_id for r in runs]), implicit=True)


def resolve(session: Session, phrase: str) -> Found:
    return find_run(phrase, session.summaries(), session.selected)
