"""Fast routes: the requests people make most, understood without an LLM when their intent and arguments are
unambiguous, answered in milliseconds through the same registered commands (and confirmations) as everything else.

A route matches the whole request against one narrow form: an imperative at its start ("pause toy-diverge", "zoom to
steps 100-500", "compare sft-a with sft-b") or a fixed question ("which run has the lowest loss?", "is anything
failing?"). A negation, a second clause, an unknown metric or a run name that fits two runs (or none) is not a
route: the request goes to the LLM. A route never guesses a destructive action.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twinkle_tui.agent.resolve import Found, resolve
from twinkle_tui.commands.chart_commands import match_metrics
from twinkle_tui.commands.results import CommandError
from twinkle_tui.commands.session import Session

NEGATION = re.compile(r"\b(?:not|don'?t|dont|never|no|without|instead|rather|unless|except)\b|n't\b")
CLAUSES = re.compile(r"[,;:]|\b(?:and then|then|but|also|after|before|if|when|because|so that)\b")
POLITE_HEAD = re.compile(r"^(?:please|pls|ok|okay|hey|now|can you|could you|would you|will you)\s+")
POLITE_TAIL = re.compile(r"\s+(?:please|now|for me|right now|thanks|thank you)$")
RUN_WORD = r"(?:the\s+)?(?:run\s+)?"


@dataclass(frozen=True)
class Step:
    """One registered command with its arguments."""

    command: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """What a route does: commands in order (each shown as it runs), and the route's name. A question's plan
    (`phrase`) gathers evidence; the model, if there is one, writes the answer from it."""

    route: str
    steps: tuple[Step, ...]
    phrase: bool = False


def normalize(text: str) -> str:
    out = " ".join(text.strip().lower().replace("’", "'").split())
    out = out.rstrip(".!? ")
    for _ in range(2):
        out = POLITE_HEAD.sub("", out)
        out = POLITE_TAIL.sub("", out)
    return out.strip()


def route(text: str, session: Session) -> Plan | None:
    """The plan for a request that a route understands for certain, else None (the LLM takes it)."""
    said = normalize(text)
    if not said or NEGATION.search(said):
        return None
    for pattern, build in ROUTES:
        m = pattern.fullmatch(said)
        if m is None:
            continue
        try:
            plan = build(session, m)
        except CommandError:
            return None  # an unknown metric, an empty run list: not certain, the LLM explains
        if plan is not None:
            return plan
    return None


def _run(session: Session, phrase: str | None) -> str | None:
    """The run a phrase names, only when exactly one fits."""
    found: Found = resolve(session, phrase or "")
    return found.run_id


def _one_run(command: str, route_name: str) -> Callable[[Session, re.Match[str]], Plan | None]:
    def build(session: Session, m: re.Match[str]) -> Plan | None:
        phrase = m.groupdict().get("run")
        if phrase and CLAUSES.search(phrase):
            return None
        run_id = _run(session, phrase)
        return Plan(route_name, (Step(command, {"run_id": run_id}),)) if run_id else None

    return build


def _compare(session: Session, m: re.Match[str]) -> Plan | None:
    a, b = m.group("a"), m.groupdict().get("b")
    if b is None:  # "compare the two runs", "compare them": only when there are exactly two
        runs = session.summaries()
        if a.strip() not in ("the two runs", "both runs", "them", "both", "the runs", "the 2 runs", "runs") \
                or len(runs) != 2:
            return None
        first, second = runs[1].run_id, runs[0].run_id
    else:
        first_found, second_found = _run(session, a), _run(session, b)
        if first_found is None or second_found is None or first_found == second_found:
            return None
        first, second = first_found, second_found
    return Plan("compare", (Step("select_run", {"run_id": first}), Step("compare_runs", {"run_id": second})))


def _compare_with(session: Session, m: re.Match[str]) -> Plan | None:
    other = _run(session, m.group("b"))
    if other is None or session.selected is None or other == session.selected:
        return None
    return Plan("compare", (Step("compare_runs", {"run_id": other}),))


def _metrics(session: Session, m: re.Match[str]) -> Plan | None:
    names = [n.strip() for n in re.split(r",|\band\b|&|\+", m.group("names")) if n.strip()]
    names = [re.sub(r"^(?:the|a)\s+", "", n).removesuffix(" chart").removesuffix(" curve").strip() for n in names]
    target = session.selected or session.newest_run()
    if not names or target is None:
        return None
    view = session.view(target)
    with session.store.lock:
        known = view.metrics.names()
    if not all(_is_metric(n, known) for n in names):
        return None
    return Plan("metrics", (Step("select_metrics", {"names": match_metrics(names, known)}),))


def _is_metric(name: str, known: list[str]) -> bool:
    try:
        return len(match_metrics([name], known)) == 1
    except CommandError:
        return False


def _zoom(session: Session, m: re.Match[str]) -> Plan | None:
    lo, hi = float(m.group("a")), float(m.group("b"))
    if hi <= lo:
        return None
    return Plan("zoom", (Step("zoom_metrics", {"start": lo, "end": hi}),))


def _rank(session: Session, m: re.Match[str]) -> Plan | None:
    order = "highest" if m.group("order") in ("highest", "largest", "biggest", "maximum", "max", "most") else "lowest"
    from twinkle_tui.commands.readings import all_metric_names

    name = m.group("metric").strip()
    if not _is_metric(name, all_metric_names(session)):
        return None
    return Plan("rank", (Step("rank_runs", {"metric": name, "order": order}),))


def _status(session: Session, m: re.Match[str]) -> Plan | None:
    phrase = m.groupdict().get("run")
    if phrase and CLAUSES.search(phrase):
        return None
    run_id = _run(session, phrase)
    if run_id is None:
        return None
    if m.re.pattern.startswith("how(?:"):  # "how is it going?": a question, phrased from its evidence
        return Plan("status", (Step("get_training_status", {"run_id": run_id}), Step("get_findings", {"run_id": run_id})),
                    phrase=True)
    return Plan("status", (Step("get_training_status", {"run_id": run_id}),))


def _findings(session: Session, m: re.Match[str]) -> Plan | None:
    phrase = m.groupdict().get("run")
    run_id = _run(session, phrase)
    if run_id is None:
        return None
    return Plan("findings", (Step("get_findings", {"run_id": run_id}), Step("get_training_status", {"run_id": run_id})),
                phrase=True)


def _metric_of(session: Session, m: re.Match[str]) -> Plan | None:
    run_id = _run(session, m.groupdict().get("run"))
    if run_id is None:
        return None
    view = session.view(run_id)
    with session.store.lock:
        known = view.metrics.names()
    name = m.group("metric").strip()
    if not _is_metric(name, known):
        return None
    return Plan("metric", (Step("get_metrics", {"run_id": run_id, "names": match_metrics([name], known)}),),
                phrase=True)


def _fixed(name: str, command: str, args: dict[str, Any] | None = None) -> Callable[[Session, re.Match[str]], Plan]:
    return lambda session, m: Plan(name, (Step(command, dict(args or {})),))


RUN = r"(?P<run>[\w.\-` ]+?)"
ROUTES: list[tuple[re.Pattern[str], Callable[[Session, re.Match[str]], Plan | None]]] = [
    (re.compile(r"(?:list|show)(?: me)?(?: all)?(?: the| my)? runs|runs|list runs|what runs are there"),
     _fixed("list", "list_training_runs")),
    (re.compile(r"(?:is|are) (?:anything|any run|any runs|something|a run|my runs?) (?:failing|failed|broken|"
                r"wrong|crashing|crashed)|did anything fail|any failures|what is failing"),
     _fixed("health", "check_runs")),
    (re.compile(r"which run has the (?P<order>lowest|highest|smallest|largest|best|minimum|maximum|min|max) "
                r"(?P<metric>[\w ./\-]+?)(?: (?:so far|now|at the moment))?"), _rank),
    (re.compile(r"(?:zoom|zoom in|zoom into|zoom to|zoom in to|zoom on|show)(?: to| on| into)?(?: the)? steps? "
                r"(?P<a>\d+(?:\.\d+)?) ?(?:-|–|to|through|until) ?(?P<b>\d+(?:\.\d+)?)"), _zoom),
    (re.compile(r"(?:reset(?: the)? zoom|zoom out fully|show all(?: the)? steps|reset the charts?|reset)"),
     _fixed("reset", "zoom_metrics", {"reset": True})),
    (re.compile(r"compare (?P<a>[\w.\-` ]+?) (?:with|and|to|vs|versus|against) (?P<b>[\w.\-` ]+)"), _compare),
    (re.compile(r"compare (?P<a>the two runs|both runs|them|both|the runs|the 2 runs)"), _compare),
    (re.compile(r"compare(?: it)? with (?P<b>[\w.\-` ]+)"), _compare_with),
    (re.compile(r"(?:show|chart|plot|graph|display)(?: me)?(?: the)? (?P<names>[\w ./,&+\-]+?)(?: charts?| curves?)?"),
     _metrics),
    (re.compile(r"(?:pause|suspend) " + RUN_WORD + RUN), _one_run("pause_training", "pause")),
    (re.compile(r"(?:resume|unpause|continue) " + RUN_WORD + RUN), _one_run("resume_training", "resume")),
    (re.compile(r"stop " + RUN_WORD + RUN), _one_run("stop_training", "stop")),
    (re.compile(r"kill " + RUN_WORD + RUN), _one_run("kill_training", "kill")),
    (re.compile(r"(?:delete|remove) " + RUN_WORD + RUN), _one_run("delete_run", "delete")),
    (re.compile(r"archive " + RUN_WORD + RUN), _one_run("archive_run", "archive")),
    (re.compile(r"(?:select|open|switch to|go to|focus on|show me|show) " + RUN_WORD + RUN),
     _one_run("select_run", "select")),
    (re.compile(r"(?:status|show status|show the status|what is the status|what's the status|status of)"
                r"(?: of)?(?: " + RUN_WORD + RUN + r")?"), _status),
    (re.compile(r"how many steps(?: (?:has|did|have) " + RUN_WORD + RUN + r")?(?: (?:run|done|taken|completed|"
                r"trained|made|finished))?(?: so far)?"), _status),
    (re.compile(r"how(?: is|'s| are) " + RUN_WORD + RUN + r" (?:going|doing|coming along|progressing)"), _status),
    (re.compile(r"(?:when|why|where|at what step) (?:did|does|has|is) " + RUN_WORD + RUN + r" (?:diverge|diverging|"
                r"blow up|blew up|explode|fail|failed|crash|crashed|go wrong|break|die|nan|go nan|stall|stop)"
                r"(?: first)?"), _findings),
    (re.compile(r"what (?:went|is going|goes) wrong(?: with| in) " + RUN_WORD + RUN), _findings),
    (re.compile(r"(?:what(?: is|'s)|how(?: is|'s)|show me|tell me) (?:the )?(?P<metric>[\w ./\-]+?) (?:of|for|in) "
                + RUN_WORD + RUN), _metric_of),
]
