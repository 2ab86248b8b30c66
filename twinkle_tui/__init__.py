"""twinkle-tui: a terminal dashboard and embedded trainer for fine-tuning language models locally."""

__version__ = "0.1.0"
