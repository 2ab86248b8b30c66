"""`python -m twinkle_trainer config show`: the resolved configuration, grouped, with each value's source."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from twinkle_trainer.config.resolve import CLI, FIELDS
from twinkle_trainer.config.schema import GROUPS, Args, ConfigError


def render(args: Args) -> str:
    lines = []
    width = max(len(info.name) for info in FIELDS.values())
    for group in GROUPS:
        lines.append(f"[{group}]")
        for info in (i for i in FIELDS.values() if i.group == group):
            value = json.dumps(getattr(getattr(args, group), info.name))
            source = args.provenance.get(info.key, "default")
            lines.append(f"  {info.name:<{width}} = {value:<36} # {source}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    if not argv or argv[0] not in ("show", "keys"):
        print("usage: python -m twinkle_trainer config show [--config FILE] [--key value ...] | config keys", file=sys.stderr)
        return 2
    if argv[0] == "keys":
        for info in FIELDS.values():
            print(f"{info.key:<36} {info.help}")
        return 0
    try:
        args = CLI.from_args(argv[1:])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(render(args))
    return 0
