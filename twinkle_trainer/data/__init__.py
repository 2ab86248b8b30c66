"""Data shipped with the trainer (loaded through twinkle_trainer.datasets)."""
