"""Data shipped with the trainer (loaded through trainer.datasets)."""
