"""The LLM's command-line flags, declared once for every command that talks to an LLM (the dashboard, --ask, doctor,
research): flag > environment > $TWINKLE_HOME/config.toml [llm] > default."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from twinkle_trainer.protocol import twinkle_home
from twinkle_tui.agent.config import ConfigError, read_llm_config
from twinkle_tui.agent.endpoint import AGENT_MODES, MODES, LLMSettings

LLM_FLAGS = {  # flag attribute -> (environment variable, config key, default)
    "llm": ("TWINKLE_LLM", "mode", "auto"),
    "llm_base_url": ("TWINKLE_LLM_BASE_URL", "base_url", "http://localhost:11434/v1"),
    "llm_model": ("TWINKLE_LLM_MODEL", "model", "qwen3.5"),
    "llm_api_key": ("TWINKLE_LLM_API_KEY", None, "not-needed"),
    "llm_gguf": ("TWINKLE_LLM_GGUF", "gguf", None),
    "llm_deadline": ("TWINKLE_LLM_DEADLINE", "deadline", 120.0),
    "llm_threads": ("TWINKLE_LLM_THREADS", "threads", None),
    "llm_agent": ("TWINKLE_LLM_AGENT", "agent", "auto"),
}


def add_llm_arguments(p: argparse.ArgumentParser) -> None:
    """The agent's and the monitor's LLM (flag > environment > $TWINKLE_HOME/config.toml [llm] > default), for the
    dashboard, --ask and doctor alike."""
    p.add_argument("--llm", choices=MODES, default=None,
                   help="auto: the endpoint below if it answers, else the embedded llama.cpp LLM; none: slash only "
                        "(TWINKLE_LLM; default auto)")
    p.add_argument("--llm-base-url", default=None,
                   help="an OpenAI-compatible endpoint: Ollama, vLLM, llama.cpp, OpenAI (TWINKLE_LLM_BASE_URL; "
                        "default http://localhost:11434/v1)")
    p.add_argument("--llm-model", default=None, help="the endpoint's model (TWINKLE_LLM_MODEL; default qwen3.5)")
    p.add_argument("--llm-api-key", default=None, help="the endpoint's key (TWINKLE_LLM_API_KEY)")
    p.add_argument("--llm-gguf", metavar="PATH", default=None,
                   help="the embedded LLM's GGUF model (TWINKLE_LLM_GGUF; default: the bundled SmolLM2-135M-Instruct)")
    p.add_argument("--llm-deadline", metavar="SECONDS", type=float, default=None,
                   help="how long one answer may take (TWINKLE_LLM_DEADLINE; default 120)")
    p.add_argument("--llm-threads", metavar="N", type=int, default=None,
                   help="the embedded LLM's threads (TWINKLE_LLM_THREADS; default: all cores, half while a run trains)")
    p.add_argument("--llm-agent", choices=AGENT_MODES, default=None,
                   help="how the agent uses the LLM: tool calls, or one constrained intent request (small local "
                        "models); auto: intents on the embedded LLM, tools on endpoints (TWINKLE_LLM_AGENT)")


def llm_settings(ns: argparse.Namespace) -> LLMSettings:
    """LLMSettings from the parsed flags, the environment and $TWINKLE_HOME/config.toml; a bad value is one line
    (SystemExit 2, as argparse does)."""
    try:
        config = read_llm_config(twinkle_home(getattr(ns, "home", None)))
    except ConfigError as exc:
        print(f"twinkle-tui: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    values: dict[str, Any] = {}
    for attr, (env, key, default) in LLM_FLAGS.items():
        value = getattr(ns, attr, None)
        where = f"--{attr.replace('_', '-')}"
        if value is None and os.environ.get(env):
            value, where = os.environ[env], env
        if value is None and key is not None and key in config:
            value, where = config[key], f"llm.{key} in config.toml"
        values[attr] = default if value is None else _checked(attr, value, where)
    return LLMSettings(values["llm_base_url"], values["llm_model"], values["llm_api_key"], mode=values["llm"],
                       gguf=values["llm_gguf"], deadline=values["llm_deadline"], threads=values["llm_threads"],
                       agent=values["llm_agent"])


def _checked(attr: str, value: Any, where: str) -> Any:
    choices = {"llm": MODES, "llm_agent": AGENT_MODES}.get(attr)
    try:
        if attr == "llm_deadline":
            value = float(value)
            if not value > 0:
                raise ValueError
        elif attr == "llm_threads":
            value = int(value)
            if value < 1:
                raise ValueError
    except ValueError:
        what = "a number of seconds above 0" if attr == "llm_deadline" else "a whole number of at least 1"
        print(f"twinkle-tui: {where} must be {what}, not {value!r}", file=sys.stderr)
        raise SystemExit(2) from None
    if choices and value not in choices:
        print(f"twinkle-tui: {where} must be one of {', '.join(choices)}, not {value!r}", file=sys.stderr)
        raise SystemExit(2)
    return value
