"""`python -m twinkle_tui.research PROGRAM.md ...`: the same as `twinkle-tui research` (the dashboard starts its
loops this way, detached, so they outlive it)."""

import sys

from twinkle_tui.research.cli import research_main

sys.exit(research_main(sys.argv[1:]))
