"""The training monitor, without any UI: snapshots of runs, deterministic rules with evidence, an LLM review, and
one review-then-fix flow (flow.py) that the dashboard, headless `--monitor` and `twinkle-tui doctor` share, each
with its own port."""

from twinkle_tui.monitor.flow import FIX_MODES, MonitorPort, Notice, ReviewFlow, ReviewOutcome, finding_notice
from twinkle_tui.monitor.monitor import DEFAULT_INTERVAL, Report, TrainingMonitor
from twinkle_tui.monitor.review import Review, parse_review, review
from twinkle_tui.monitor.rules import Finding, run_rules
from twinkle_tui.monitor.snapshot import RunSnapshot, take_snapshot

__all__ = ["DEFAULT_INTERVAL", "FIX_MODES", "Finding", "MonitorPort", "Notice", "Report", "Review", "ReviewFlow",
           "ReviewOutcome", "RunSnapshot", "TrainingMonitor", "finding_notice", "parse_review", "review", "run_rules",
           "take_snapshot"]
