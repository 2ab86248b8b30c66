"""Training configuration: every source, precedence end to end, casting, strictness, invariants, provenance."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from twinkle_trainer.config import CLI, Args, ConfigError, ConfigResolver
from twinkle_trainer.config.resolve import FIELDS

from conftest import EXAMPLES, REPO


def resolve(argv: Sequence[str] = (), env: dict[str, str] | None = None, cwd: Path | None = None, **kw: Any) -> Args:
    return CLI.from_args(list(argv), env=env or {}, cwd=cwd, **kw)


def test_defaults_are_valid_and_every_field_has_help() -> None:
    args = resolve()
    assert args.optimizer.learning_rate == 1e-4 and args.lora.lora_r == 8
    assert all(info.help for info in FIELDS.values())
    assert set(args.provenance.values()) == {"default"}


def test_precedence_chain_end_to_end(tmp_path: Path) -> None:
    """default < .env < environment < config file < command line, each visible in provenance."""
    (tmp_path / ".env").write_text(
        "# comment line\n"
        "export TWINKLE_LORA_R=4\n"
        "TWINKLE_MAX_STEPS='11'\n"
        'TWINKLE_SEED="5"  # inline comment\n'
        "TWINKLE_LEARNING_RATE=1e-5\n"
    )
    (tmp_path / "c.yaml").write_text("max_steps: 22\nseed: 6\n")
    env = {"TWINKLE_SEED": "7", "TWINKLE_LEARNING_RATE": "2e-5", "TWINKLE_MAX_STEPS": "33"}
    args = resolve(["--config", "c.yaml", "--max-steps", "44"], env=env, cwd=tmp_path)
    assert args.lora.lora_r == 4 and args.provenance["lora.lora_r"] == ".env TWINKLE_LORA_R"
    assert args.optimizer.learning_rate == 2e-5 and args.provenance["optimizer.learning_rate"] == "environment TWINKLE_LEARNING_RATE"
    assert args.training.seed == 6 and args.provenance["training.seed"] == "c.yaml"
    assert args.training.max_steps == 44 and args.provenance["training.max_steps"] == "command line"
    assert args.provenance["lora.lora_alpha"] == "default"


def test_bare_environment_names_only_from_the_documented_list() -> None:
    args = resolve(env={"MAX_STEPS": "9", "PORT": "1", "HOST": "x", "MODE": "ray", "PATH": "/bin"})
    assert args.training.max_steps == 9
    assert args.server.port == 8000 and args.server.host == "127.0.0.1" and args.infra.mode == "local"


def test_unknown_twinkle_variables_and_app_variables_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    env = {"TWINKLE_LLM_MODEL": "qwen", "TWINKLE_HOME": "/x", "TWINKLE_RUN_ID": "r", "TWINKLE_NOPE": "1"}
    with caplog.at_level("DEBUG", logger="twinkle_trainer.config.resolve"):
        resolve(env=env)
    assert "ignoring TWINKLE_NOPE" in caplog.text and "LLM" not in caplog.text


def test_keys_are_case_insensitive_and_dashes_equal_underscores() -> None:
    args = resolve(["--Learning-Rate", "3e-4", "--MICRO_batch-size=2", "--lora.lora-r", "12"])
    assert (args.optimizer.learning_rate, args.training.micro_batch_size, args.lora.lora_r) == (3e-4, 2, 12)


def test_aliases() -> None:
    args = resolve(["--lr", "5e-4", "--num_gpus", "2", "--max_new_tokens", "99", "--use_megatron", "true"],
                   validate=False)
    assert args.optimizer.learning_rate == 5e-4 and args.infra.nproc_per_node == 2
    assert args.sampling.max_tokens == 99 and args.model.strategy == "native_fsdp"
    assert resolve(["--use-megatron", "false"]).model.strategy == "auto"
    with pytest.raises(ConfigError, match="strategy native_fsdp is not supported yet"):
        resolve(["--use_megatron", "true"])  # accepted by the schema, refused rather than silently ignored


@pytest.mark.parametrize(
    ("argv", "expected"),
    [(["--gradient-checkpointing"], True), (["--gradient_checkpointing", "false"], False),
     (["--no-shuffle"], False), (["--no_shuffle"], False), (["--shuffle", "off"], False),
     (["--streaming", "--max-steps", "3"], True)],
)
def test_boolean_forms(argv: list[str], expected: bool) -> None:
    args = resolve(argv, validate=False)
    field = "shuffle" if "shuffle" in argv[0] else ("streaming" if "streaming" in argv[0] else "gradient_checkpointing")
    group = "model" if field == "gradient_checkpointing" else "dataset"
    assert getattr(getattr(args, group), field) is expected


def test_lists_from_comma_lists_and_file_lists(tmp_path: Path) -> None:
    args = resolve(["--lora_target_modules", "q_proj, v_proj", "--betas", "0.8,0.95", "--model-gpus", "0,1"],
                   validate=False)
    assert args.lora.lora_target_modules == ["q_proj", "v_proj"]
    assert args.optimizer.betas == [0.8, 0.95] and args.infra.model_gpus == [0, 1]
    (tmp_path / "c.toml").write_text('[rl]\nreward_fns = ["match", "mymod.reward"]\n')
    assert resolve(["--config", str(tmp_path / "c.toml")]).rl.reward_fns == ["match", "mymod.reward"]


def test_nested_and_flat_yaml_and_toml(tmp_path: Path) -> None:
    (tmp_path / "nested.yaml").write_text("training:\n  max_steps: 7\noptimizer:\n  lr: 0.01\n")
    (tmp_path / "flat.yml").write_text("max_steps: 8\nlearning_rate: 0.02\n")
    (tmp_path / "nested.toml").write_text("[training]\nmax_steps = 9\n[optimizer]\nlearning_rate = 0.03\n")
    (tmp_path / "flat.toml").write_text("max_steps = 10\nlr = 0.04\n[server]\nconfig = 'srv.yaml'\n")
    for name, steps, lr in (("nested.yaml", 7, 0.01), ("flat.yml", 8, 0.02), ("nested.toml", 9, 0.03), ("flat.toml", 10, 0.04)):
        args = resolve([str(tmp_path / name)], validate=False)
        assert (args.training.max_steps, args.optimizer.learning_rate) == (steps, lr), name
    assert resolve([str(tmp_path / "flat.toml")], validate=False).server.config == "srv.yaml"
    with pytest.raises(ConfigError, match="server.config is not used by the trainer"):
        resolve([str(tmp_path / "flat.toml")])


def test_unknown_keys_name_the_source_and_suggest(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("lerning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"^unknown key 'lerning_rate' in config.yaml; did you mean learning_rate\?$"):
        resolve(["--config", str(tmp_path / "config.yaml")])
    with pytest.raises(ConfigError, match="unknown key 'lora_rank' in command line; did you mean lora_r"):
        resolve(["--lora_rank", "4"])
    (tmp_path / "g.toml").write_text("[training]\nmax_step = 3\n")
    with pytest.raises(ConfigError, match="unknown key 'training.max_step' in g.toml; did you mean training.max_steps"):
        resolve([str(tmp_path / "g.toml")])


def test_values_that_cannot_be_cast_name_key_value_type_and_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"training.max_steps: cannot use 'ten' from command line; expected int"):
        resolve(["--max_steps", "ten"])
    with pytest.raises(ConfigError, match=r"dataset.shuffle: cannot use 'maybe' from environment TWINKLE_SHUFFLE; expected bool"):
        resolve(env={"TWINKLE_SHUFFLE": "maybe"})
    (tmp_path / "c.yaml").write_text("batch_size: 2.5\n")
    with pytest.raises(ConfigError, match=r"training.batch_size: cannot use 2.5 from c.yaml; expected int"):
        resolve([str(tmp_path / "c.yaml")])
    with pytest.raises(ConfigError, match=r"scheduler.scheduler_cls: 'sawtooth' from command line is not one of cosine, linear, constant"):
        resolve(["--scheduler_cls", "sawtooth"])
    with pytest.raises(ConfigError, match="--max_steps needs a value"):
        resolve(["--max_steps"])


def test_bad_config_files_fail_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("max_steps = = 3\n")
    with pytest.raises(ConfigError, match="bad.toml is not valid TOML") as err:
        resolve([str(tmp_path / "bad.toml")])
    assert "\n" not in str(err.value)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        resolve([str(tmp_path / "list.yaml")])
    with pytest.raises(ConfigError, match="cannot read config file"):
        resolve(["--config", str(tmp_path / "missing.yaml")])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch_size", "6", "--micro_batch_size", "4"], "micro_batch_size (4) must divide batch_size (6); try micro_batch_size 3"),
        (["--lr", "0"], "learning_rate must be greater than 0"),
        (["--lora_r", "0"], "lora_r must be at least 1"),
        (["--top_p", "1.5"], "top_p must be between 0 and 1"),
        (["--dataset_id", "builtin:arith", "--data_file", "x.jsonl"],
         "set exactly one data source: dataset_id or data_file (both are set"),
        (["--dataset_id", "none"], "(neither is set)"),
        (["--task", "grpo", "--num_generations", "1"], "num_generations must be at least 2 for group advantages"),
        (["--num_warmup_steps", "-1"], "num_warmup_steps must not be negative"),
    ],
)
def test_invariants(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve(argv)
    assert message in str(err.value) and str(err.value).startswith("invalid configuration: ")


def test_json_round_trip_keeps_every_value() -> None:
    args = resolve(["--lr", "3e-4", "--lora_target_modules", "all-linear", "--task", "grpo", "--data_file", "d.jsonl",
                    "--dataset_id", "none", "--model_gpus", "0,1"], validate=False)
    text = json.dumps(args.to_dict())
    resolver = ConfigResolver(Args())  # meta.json's config read back, as the resolver reads any mapping
    resolver.apply(json.loads(text), source="dict")
    again = resolver.args
    assert again == args and again.to_dict() == args.to_dict()
    assert again.get_lora_args()["target_modules"] == "all-linear"
    assert args.get_optimizer_args() == {"lr": 3e-4, "weight_decay": 0.0, "betas": (0.9, 0.999), "eps": 1e-8}
    assert args.get_scheduler_args()["num_training_steps"] == args.training.max_steps


def test_a_custom_config_source() -> None:
    class Overrides:
        name = "agent start_training"

        def load(self) -> Mapping[str, Any]:
            return {"training": {"max_steps": 5}, "lr": 0.5}

    args = resolve(["--seed", "1"], sources=[Overrides()])
    assert args.training.max_steps == 5 and args.provenance["training.max_steps"] == "agent start_training"
    resolver = ConfigResolver(Args())
    resolver.apply({"lora_r": "16"}, source="api")
    assert resolver.args.lora.lora_r == 16 and resolver.args.provenance["lora.lora_r"] == "api"


@pytest.mark.parametrize("config", sorted(p.name for p in EXAMPLES.iterdir() if p.suffix in (".toml", ".yaml", ".yml")))
def test_config_show_on_the_examples(config: str) -> None:
    out = subprocess.run([sys.executable, "-m", "twinkle_trainer", "config", "show", "--config", str(EXAMPLES / config), "--seed", "3"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "[training]" in out.stdout and f"# {config}" in out.stdout
    assert any(line.strip().startswith("seed") and "# command line" in line for line in out.stdout.splitlines())


def test_config_show_prints_a_recipe_with_a_data_file(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    (tmp_path / "r.toml").write_text(f'[dataset]\ndata_file = "{tmp_path / "d.jsonl"}"\n')
    out = subprocess.run([sys.executable, "-m", "twinkle_trainer", "config", "show", "--config", str(tmp_path / "r.toml")],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "dataset_id" in out.stdout and "null" in out.stdout.split("dataset_id")[1].splitlines()[0]


def test_config_show_fails_with_the_error_on_bad_input() -> None:
    out = subprocess.run([sys.executable, "-m", "twinkle_trainer", "config", "show", "--lerning_rate", "1"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: unknown key 'lerning_rate' in command line; did you mean learning_rate?"


def test_config_imports_no_torch() -> None:
    code = "import json, sys, twinkle_trainer.config; print(json.dumps(sorted(sys.modules)))"
    mods = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert not [m for m in mods if m.split(".")[0] in ("torch", "transformers", "numpy", "textual")]
