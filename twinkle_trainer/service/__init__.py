"""A tinker-compatible local training service over the embedded trainer (LoRA only, rank <= 32).

Training loops written for the official `tinker` SDK (and tinker-cookbook recipes) run against it with
TINKER_BASE_URL=http://127.0.0.1:8000 and any TINKER_API_KEY that starts with "tml-". It lives on the trainer's
side (torch) and runs as its own process: `twinkle-tui serve` or `python -m twinkle_trainer.service`.
"""
