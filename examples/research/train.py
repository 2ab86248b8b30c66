"""examples/research: the file the research loop's proposers change. A small MLP fits a noisy sine wave.

    python examples/research/train.py --steps 300
    twinkle-tui research examples/research/PROGRAM.md --proposer optuna
"""

from __future__ import annotations

import argparse

import torch
from evaluation import evaluate, make_data

from twinkle_trainer.runtime import TrainingRuntime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-4)  # the baseline's weakness: far too low for 300 steps
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rt = TrainingRuntime().start(model_id="sine-mlp", config=vars(args), total_steps=args.steps)
    torch.manual_seed(args.seed)
    model = torch.nn.Sequential(torch.nn.Linear(1, args.hidden), torch.nn.Tanh(), torch.nn.Linear(args.hidden, 1))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    x, y = make_data(seed=0)
    for step in range(1, args.steps + 1):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        rt.log_metrics(step=step, loss=loss.item())
        if step % 50 == 0 or step == args.steps:
            evaluate(model, rt, step)  # the harness logs the metric; intermediate values let optuna prune
        rt.step_boundary(step)
    rt.finish("completed")


if __name__ == "__main__":
    main()
