"""What the embedded trainer's metrics count, a sentence each: the charts' tooltips and the help screen say it the
same way (and the README)."""

from __future__ import annotations

METRIC_NOTES: dict[str, str] = {
    "tokens/s": "tokens trained on per second of running time (a pause is not counted): every token of the step's "
                "examples, prompt and completion, never padding; for GRPO and GKD the prompts and the sampled "
                "completions; for a training-service client, per second the service computed its step. A 135M model "
                "on two CPU cores trains a few hundred a second.",
    "step time": "a training-service client's step: the seconds the service computed it (its forward_backward "
                 "passes and optim_step; the client's own time between requests is not counted)",
    "learning rate": "the scheduler's learning rate at this step",
    "grad_norm": "the L2 norm of the step's gradient, before clipping (max_grad_norm)",
    "loss": "the embedded trainer's SFT: mean cross-entropy over completion tokens; GRPO: the policy-gradient "
            "loss, near zero by construction (advantages are centred within each group: watch the reward); GKD: "
            "the divergence to the teacher (rl.gkd_beta)",
    "time/generate": "seconds of the step spent sampling completions",
    "time/reward": "seconds of the step spent scoring completions",
    "time/train": "seconds of the step spent in forward and backward passes",
    "time/teacher": "seconds of the step spent on the teacher's log-probabilities",
    "time/sync": "seconds of the step spent loading new weights into the sampler",
}


def metric_note(name: str) -> str | None:
    """What a metric counts, or None for one we did not write (a script's own)."""
    return METRIC_NOTES.get(name)
