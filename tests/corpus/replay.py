"""The corpus of real-shaped logs: failures and healthy runs written in the shapes users pasted into public issue
threads (each fixture in our own words and paths, its source URL in its header), and their replay as real scripts
that print the log and then exit with the code or kill themselves with the signal, as the original run did.

A fixture is a text file:

    # source: https://github.com/owner/repo/issues/N
    # expect: crash:out of memory      (rule[:category]; "healthy" for a healthy log)
    # exit: 1                          (an exit code, or a signal name: SIGKILL, SIGSEGV, SIGABRT, SIGINT)
    # shape: what about it is hard to read (a note)
    ---
    the log, as the process printed it
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

CORPUS = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Fixture:
    name: str
    path: Path
    source: str
    expect: str  # "healthy" or rule[:category]
    exit: str  # an exit code or a signal name
    shape: str
    log: str

    @property
    def healthy(self) -> bool:
        return self.expect == "healthy"

    @property
    def rule(self) -> str:
        return self.expect.partition(":")[0]

    @property
    def kind(self) -> str | None:
        return self.expect.partition(":")[2] or None

    @property
    def signal(self) -> signal.Signals | None:
        return signal.Signals[self.exit] if self.exit.startswith("SIG") else None

    @property
    def code(self) -> int:
        return 0 if self.signal else int(self.exit)

    def script(self) -> str:
        """A script that prints the log and ends the way the original run ended."""
        # a supervised run inherits an ignored SIGINT: restore the default so the signal ends it as it did
        sig = self.signal
        if sig is None:
            end = f"sys.exit({self.code})\n"
        else:
            default = "" if sig == signal.SIGKILL else f"signal.signal(signal.{sig.name}, signal.SIG_DFL)\n"
            end = f"{default}os.kill(os.getpid(), signal.{sig.name})\ntime.sleep(30)\n"
        return (f"# replay of {self.name} ({self.source})\nimport os, signal, sys, time\n"
                f"sys.stdout.write({self.log!r})\nsys.stdout.flush()\n" + end)


def load(path: Path) -> Fixture:
    text = path.read_text(encoding="utf-8")
    head, sep, log = text.partition("\n---\n")
    if not sep:
        raise ValueError(f"{path.name}: no '---' line between the header and the log")
    fields: dict[str, str] = {}
    for line in head.splitlines():
        key, _, value = line.lstrip("# ").partition(":")
        fields[key.strip()] = value.strip()
    missing = {"source", "expect", "exit"} - fields.keys()
    if missing:
        raise ValueError(f"{path.name}: header lacks {', '.join(sorted(missing))}")
    if not fields["source"].startswith("https://github.com/"):
        raise ValueError(f"{path.name}: the source is not a public issue thread URL")
    return Fixture(path.stem, path, fields["source"], fields["expect"], fields["exit"], fields.get("shape", ""), log)


def fixtures(kind: str | None = None) -> list[Fixture]:
    """Every fixture (or those of "failures" or "healthy"), sorted by name."""
    folders = [kind] if kind else ["failures", "healthy"]
    return [load(p) for folder in folders for p in sorted((CORPUS / folder).glob("*.log"))]
