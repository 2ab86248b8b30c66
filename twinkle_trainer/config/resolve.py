"""Resolving Args from its sources, later wins: defaults < .env < environment < config file < command line."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml
from dotenv import dotenv_values

from twinkle_trainer.config.schema import GROUPS, Args, ConfigError
from twinkle_trainer.config.validate import validate_args

log = logging.getLogger(__name__)

ENV_PREFIX = "TWINKLE_"
# Bare environment names read without the prefix: specific enough never to collide with HOST, PORT, MODE, PATH...
BARE_ENV_NAMES = ("MODEL_ID", "DATASET_ID", "LEARNING_RATE", "MAX_STEPS", "NPROC_PER_NODE")
# TWINKLE_* variables that belong to the application, not to the training configuration.
APP_ENV_NAMES = ("HOME", "RUN_ID", "AUTO_RUN_ID", "SUPERVISED")
ALIASES = {"lr": "learning_rate", "num_gpus": "nproc_per_node", "max_new_tokens": "max_tokens"}
RESERVED_FLAT = {"config"}  # on the command line --config names the config file; use server.config for the field
TRUE_WORDS = {"1", "true", "yes", "on", "y", "t"}
FALSE_WORDS = {"0", "false", "no", "off", "n", "f"}
NONE_WORDS = {"none", "null", "~", ""}


@dataclass(frozen=True)
class FieldInfo:
    group: str
    name: str
    type: Any
    help: str
    choices: tuple[str, ...] | None

    @property
    def key(self) -> str:
        return f"{self.group}.{self.name}"


def _build_index() -> tuple[dict[str, FieldInfo], dict[str, str]]:
    fields: dict[str, FieldInfo] = {}
    flat: dict[str, str] = {}
    seen: dict[str, int] = {}
    for group, cls in GROUPS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            info = FieldInfo(group, f.name, hints[f.name], f.metadata["help"], f.metadata.get("choices"))
            fields[info.key] = info
            seen[f.name] = seen.get(f.name, 0) + 1
            flat[f.name] = info.key
    for name, count in seen.items():
        if count > 1 or name in RESERVED_FLAT:
            del flat[name]  # ambiguous or reserved: only group.field reaches it
    return fields, flat


FIELDS, FLAT = _build_index()


def normalize_key(key: str) -> str:
    return key.strip().lower().replace("-", "_")


def all_key_names() -> list[str]:
    return sorted({*FLAT, *FIELDS, *ALIASES, "use_megatron"})


def suggest(key: str) -> str:
    close = difflib.get_close_matches(normalize_key(key), all_key_names(), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def resolve_key(key: str) -> str | None:
    """The canonical group.field for a user-written key, or None if unknown."""
    k = normalize_key(key)
    k = ALIASES.get(k, k)
    if k in FIELDS:
        return k
    if "." in k:
        group, name = k.split(".", 1)
        name = ALIASES.get(name, name)
        return f"{group}.{name}" if f"{group}.{name}" in FIELDS else None
    return FLAT.get(k)


# ------------------------------------------------------------------ casting
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return f"{_type_name(inner[0])} or none"
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def cast_value(info: FieldInfo, value: Any, source: str) -> Any:
    """Cast `value` to the field's type, or raise ConfigError naming key, value, expected type and source."""
    try:
        out = _cast(info.type, value)
    except (TypeError, ValueError) as exc:
        detail = f" ({exc})" if str(exc) else ""
        raise ConfigError(
            f"{info.key}: cannot use {value!r} from {source}; expected {_type_name(info.type)}{detail}"
        ) from None
    if info.choices and out is not None and out not in info.choices:
        match = {c.lower(): c for c in info.choices}.get(str(out).lower())
        if match is None:
            raise ConfigError(f"{info.key}: {out!r} from {source} is not one of {', '.join(info.choices)}")
        out = match
    return out


def _cast(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.strip().lower() in NONE_WORDS):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        return _cast(inner, value)
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):
            text = value.strip().strip("[]")
            parts = [p.strip().strip("'\"") for p in text.split(",")] if text else []
        elif isinstance(value, list | tuple):
            parts = list(value)
        else:
            parts = [value]
        return [_cast(item, p) for p in parts]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        text = str(value).strip().lower()
        if text in TRUE_WORDS:
            return True
        if text in FALSE_WORDS:
            return False
        raise ValueError("use true or false")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError("a boolean is not a number")
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError("not a whole number")
            return int(value)
        if isinstance(value, int):
            return value
        text = str(value).strip().replace("_", "")
        try:
            return int(text)
        except ValueError:
            as_float = float(text)  # "1e3" is a fine way to write 1000
            if not as_float.is_integer():
                raise ValueError("not a whole number") from None
            return int(as_float)
    if tp is float:
        if isinstance(value, bool):
            raise ValueError("a boolean is not a number")
        return float(value) if isinstance(value, int | float) else float(str(value).strip())
    if tp is str:
        if isinstance(value, dict | list):
            raise ValueError("expected a single value")
        return str(value)
    raise TypeError(f"unsupported field type {tp}")


# ------------------------------------------------------------------ sources
class ConfigSource(Protocol):
    """A custom source of configuration values: `load()` returns a flat or nested mapping."""

    name: str

    def load(self) -> Mapping[str, Any]: ...


def _flatten(data: Mapping[str, Any], source: str) -> list[tuple[str, Any]]:
    """Nested per-group tables and flat keys, as (key, value) pairs in file order."""
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        k = normalize_key(str(key))
        if k in GROUPS and isinstance(value, Mapping):
            out.extend((f"{k}.{normalize_key(str(sub))}", v) for sub, v in value.items())
        else:
            out.append((str(key), value))
    return out


class ConfigResolver:
    """Applies sources to an Args in order; each value remembers the source that set it."""

    def __init__(self, args: Args | None = None) -> None:
        self.args = args or Args()
        if not self.args.provenance:
            self.args.provenance.update(dict.fromkeys(FIELDS, "default"))

    def set(self, key: str, value: Any, source: str) -> None:
        """Set one value; an unknown key is an error that names the source and suggests the closest field."""
        if normalize_key(key).split(".")[-1] == "use_megatron":  # old switch, now a strategy
            try:
                enabled = _cast(bool, value)
            except ValueError:
                raise ConfigError(f"use_megatron: cannot use {value!r} from {source}; expected bool") from None
            if enabled:
                self.set("model.strategy", "native_fsdp", source)
            return
        canonical = resolve_key(key)
        if canonical is None:
            raise ConfigError(f"unknown key {key!r} in {source}{suggest(key)}")
        info = FIELDS[canonical]
        setattr(getattr(self.args, info.group), info.name, cast_value(info, value, source))
        self.args.provenance[canonical] = source

    def apply(self, data: Mapping[str, Any], source: str) -> Args:
        for key, value in _flatten(data, source):
            self.set(key, value, source)
        return self.args

    def apply_source(self, source: ConfigSource) -> Args:
        return self.apply(source.load(), source=source.name)

    def apply_environment(self, env: Mapping[str, str | None], source: str) -> Args:
        """TWINKLE_<FIELD> (and the documented bare names); unknown TWINKLE_ names are ignored with a debug log."""
        for name, value in env.items():
            if value is None:
                continue
            upper = name.upper()
            if upper.startswith(ENV_PREFIX):
                key = upper[len(ENV_PREFIX) :]
                if key in APP_ENV_NAMES or key.startswith("LLM_"):
                    continue
                if resolve_key(key.replace("__", ".")) is None:
                    log.debug("ignoring %s from %s: not a configuration key", name, source)
                    continue
                self.set(key.replace("__", "."), value, f"{source} {name}")
            elif upper in BARE_ENV_NAMES:
                self.set(upper, value, f"{source} {name}")
        return self.args


CONFIG_MAX_BYTES = 4 * 1024 * 1024


def clamp_warmup(args: Args) -> None:
    """Warmup longer than the run (a recipe's warmup with --max_steps 1) is cut to fit, with a note."""
    sch, steps = args.scheduler, args.training.max_steps
    if steps >= 1 and sch.num_warmup_steps >= steps:
        new = steps - 1
        args.notes.append(f"num_warmup_steps {sch.num_warmup_steps} -> {new}: the run has only {steps} step(s)")
        sch.num_warmup_steps = new


def read_dotenv(path: Path) -> dict[str, str | None]:
    """The bindings of a .env file; a line python-dotenv cannot parse is a ConfigError naming file and line
    (dotenv_values would only log a warning and drop it)."""
    import io

    from dotenv.parser import parse_stream

    from twinkle_trainer.protocol import read_regular_file

    try:
        text = read_regular_file(path, CONFIG_MAX_BYTES).decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            line = binding.original.string.strip().splitlines()[0] if binding.original.string.strip() else ""
            raise ConfigError(f"{path.name}:{binding.original.line}: cannot parse {line[:60]!r} "
                              "(an unterminated quote?)")
    return dict(dotenv_values(stream=io.StringIO(text)))


class FileSource:
    """A YAML (.yaml, .yml) or TOML (.toml) config file with flat keys or per-group tables."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.name = self.path.name

    def load(self) -> Mapping[str, Any]:
        from twinkle_trainer.protocol import read_regular_file

        suffix = self.path.suffix.lower()
        try:
            raw = read_regular_file(self.path, CONFIG_MAX_BYTES)  # never a FIFO or /dev/zero
        except OSError as exc:
            raise ConfigError(f"cannot read config file {self.path}: {exc.strerror or exc}") from None
        try:
            if suffix == ".toml":
                data = tomllib.loads(raw.decode("utf-8"))
            elif suffix in (".yaml", ".yml"):
                data = yaml.safe_load(raw) or {}
            else:
                raise ConfigError(f"config file {self.path} must end in .yaml, .yml or .toml")
        except (tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"{self.name} is not valid {suffix[1:].upper()}: {first}") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"{self.name} must hold a mapping of keys to values")
        return data


# ------------------------------------------------------------------ command line
def parse_cli_tokens(argv: Sequence[str]) -> tuple[str | None, list[tuple[str, Any]]]:
    """Split argv into the config file (--config F or a positional .yaml/.toml) and (key, value) pairs."""
    config_file: str | None = None
    pairs: list[tuple[str, Any]] = []
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        if not tok.startswith("--"):
            if config_file is None and Path(tok).suffix.lower() in (".yaml", ".yml", ".toml"):
                config_file = tok
                continue
            raise ConfigError(f"unexpected argument {tok!r} on the command line; options look like --key value")
        body = tok[2:]
        value: Any
        if "=" in body:
            body, value = body.split("=", 1)
        else:
            value = None
        key = normalize_key(body)
        if key == "config":
            if value is None:
                if i >= len(tokens):
                    raise ConfigError("--config needs a file path")
                value = tokens[i]
                i += 1
            config_file = value
            continue
        canonical = resolve_key(key)
        negated = None
        if canonical is None and key.startswith("no_"):
            negated = resolve_key(key[3:])
        if negated is not None and FIELDS[negated].type is bool and value is None:
            pairs.append((negated, False))
            continue
        is_flag = key == "use_megatron" or (canonical is not None and FIELDS[canonical].type is bool)
        if value is None:
            if i < len(tokens) and not tokens[i].startswith("--"):
                value = tokens[i]
                i += 1
            elif is_flag:
                value = True
            elif canonical is None:
                raise ConfigError(f"unknown key {body!r} in command line{suggest(body)}")
            else:
                raise ConfigError(f"--{body} needs a value ({_type_name(FIELDS[canonical].type)})")
        pairs.append((body, value))
    return config_file, pairs


class CLI:
    """Builds Args the way every entry point does: python -m twinkle_trainer, example scripts, the agent."""

    @staticmethod
    def from_args(
        argv: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        sources: Sequence[ConfigSource] = (),
        validate: bool = True,
    ) -> Args:
        import sys

        argv = list(sys.argv[1:] if argv is None else argv)
        env = os.environ if env is None else env
        config_file, pairs = parse_cli_tokens(argv)
        resolver = ConfigResolver()
        dotenv_path = Path(cwd or os.getcwd()) / ".env"
        if dotenv_path.is_file():
            resolver.apply_environment(read_dotenv(dotenv_path), source=".env")
        resolver.apply_environment(env, source="environment")
        for source in sources:
            resolver.apply_source(source)
        if config_file:
            path = Path(config_file)
            if not path.is_absolute() and cwd is not None:
                path = Path(cwd) / path
            resolver.apply_source(FileSource(path))
        for key, value in pairs:
            resolver.set(key, value, "command line")
        prov = resolver.args.provenance
        if prov.get("dataset.data_file") != "default" and prov.get("dataset.dataset_id") == "default":
            resolver.args.dataset.dataset_id = None  # a data file replaces the default dataset
        clamp_warmup(resolver.args)
        if validate:
            validate_args(resolver.args)
        return resolver.args
