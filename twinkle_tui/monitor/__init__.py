"""The training monitor, without any UI: snapshots of runs, deterministic rules with evidence, an LLM review, and
the fix pipeline. It runs as a worker in the dashboard, as a loop in headless mode (--monitor), and as a one-shot
check (`twinkle-tui doctor RUN_ID`)."""

from twinkle_tui.monitor.fixes import MODES, FixPipeline, FixRefused, Proposal
from twinkle_tui.monitor.monitor import DEFAULT_INTERVAL, Report, TrainingMonitor
from twinkle_tui.monitor.review import Review, parse_review, review
from twinkle_tui.monitor.rules import Finding, run_rules
from twinkle_tui.monitor.snapshot import RunSnapshot, take_snapshot

__all__ = ["DEFAULT_INTERVAL", "MODES", "Finding", "FixPipeline", "FixRefused", "Proposal", "Report", "Review",
           "RunSnapshot", "TrainingMonitor", "parse_review", "review", "run_rules", "take_snapshot"]
