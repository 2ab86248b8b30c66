"""The LLM's command-line flags (flag > environment > default), declared once for every command that talks to an
LLM: the dashboard, --ask, doctor, research."""

from __future__ import annotations

import argparse
import os

from twinkle_tui.agent.endpoint import LLMSettings


def add_llm_arguments(p: argparse.ArgumentParser) -> None:
    """The agent's and the monitor's LLM (flag > environment > default), for the dashboard and doctor alike."""
    env = os.environ.get
    p.add_argument("--llm", choices=("auto", "embedded", "none"), default=env("TWINKLE_LLM", "auto"),
                   help="auto: the endpoint below if it answers, else the embedded llama.cpp LLM; none: slash only")
    p.add_argument("--llm-base-url", default=env("TWINKLE_LLM_BASE_URL", "http://localhost:11434/v1"),
                   help="an OpenAI-compatible endpoint (Ollama, vLLM, llama.cpp, OpenAI)")
    p.add_argument("--llm-model", default=env("TWINKLE_LLM_MODEL", "qwen3.5"))
    p.add_argument("--llm-api-key", default=env("TWINKLE_LLM_API_KEY", "not-needed"))
    p.add_argument("--llm-gguf", metavar="PATH", default=env("TWINKLE_LLM_GGUF"),
                   help="the embedded LLM's GGUF model (default: the bundled SmolLM2-135M-Instruct)")


def llm_settings(ns: argparse.Namespace) -> LLMSettings:
    return LLMSettings(ns.llm_base_url, ns.llm_model, ns.llm_api_key, mode=ns.llm, gguf=ns.llm_gguf)
