"""The LLM settings a user keeps in a file: the `[llm]` table of $TWINKLE_HOME/config.toml. Flags win over the
environment, the environment over this file, the file over the defaults. The API key is not read from here (it
stays in the environment or on the command line, never in a file under the runs directory).

    [llm]
    mode = "embedded"          # auto | embedded | none
    gguf = "~/models/qwen2.5-0.5b-instruct-q4_k_m.gguf"
    deadline = 180             # seconds one answer may take
    threads = 2                # the embedded server's threads
    agent = "intent"           # auto | tools | intent
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Any

from twinkle_trainer.protocol import read_regular_file

log = logging.getLogger(__name__)

CONFIG_FILE = "config.toml"
MAX_BYTES = 64 * 1024
KEYS: dict[str, type] = {"mode": str, "base_url": str, "model": str, "gguf": str, "deadline": float, "threads": int,
                         "agent": str}


TYPE_WORDS = {str: "a string", float: "a number", int: "a whole number"}


class ConfigError(ValueError):
    """config.toml cannot be used; the message names the file and the key."""


def read_llm_config(home: Path) -> dict[str, Any]:
    """The [llm] table of home/config.toml, each value checked for its type (none when there is no file)."""
    path = home / CONFIG_FILE
    try:
        raw = read_regular_file(path, MAX_BYTES)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    try:
        table = tomllib.loads(raw.decode("utf-8")).get("llm", {})
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [llm] must be a table")
    out: dict[str, Any] = {}
    for key, value in table.items():
        kind = KEYS.get(key)
        if kind is None:
            raise ConfigError(f"{path}: unknown key llm.{key} (known: {', '.join(KEYS)})")
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ConfigError(f"{path}: llm.{key} must be {TYPE_WORDS[kind]}, not {value!r}")
        out[key] = value
    return out
