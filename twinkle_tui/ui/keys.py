"""The dashboard's keys. Every binding has an id (listed on the help screen); $TWINKLE_HOME/keymap.toml remaps keys
by id (`pause = "P"` makes shift-p pause), applied through Textual's keymap."""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path

from textual.binding import Binding, BindingType

KEYS: list[BindingType] = [
    Binding("p", "command('pause_training')", "Pause", id="pause"),
    Binding("r", "command('resume_training')", "Resume", id="resume"),
    Binding("s", "command('stop_training')", "Stop", id="stop"),
    Binding("k", "command('kill_training')", "Kill", id="kill", show=False),
    Binding("n", "new_run", "New run", id="new_run"),
    Binding("slash", "focus_chat", "Chat", id="focus_chat", key_display="/"),
    Binding("m", "pick_metrics", "Metrics", id="pick_metrics"),
    Binding("z", "view_command('zoom_metrics', {'factor': 0.5})", "Zoom in", id="zoom_in"),
    Binding("x", "view_command('zoom_metrics', {'factor': 2.0})", "Zoom out", id="zoom_out"),
    Binding("left_square_bracket", "view_command('pan_metrics', {'fraction': -0.25})", "Pan left", id="pan_left", show=False, key_display="["),
    Binding("right_square_bracket", "view_command('pan_metrics', {'fraction': 0.25})", "Pan right", id="pan_right", show=False, key_display="]"),
    Binding("0", "view_command('zoom_metrics', {'reset': True})", "Reset zoom", id="reset_zoom"),
    Binding("e", "view_command('set_chart_options', {'toggle': 'smoothing'})", "Smooth", id="toggle_smoothing"),
    Binding("l", "view_command('set_chart_options', {'toggle': 'log_y'})", "Log-y", id="toggle_log_y"),
    Binding("d", "command('delete_run')", "Delete run", id="delete_run", show=False),
    Binding("a", "command('archive_run')", "Archive run", id="archive_run", show=False),
    Binding("u", "command('undo_fix')", "Undo fix", id="undo_fix", show=False),
    Binding("b", "toggle_panels", "Panels", id="toggle_panels", show=False),
    Binding("c", "copy_run_id", "Copy id", id="copy_run_id", show=False),
    Binding("f", "filter_runs", "Filter runs", id="filter_runs", show=False),
    Binding("R", "open_research", "Research", id="open_research", show=False),
    Binding("question_mark", "help", "Help", id="help", key_display="?"),
    Binding("escape", "leave_chat", "Back", id="leave_chat", show=False),
    Binding("q", "quit", "Quit", id="quit"),
]

# Actions on the dashboard's runs and charts: off while a full screen (the research view) is over the dashboard.
DASHBOARD_ACTIONS = {"command", "view_command", "new_run", "focus_chat", "pick_metrics", "toggle_panels",
                     "copy_run_id", "filter_runs", "open_research", "leave_chat"}

KEYMAP_FILE = "keymap.toml"


def binding_ids() -> list[str]:
    return [b.id for b in KEYS if isinstance(b, Binding) and b.id]


def load_keymap(home: Path) -> tuple[dict[str, str], str | None]:
    """The user's keys from $TWINKLE_HOME/keymap.toml (`pause = "P"`, one binding id a line, or under a [keys]
    table), and one line naming what was wrong with it (None when nothing was). A bad entry is skipped, never
    fatal: the other keys still apply."""
    path = home / KEYMAP_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return {}, f"{KEYMAP_FILE} is not read: {str(exc).splitlines()[0]}"
    table = data.get("keys", data) if isinstance(data.get("keys"), dict) else data
    known = binding_ids()
    keymap: dict[str, str] = {}
    problems: list[str] = []
    for binding_id, key in table.items():
        if binding_id not in known:
            close = difflib.get_close_matches(binding_id, known, n=1)
            problems.append(f"unknown binding id {binding_id!r}" + (f" (did you mean {close[0]}?)" if close else ""))
        elif not isinstance(key, str) or not key.strip():
            problems.append(f"{binding_id} needs a key as a string, e.g. {binding_id} = \"P\"")
        else:
            keymap[binding_id] = key.strip()
    return keymap, f"{KEYMAP_FILE}: " + "; ".join(problems) if problems else None
