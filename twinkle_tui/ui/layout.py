"""What the dashboard's layout depends on: the stylesheet classes for a terminal size, and what the chart area says
before a run has any metric."""

from __future__ import annotations

from rich.markup import escape

from twinkle_tui.commands.compare import config_diff, format_config_value, run_label, short_names
from twinkle_tui.runs.store import RunCache


def layout_classes(width: int, height: int, panels: bool | None = None) -> dict[str, bool]:
    """The stylesheet classes for a terminal size: side panels narrow as the width falls, the chat folds away below
    120 columns and the run list below 100, so the charts keep most of the width; the log gets fewer rows on short
    terminals. `panels` overrides the folding (the b key, or / for the chat)."""
    hidden = width < 100 if panels is None else not panels
    return {
        "medium": 120 <= width < 150,
        "narrow": width < 120,
        "chat-folded": panels is None and 100 <= width < 120,  # the run list stays; / brings the chat back
        "panels-hidden": hidden,
        "short": height < 32,
    }



def waiting_text(view: RunCache) -> str:
    """Before the first metric line: what the run is doing (its latest log line), or what it is (a service)."""
    if not view.status.is_active:
        return f"this run logged no metrics ({view.status.value})"
    last = next((line for line in reversed(view.log.lines) if line.strip()
                 and not line.startswith("===== twinkle launch")), "")
    text = "waiting for the first step…"
    service = view.meta.service
    if isinstance(service, dict) and service.get("url"):  # a training service: it serves, it takes no steps
        sessions = service.get("sessions")
        text = (f"tinker training service at {escape(str(service['url']))}"
                + (f" · {sessions} open session{'s' if sessions != 1 else ''}" if isinstance(sessions, int) else "")
                + "\nits training clients are runs of their own in the run list")
    return text + (f"\n\n[dim]{escape(last[-300:])}[/]" if last else "")


def compare_legend(view: RunCache, compare: RunCache) -> str:
    """The compare panel above the charts: each run in its colour, by the shortest name that tells them apart and
    what its launch overrode; then the configuration keys whose values differ."""
    short = short_names([view.run_id, compare.run_id])
    names = [f"[{colour}]━━[/] {escape(run_label(short[v.run_id], v.meta))}"
             for colour, v in (("cyan", view), ("orange1", compare))]
    diff = config_diff(view.meta, compare.meta)
    if not diff:
        return "   ".join(names) + "\n[dim]same configuration[/]"
    shown = " · ".join(f"{escape(key)} {escape(format_config_value(a))} [dim]vs[/] {escape(format_config_value(b))}"
                       for key, a, b in diff[:6])
    return "   ".join(names) + f"\n[dim]differs:[/] {shown}" + (f" [dim]+{len(diff) - 6} more[/]" if len(diff) > 6 else "")
