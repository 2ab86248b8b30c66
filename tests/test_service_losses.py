"""The SDK's other losses (cispo, dro, gspo, stable_reinforce with its stability info), the ranks tinker recipes
use, and greedy sampling of several samples (issue 23), checked against their definitions through the SDK."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("tinker")
import tinker  # noqa: E402
from tinker import types  # noqa: E402

from conftest import environment, kill_live_runs  # noqa: E402
from test_service import BASE, Server  # noqa: E402


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tinker.ServiceClient]:
    home = tmp_path_factory.mktemp("losses-home")
    server = Server(home, "--threads", "1").wait_ready()
    with environment(TINKER_API_KEY="tml-local-tests", TINKER_TELEMETRY="0"):
        sc = tinker.ServiceClient(base_url=server.url)
        yield sc
        sc.close("success").result(timeout=30)
    server.stop()
    kill_live_runs(home)


def rl_datum(ids: list[int], old: np.ndarray, advantages: np.ndarray, **extra: np.ndarray) -> types.Datum:
    return types.Datum(model_input=types.ModelInput.from_ints(ids[:-1]),
                       loss_fn_inputs={"target_tokens": np.array(ids[1:], dtype=np.int64),
                                       "logprobs": old.astype(np.float32),
                                       "advantages": advantages.astype(np.float32), **extra})


def current_logprobs(tc: tinker.TrainingClient, ids: list[int]) -> np.ndarray:
    datum = types.Datum(model_input=types.ModelInput.from_ints(ids[:-1]),
                        loss_fn_inputs={"target_tokens": np.array(ids[1:], dtype=np.int64)})
    return tc.forward([datum], "cross_entropy").result(timeout=60).loss_fn_outputs[0]["logprobs"].to_numpy()


@pytest.fixture(scope="module")
def setup(client: tinker.ServiceClient) -> tuple[tinker.TrainingClient, list[int], np.ndarray]:
    tc = client.create_lora_training_client(base_model=BASE, rank=4, seed=5).result()
    ids = tc.get_tokenizer().encode("losses against their definitions")
    return tc, ids, current_logprobs(tc, ids)


def test_cispo_dro_and_gspo_match_their_definitions(setup: tuple[tinker.TrainingClient, list[int], np.ndarray]
                                                    ) -> None:
    tc, ids, logp = setup
    n = len(logp)
    rng = np.random.default_rng(0)
    old = logp + rng.normal(0, 0.7, n).astype(np.float32)  # ratios on both sides of the clips
    adv = rng.normal(0, 1, n).astype(np.float32)
    ratio = np.exp(logp - old)

    def loss(name: str, config: dict[str, float] | None = None, **extra: np.ndarray) -> float:
        out = tc.forward([rl_datum(ids, old, adv, **extra)], name, config).result(timeout=60)  # type: ignore[arg-type]
        return float(out.metrics["loss:sum"])

    assert loss("cispo") == pytest.approx(float(np.sum(-np.clip(ratio, 0.0, 4.0) * adv * logp)), rel=1e-4)
    assert loss("cispo", {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1}) == \
        pytest.approx(float(np.sum(-np.clip(ratio, 0.9, 1.1) * adv * logp)), rel=1e-4)
    assert loss("dro") == pytest.approx(float(-np.sum(logp * adv - 0.025 * (logp - old) ** 2)), rel=1e-4)
    assert loss("dro", {"beta": 0.5}) == pytest.approx(float(-np.sum(logp * adv - 0.25 * (logp - old) ** 2)), rel=1e-4)
    mask = np.zeros(n, dtype=np.float32)
    mask[n // 2 :] = 1.0
    s = float(np.exp(np.mean((logp - old)[mask != 0])))
    expected = float(np.sum(-np.minimum(s * adv, np.clip(s, 0.8, 1.2) * adv)))
    assert loss("gspo", sequence_ratio_mask=mask) == pytest.approx(expected, rel=1e-4)
    # thresholds per token, as the SDK can send them
    low, high = np.full(n, 0.5, np.float32), np.full(n, 1.5, np.float32)
    assert loss("ppo", clip_low_threshold=low, clip_high_threshold=high) == \
        pytest.approx(float(np.sum(-np.minimum(ratio * adv, np.clip(ratio, 0.5, 1.5) * adv))), rel=1e-4)


def test_cispo_trains_a_clipped_token_where_ppo_does_not(client: tinker.ServiceClient) -> None:
    """Above the clip, PPO's objective is flat (no gradient) while CISPO's clipped ratio only bounds the weight
    of log p: the same step changes the adapter under CISPO and leaves it under PPO."""
    changed = {}
    for name in ("ppo", "cispo"):
        tc = client.create_lora_training_client(base_model=BASE, rank=4, seed=6).result()
        ids = tc.get_tokenizer().encode("clipped above")
        before = current_logprobs(tc, ids)
        datum = rl_datum(ids, before - 1.0, np.ones(len(before), np.float32))  # every ratio is e > 1.2
        config = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
        tc.forward_backward([datum], name, config)
        tc.optim_step(types.AdamParams(learning_rate=1e-2)).result(timeout=60)
        changed[name] = float(np.abs(current_logprobs(tc, ids) - before).max())
    assert changed["ppo"] < 1e-6 < 1e-3 < changed["cispo"], changed


def test_stable_reinforce_uses_the_recorded_sampler_logprobs(client: tinker.ServiceClient) -> None:
    tc = client.create_lora_training_client(base_model=BASE, rank=4, seed=7).result()
    tok = tc.get_tokenizer()
    prompt = tok.encode("say: ")
    sampler = tc.save_weights_and_get_sampling_client(record_stability_info=True).result()
    seq = sampler.sample(types.ModelInput.from_ints(prompt), 1,
                         types.SamplingParams(max_tokens=5, temperature=1.0, seed=3, stop=[])).result(
        timeout=60).sequences[0]
    assert seq.sequence_id and len(seq.tokens) == 5
    full = prompt + list(seq.tokens)
    n, p, t = len(full) - 1, len(prompt), len(seq.tokens)
    adv = np.zeros(n, np.float32)
    adv[p - 1 :] = 1.5
    datum = types.Datum(model_input=types.ModelInput.from_ints(full[:-1]),
                        loss_fn_inputs={"target_tokens": np.array(full[1:], dtype=np.int64), "advantages": adv})
    datum = datum.with_provenance(
        model_input=[types.PromptProvenanceSpan(sequence_id=seq.sequence_id, offset=0, length=p),
                     types.SampledProvenanceSpan(sequence_id=seq.sequence_id, offset=0, length=t - 1)],
        loss_fn_inputs=[types.PromptProvenanceSpan(sequence_id=seq.sequence_id, offset=1, length=p - 1),
                        types.SampledProvenanceSpan(sequence_id=seq.sequence_id, offset=0, length=t)])
    out = tc.forward([datum], "stable_reinforce").result(timeout=60)
    logp = out.loss_fn_outputs[0]["logprobs"].to_numpy()
    q = np.zeros(n, np.float32)
    q[p - 1 :] = seq.logprobs
    mask = (np.arange(n) >= p - 1).astype(np.float32)
    expected = float(np.sum(-mask * np.minimum(np.exp(logp - q), 2.0) * adv * logp))
    assert out.metrics["loss:sum"] == pytest.approx(expected, rel=1e-4)
    # a span that names a sequence nobody recorded is refused, and the client goes on
    forged = datum.with_provenance(
        model_input=[types.SampledProvenanceSpan(sequence_id="req-nope-0", offset=0, length=n)],
        loss_fn_inputs=[types.SampledProvenanceSpan(sequence_id="req-nope-0", offset=0, length=n)])
    with pytest.raises(Exception, match="no stability record of sequence 'req-nope-0'"):
        tc.forward_backward([forged], "stable_reinforce").result(timeout=30)
    assert tc.forward([datum], "stable_reinforce").result(timeout=60).metrics["loss:sum"] == \
        pytest.approx(expected, rel=1e-4)


def test_the_ranks_tinker_recipes_use(client: tinker.ServiceClient) -> None:
    tc = client.create_lora_training_client(base_model=BASE, rank=128, seed=0).result()  # distillation's default
    assert tc.get_info().lora_rank == 128
    with pytest.raises(Exception, match="rank 1024 is not supported"):
        client.create_lora_training_client(base_model=BASE, rank=1024).result(timeout=30)


def test_greedy_sampling_of_several_samples(client: tinker.ServiceClient) -> None:
    sampler = client.create_sampling_client(base_model=BASE).result()
    prompt = types.ModelInput.from_ints([5, 6, 7, 8])
    out = sampler.sample(prompt, 3, types.SamplingParams(max_tokens=6, temperature=0.0)).result(timeout=60)
    assert len(out.sequences) == 3 and len({tuple(s.tokens) for s in out.sequences}) == 1
    assert all(s.sequence_id for s in out.sequences) and len({s.sequence_id for s in out.sequences}) == 3
