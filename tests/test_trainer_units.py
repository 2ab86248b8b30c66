"""Trainer building blocks without a training run: data formats, truncation, masking, rewards, advantages, schedule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import pytest

from twinkle_trainer.dataset import DataError, DataOrder, arith_records, load_records, read_jsonl, tokenize_sft
from twinkle_trainer.grpo import group_advantages
from twinkle_trainer.optim import lr_factor
from twinkle_trainer.rewards import RewardError, format_, match, math, resolve, score


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    from twinkle_trainer.models import make_tiny_model

    path = make_tiny_model(tmp_path_factory.mktemp("tiny") / "m")
    return AutoTokenizer.from_pretrained(str(path))


def test_jsonl_formats_are_normalized(tmp_path: Path) -> None:
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"prompt": "2+2?", "completion": "4"},
        {"prompt": "3+3?", "answer": 6},
    ]) + "\n")
    rows = read_jsonl(f)
    assert rows[1]["messages"][-1] == {"role": "assistant", "content": "4"}
    assert rows[2] == {"messages": [{"role": "user", "content": "3+3?"}], "answer": "6"}


@pytest.mark.parametrize(("line", "message"), [
    ('{"prompt": oops}', "d.jsonl:2: not valid JSON"),
    ('{"text": "x"}', "d.jsonl:2: unknown example format"),
    ('{"prompt": "x"}', "d.jsonl:2: a 'prompt' needs a 'completion'"),
    ('[1]', "d.jsonl:2: an example must be a JSON object"),
])
def test_malformed_lines_fail_with_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    f = tmp_path / "d.jsonl"
    f.write_text('{"prompt": "a", "completion": "b"}\n' + line + "\n")
    with pytest.raises(DataError, match=message):
        read_jsonl(f)


def test_builtin_sets_and_system_prompt() -> None:
    rows = load_records("builtin:self-cognition", None, system="Be brief.")
    assert len(rows) == 40 and rows[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    arith = arith_records(50, seed=1)
    assert arith == arith_records(50, seed=1) and all(r["answer"].lstrip("-").isdigit() for r in arith)
    with pytest.raises(DataError, match="unknown built-in dataset"):
        load_records("builtin:nope", None)


def test_loss_only_on_completion_tokens(tokenizer) -> None:
    rec = {"messages": [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "Twinkle."}]}
    ex = tokenize_sft(rec, tokenizer, 512, "left")
    completion = [t for t in ex.labels if t != -100]
    assert tokenizer.decode(completion).startswith("Twinkle.")
    n_prompt = ex.labels.index(completion[0])
    assert tokenizer.decode(ex.input_ids[:n_prompt]).endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("strategy", ["left", "right", "delete", "raise"])
def test_truncation_strategies(tokenizer, strategy: str) -> None:
    rec = {"messages": [{"role": "user", "content": "x" * 100}, {"role": "assistant", "content": "answer"}]}
    if strategy == "raise":
        with pytest.raises(DataError, match="more than max_length 40"):
            tokenize_sft(rec, tokenizer, 40, strategy)
        return
    ex = tokenize_sft(rec, tokenizer, 40, strategy)
    if strategy in ("delete", "right"):  # right cuts off the whole completion: nothing left to learn from
        assert ex is None
        if strategy == "right":
            long_answer = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "y" * 100}]}
            kept = tokenize_sft(long_answer, tokenizer, 40, "right")
            assert len(kept.input_ids) == 40 and set(tokenizer.decode([t for t in kept.labels if t != -100])) == {"y"}
        return
    assert len(ex.input_ids) == 40
    assert tokenizer.decode([t for t in ex.labels if t != -100]).startswith("answer")  # the prompt's start went


def test_data_order_is_a_deterministic_function_of_position() -> None:
    a, b = DataOrder(10, seed=3), DataOrder(10, seed=3)
    first = list(a.take(0, 25))
    assert first == list(b.take(0, 25)) and sorted(first[:10]) == list(range(10))
    assert list(DataOrder(10, seed=3).take(13, 5)) == first[13:18]  # resume mid-epoch sees the same data


def test_rewards() -> None:
    completions, answers = ["12", "The answer is 12.", "eleven", " 12 "], ["12"] * 4
    assert math(completions, answers) == [1.0, 1.0, 0.0, 1.0]
    assert match(completions, answers) == [1.0, 0.0, 0.0, 1.0]
    assert format_(completions, answers) == [1.0, 0.5, 0.0, 1.0]
    assert cast(object, resolve("json.dumps")) is json.dumps
    for bad, message in [("nosuch.fn", "cannot import 'nosuch'"), ("json.nothing", "has no function 'nothing'"),
                         ("plain", "use match, math, format or module.function")]:
        with pytest.raises(RewardError, match=message):
            resolve(bad)
    with pytest.raises(RewardError, match="returned 1 scores for 4"):
        score({"short": lambda c, a: [1.0]}, completions, answers)


def test_group_advantages() -> None:
    adv, flat = group_advantages([1, 0, 0, 0, 1, 1, 1, 1], group=4, kind="grpo", scale=False)
    assert adv[:4] == [0.75, -0.25, -0.25, -0.25] and adv[4:] == [0, 0, 0, 0] and flat == 0.5
    rloo, _ = group_advantages([1, 0, 0, 0], group=4, kind="rloo", scale=False)
    assert rloo[0] == pytest.approx(1.0) and rloo[1] == pytest.approx(-1 / 3)
    scaled, _ = group_advantages([1, 0], group=2, kind="grpo", scale=True)
    assert scaled[0] == pytest.approx(1.0, rel=1e-3)


def test_learning_rate_schedules() -> None:
    assert [lr_factor(s, "cosine", 2, 10, 0.0) for s in (0, 1)] == [0.5, 1.0]
    assert lr_factor(2, "cosine", 2, 10, 0.0) == 1.0 and lr_factor(10, "cosine", 2, 10, 0.0) == pytest.approx(0.0)
    assert lr_factor(6, "linear", 2, 10, 0.0) == pytest.approx(0.5)
    assert lr_factor(10, "cosine", 0, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(7, "constant", 0, 10, 0.0) == 1.0


def test_generalized_jsd_matches_its_definition() -> None:
    import torch

    from twinkle_trainer.gkd import generalized_jsd, reverse_kl

    torch.manual_seed(0)
    s, t = torch.randn(5, 11, requires_grad=True), torch.randn(5, 11)
    ls, lt = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    forward = (lt.exp() * (lt - ls)).sum(-1)
    reverse = (ls.exp() * (ls - lt)).sum(-1)
    torch.testing.assert_close(generalized_jsd(s, t, 0.0), forward)
    torch.testing.assert_close(generalized_jsd(s, t, 1.0), reverse)
    torch.testing.assert_close(reverse_kl(s, t), reverse.detach())
    # beta 0.5 is the Jensen-Shannon divergence: symmetric, at most log 2, zero for equal distributions
    js = generalized_jsd(s, t, 0.5)
    torch.testing.assert_close(js, generalized_jsd(t, s.detach(), 0.5).detach() + 0 * js, rtol=1e-5, atol=1e-6)
    assert (js >= 0).all() and (js <= torch.log(torch.tensor(2.0))).all()
    torch.testing.assert_close(generalized_jsd(t, t, 0.3), torch.zeros(5), atol=1e-6, rtol=0)
    # the mixture for beta in (0, 1) is beta * teacher + (1 - beta) * student
    beta = 0.3
    m = torch.log(beta * lt.exp() + (1 - beta) * ls.exp())
    expected = beta * (lt.exp() * (lt - m)).sum(-1) + (1 - beta) * (ls.exp() * (ls - m)).sum(-1)
    torch.testing.assert_close(generalized_jsd(s, t, beta), expected)
    generalized_jsd(s, t, beta).sum().backward()  # the gradient reaches the student only
    assert s.grad is not None and s.grad.abs().sum() > 0
    # temperature divides both
    torch.testing.assert_close(generalized_jsd(s, t, 1.0, temperature=2.0), generalized_jsd(s / 2, t / 2, 1.0))
