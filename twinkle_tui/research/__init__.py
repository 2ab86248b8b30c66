"""Auto-research: experiments on a training program that keep what improves its metric.

A program (PROGRAM.md: front matter + text for the agent), a loop whose state lives on disk under
$TWINKLE_HOME/research/<name>/ (a git workspace, results.tsv, experiments.jsonl), proposers (the agent's LLM
endpoint, or Optuna over declared knobs), and lanes that run experiments as ordinary runs through the process
controller, or as Ray tasks on a cluster. No Textual here: the research view in ui/ renders what this package writes.
"""

from twinkle_tui.research.program import Knob, Program, ProgramError, load_program
from twinkle_tui.research.records import Experiment, ResearchDir, list_researches

__all__ = ["Experiment", "Knob", "Program", "ProgramError", "ResearchDir", "list_researches", "load_program"]
