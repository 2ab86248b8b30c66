"""A toy training script that uses TrainingRuntime: a tiny MLP learns a noisy linear map on CPU in seconds.

    twinkle-tui --run examples/toy_regression.py -- --steps 300
    python examples/toy_regression.py --steps 50        # also works without twinkle-tui

It shows the whole protocol: metrics per step, checkpoints every --save-steps, exact resume (the batch of a step is
derived from the seed and the step, so a resumed run sees the same data), and a graceful stop on SIGTERM.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from twinkle_trainer.runtime import TrainingRuntime


def batch(seed: int, step: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    x = torch.randn(size, 8, generator=g)
    w = torch.arange(1, 9, dtype=torch.float32) / 8
    y = (x @ w).unsqueeze(1) + 0.1 * torch.randn(size, 1, generator=g)
    return x, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--save-steps", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sleep", type=float, default=0.0, help="seconds to wait per step (to watch it live)")
    ap.add_argument("--fail-at", type=int, default=0, help="raise an error at this step (to see a crash)")
    ap.add_argument("--diverge-at", type=int, default=0,
                    help="multiply the learning rate by 1000 from this step on (to see the monitor catch a divergence)")
    args = ap.parse_args()

    rt = TrainingRuntime().start(model_id="toy-mlp", config=vars(args), total_steps=args.steps)
    torch.manual_seed(args.seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))

    def save(path) -> None:
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, path / "state.pt")

    start = 0
    resume = rt.get_resume_info()
    if resume:  # falsy on a fresh run
        state = torch.load(resume.path / "state.pt")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start = resume.step
        rt.log(f"resumed from step {start} ({resume.path})")
    rt.register_graceful_shutdown(save_fn=save)

    for step in range(start + 1, args.steps + 1):
        t0 = time.perf_counter()
        if args.diverge_at and step == args.diverge_at:
            sched.base_lrs = [lr * 1000 for lr in sched.base_lrs]
        x, y = batch(args.seed, step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if args.fail_at == step:
            raise RuntimeError(f"injected failure at step {step}")
        if args.sleep:
            time.sleep(args.sleep)
        rt.log_metrics(
            step=step, loss=loss.item(), grad_norm=grad_norm.item(),
            **{"learning rate": sched.get_last_lr()[0], "step time": time.perf_counter() - t0},
        )
        if step % 50 == 0:
            print(f"step {step}: loss {loss.item():.4f}", flush=True)
        if step % args.save_steps == 0:
            rt.save_checkpoint(step)
        rt.step_boundary(step)
    rt.finish("completed")


if __name__ == "__main__":
    main()
