"""GRPO of SmolLM2-135M-Instruct on built-in arithmetic word problems (math + format rewards), from Python.

    twinkle-tui --run examples/grpo_arith.py
    python examples/grpo_arith.py --reward_fns math,format,my_rewards.brevity   # add a plugin reward

Per step it logs reward mean/std, per-reward means, KL, entropy, completion length, truncation rate, the fraction
of groups with no reward spread, and the time split (generate / reward / train / sync).
"""

import sys
from pathlib import Path

from twinkle_trainer.train import main

CONFIG = Path(__file__).with_name("grpo_arith.yaml")

if __name__ == "__main__":
    sys.exit(main([str(CONFIG), *sys.argv[1:]]))
