"""The dashboard's keys. Every binding has an id (listed on the help screen), so a key can be remapped by id through
Textual's keymap (App.set_keymap: `{"pause": "P"}` makes shift-p pause)."""

from __future__ import annotations

from textual.binding import Binding, BindingType

KEYS: list[BindingType] = [
    Binding("p", "command('pause_training')", "Pause", id="pause"),
    Binding("r", "command('resume_training')", "Resume", id="resume"),
    Binding("s", "command('stop_training')", "Stop", id="stop"),
    Binding("k", "command('kill_training')", "Kill", id="kill", show=False),
    Binding("n", "new_run", "New run", id="new_run"),
    Binding("slash", "focus_chat", "Chat", id="focus_chat", key_display="/"),
    Binding("m", "pick_metrics", "Metrics", id="pick_metrics"),
    Binding("z", "zoom(0.5)", "Zoom in", id="zoom_in"),
    Binding("x", "zoom(2.0)", "Zoom out", id="zoom_out"),
    Binding("left_square_bracket", "pan(-0.25)", "Pan left", id="pan_left", show=False, key_display="["),
    Binding("right_square_bracket", "pan(0.25)", "Pan right", id="pan_right", show=False, key_display="]"),
    Binding("0", "reset_zoom", "Reset zoom", id="reset_zoom"),
    Binding("e", "toggle_smoothing", "Smooth", id="toggle_smoothing"),
    Binding("l", "toggle_log_y", "Log-y", id="toggle_log_y"),
    Binding("d", "command('delete_run')", "Delete run", id="delete_run", show=False),
    Binding("a", "command('archive_run')", "Archive run", id="archive_run", show=False),
    Binding("u", "command('undo_fix')", "Undo fix", id="undo_fix", show=False),
    Binding("b", "toggle_panels", "Panels", id="toggle_panels", show=False),
    Binding("c", "copy_run_id", "Copy id", id="copy_run_id", show=False),
    Binding("question_mark", "help", "Help", id="help", key_display="?"),
    Binding("escape", "leave_chat", "Back", id="leave_chat", show=False),
    Binding("q", "quit", "Quit", id="quit"),
]
