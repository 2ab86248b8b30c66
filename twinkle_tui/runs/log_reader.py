"""Reading why a run failed from its output, as launchers, loggers and libraries write it.

The bottom layer of the monitor (standard library only: the supervisor records a failed run's error line with it,
and the rules, the LLM review and the dashboard read the same result). It

- strips what launchers and loggers put before a line (`[rank0]:`, `[default3]:`, timestamps and log levels,
  `(RayWorker pid=12)`, `worker-1 |`, glog's `E0325 20:57:27.62 2606 api.py:869]`) and keeps who said it;
- cuts progress-bar output glued before a traceback on the same line;
- unwraps pretty (rich) tracebacks, boxed and wrapped at the console width, into plain ones;
- reads every traceback with its chain, its exception line and the lines after it that explain it (`size mismatch
  for ...`), C++ aborts (`terminate called after throwing ...  what(): ...`) and faulthandler dumps;
- picks the root cause across processes: the first worker error (its lowest rank), never a launcher's summary
  (`ChildFailedError`, `CalledProcessError`) or a consequence of another rank's death; the same error from N ranks
  counts once;
- falls back, without a traceback, to fatal lines (`Watchdog caught collective operation timeout`, `Killed`) and to
  the exit code or signal.

The lines live in log_lines.py, the tracebacks in tracebacks.py; this module decides what they say.
"""

from __future__ import annotations

import re
import signal as _signal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from twinkle_tui.runs.log_lines import (
    _FATAL_LINES,
    _HEADER,
    _HINTS,
    _LAUNCHER_LINES,
    _NUMBERS,
    _PROGRESS,
    _SECONDARY,
    _SIGNAL_LINES,
    _SIGNAL_MARKER,
    ERROR_LINE_MAX,
    LogLine,
    read_lines,
    strip_prefix,
    unwrap_rich,
)
from twinkle_tui.runs.tracebacks import (
    RaisedError,
    TracebackReport,
    parse_stream,
)

__all__ = ["ERROR_LINE_MAX", "LogLine", "LogReading", "RaisedError", "TracebackReport", "choose_root",
           "last_exception_line", "read_failure", "signal_of", "strip_prefix"]

# ------------------------------------------------------------------ the result
def signal_of(returncode: int | None) -> str | None:
    """SIGKILL for -9 (and for 137, the shell's 128+9); None for an ordinary exit code."""
    if returncode is None:
        return None
    number = -returncode if returncode < 0 else returncode - 128 if 128 < returncode < 160 else 0
    if not number:
        return None
    try:
        return _signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@dataclass
class LogReading:
    """What a failed launch's output says about why it failed."""

    root: TracebackReport | None = None
    sources: list[str] = field(default_factory=list)  # every process that raised the root error
    count: int = 0  # how many times it was raised (ranks that print without a prefix count too)
    others: list[TracebackReport] = field(default_factory=list)  # other distinct errors (launchers included)
    fatal_line: str | None = None  # without a traceback: the first line that says what went wrong
    fatal_lines: list[str] = field(default_factory=list)  # every distinct fatal line, causes first
    signal: str | None = None  # the process's own signal, or a child's from its launcher's lines
    signal_line: str | None = None  # the line that showed it ("Killed", "exits with return code = -9")
    exit_code: int | None = None
    own_signal: str | None = None  # the signal that ended the launch itself (not one of its workers)
    launcher_lines: list[str] = field(default_factory=list)
    last_lines: list[str] = field(default_factory=list)  # the last meaningful lines (evidence)
    interrupted: bool = False

    @property
    def exception(self) -> RaisedError | None:
        return self.root.final if self.root else None

    @property
    def source(self) -> str | None:
        return self.sources[0] if self.sources else None

    def error_line(self) -> str | None:
        """The root cause in one line: the exception that says why (with the line after it when its message only
        introduces it), a fatal line, or the signal; never a box border or a hint."""
        exc = self.root.cause if self.root is not None else None
        if self.own_signal == "SIGKILL":
            exc = None  # nothing prints its own SIGKILL: a traceback in the log is another story
        if exc is not None and _SECONDARY.search(exc.line) and self.fatal_causes:
            return self.fatal_causes[0][:ERROR_LINE_MAX]  # "exited unexpectedly" is an effect; say the cause
        if exc is not None:
            line = exc.line
            explaining = exc.explaining_lines(1)
            if explaining and (exc.message.endswith(":") or exc.kind == "c++" and not exc.message):
                line = f"{line} {explaining[0]}"
            return line[:ERROR_LINE_MAX]
        if self.fatal_line:
            return self.fatal_line[:ERROR_LINE_MAX]
        if self.signal:
            return f"killed by {self.signal}" + (f" ({self.signal_line})" if self.signal_line and
                                                 self.signal_line != "Killed" else "")
        if self.launcher_lines:
            return self.launcher_lines[-1][:ERROR_LINE_MAX]
        return None

    @property
    def fatal_causes(self) -> list[str]:
        return [line for line in self.fatal_lines if not _SECONDARY.search(line)]

    def classify_text(self) -> str:
        """The text a failure's kind is read from: every exception of the root chain with the lines after it, or
        the fatal line."""
        parts: list[str] = []
        if self.root is not None:
            for exc in self.root.chain:
                parts.append(exc.line)
                parts.extend(exc.explaining_lines(12))
        elif self.fatal_line:
            parts.append(self.fatal_line)
        return "\n".join(parts)

    def evidence(self) -> list[str]:
        """Short lines that show the cause: the root error (and who raised it), what explains it, the frame it was
        raised in, the launcher's view as context."""
        out: list[str] = []
        exc = self.root.cause if self.root is not None else None
        if exc is not None:
            who = self.describe_sources()
            out.append((f"{who}: " if who else "") + (self.error_line() or exc.line))
            out.extend(line[:200] for line in exc.explaining_lines(3)[1 if exc.message.endswith(":") else 0 :][:2])
            if exc.frames:
                out.append(f"raised at {exc.frames[-1][:200]}")
        elif self.fatal_line:
            out.append(self.fatal_line[:300])
        if self.signal_line and self.signal_line not in out:
            out.append(self.signal_line[:200])
        out.extend(f"launcher: {line[:200]}" for line in self.launcher_lines[:1])
        if not out:
            out.extend(self.last_lines[-3:])
        return out

    def describe_sources(self) -> str:
        """Who raised the root error: "rank 0 (and 7 more ranks)", "raised 4 times", or nothing."""
        if not self.sources:
            return f"raised {self.count} times" if self.count > 1 else ""
        if len(self.sources) == 1:
            return self.sources[0]
        return f"{self.sources[0]} (and {len(self.sources) - 1} more)"

    def excerpt(self, max_chars: int = 3000) -> str:
        """The root cause as an LLM should read it: its traceback (prefix-stripped, the last frames), the
        exception with the lines that explain it, who raised it, and the launcher's summary as context."""
        parts: list[str] = []
        if self.root is not None:
            who = self.describe_sources()
            parts.append(f"root cause ({who}):" if who else "root cause:")
            body = [line for line in self.root.lines
                    if line.strip() and not _HINTS.match(line.strip()) and not line.lstrip().startswith("frame #")]
            # keep the header and the end: the last frames and the exception are what explain it
            if len(body) > 40:
                body = body[:1] + ["  ..."] + body[-39:]
            parts.extend(body)
        elif self.fatal_line:
            parts.append(f"fatal line: {self.fatal_line}")
        if self.signal:
            parts.append(f"signal: {self.signal}" + (f" ({self.signal_line})" if self.signal_line else ""))
        others = [r for r in self.others if not r.launcher][:2]
        for other in others:
            parts.append(f"also seen ({other.source or 'main process'}): {other.final.line[:200]}")
        for line in self.launcher_lines[:2]:
            parts.append(f"launcher: {line[:200]}")
        if self.root is None and self.last_lines:
            parts.append("last lines:")
            parts.extend(self.last_lines[-12:])
        text = "\n".join(parts)
        if len(text) > max_chars:  # the end matters more than the beginning
            text = text[: max_chars // 4] + "\n  ...\n" + text[-(max_chars * 3 // 4) :]
        return text


def read_failure(raw_lines: Sequence[str], exit_code: int | None = None, exit_signal: str | None = None) -> LogReading:
    """Why the launch whose output this is failed (or was stopped)."""
    lines = _adopt_headers(unwrap_rich(read_lines(raw_lines)))
    streams: dict[str, list[tuple[int, LogLine]]] = {}
    for pos, line in enumerate(lines):
        streams.setdefault(line.source, []).append((pos, line))
    reports = sorted((r for stream in streams.values() for r in parse_stream(stream)), key=lambda r: r.position)

    reading = LogReading(exit_code=exit_code)
    reading.signal = reading.own_signal = exit_signal or signal_of(exit_code)
    reading.launcher_lines = _launcher_summary(lines)
    launcher_spans = [(r.position, r.end) for r in reports if r.launcher]
    reading.last_lines = _last_meaningful([line for pos, line in enumerate(lines)
                                           if not any(a <= pos <= b for a, b in launcher_spans)])
    root = choose_root(reports, several_processes=bool(reading.launcher_lines) or len(streams) > 1)
    if root is not None:
        signature = root.signature()
        same = [r for r in reports if r.signature() == signature]
        ranked = _sorted_sources(r.source for r in same if r.source)
        if ranked:  # the lowest rank speaks for all
            root = next(r for r in same if r.source == ranked[0])
        reading.root = root
        reading.count = len(same)
        reading.sources = _sorted_sources(r.source for r in same if r.source)
        seen = {signature}
        for r in reports:
            if r.signature() not in seen and not r.ignored:
                seen.add(r.signature())
                reading.others.append(r)
    reading.interrupted = (reading.signal == "SIGINT" or exit_code == 130
                           or (reading.root is not None and reading.root.interrupted))
    reading.fatal_lines = _fatal_lines(lines)
    if reading.root is None and reading.fatal_lines:
        reading.fatal_line = reading.fatal_lines[0]
    signal_from_log, signal_line, signal_rank = _signal_in_log(lines)
    if reading.signal is None and signal_from_log:
        reading.signal = signal_from_log
    if signal_line and signal_from_log == reading.signal:
        reading.signal_line = signal_line
        if not reading.sources and signal_rank and reading.root is None:
            reading.sources = [signal_rank]
    return reading


def _adopt_headers(lines: list[LogLine]) -> list[LogLine]:
    """A traceback header printed without a prefix right before a rank's prefixed frames belongs to that rank."""
    out = list(lines)
    for i in range(len(out) - 1):
        line, nxt = out[i], out[i + 1]
        if not line.source and nxt.source and _HEADER.match(line.text.strip()):
            out[i] = LogLine(nxt.source, line.text, line.prefixed)
    return out


def choose_root(reports: list[TracebackReport], several_processes: bool) -> TracebackReport | None:
    """The root cause among the errors of a log: not a launcher's summary, not a re-raise that carries another
    error, not a consequence of another process's death (while anything else is there). Of several processes the
    first error is the cause (the others died of it); of one process, the last (earlier ones were handled)."""
    pool = [r for r in reports if not r.ignored and not r.launcher]
    pool = [r for r in pool if not r.wrapper] or pool
    pool = [r for r in pool if not r.secondary] or pool
    if not pool:
        return None
    duplicated = len({r.signature() for r in pool}) < len(pool)
    return pool[0] if several_processes or duplicated else pool[-1]


def _sorted_sources(sources: Iterable[str]) -> list[str]:
    unique = list(dict.fromkeys(sources))

    def key(s: str) -> tuple[int, str]:
        m = re.match(r"rank (\d+)$", s)
        return (int(m.group(1)), s) if m else (10**9, s)

    return sorted(unique, key=key)


def _fatal_lines(lines: list[LogLine], limit: int = 10) -> list[str]:
    """Distinct lines that say something fatal (not a launcher's report of a child's exit, not a bare signal
    marker), causes first, consequences of another process's death after them."""
    causes: list[str] = []
    consequences: list[str] = []
    seen: set[str] = set()
    for line in lines:
        text = line.text.strip()
        if not text or not _FATAL_LINES.search(text) or _SIGNAL_MARKER.match(text) or _LAUNCHER_LINES.search(text):
            continue
        shape = _NUMBERS.sub("#", text)
        if shape in seen:
            continue
        seen.add(shape)
        (consequences if _SECONDARY.search(text) else causes).append(text[:ERROR_LINE_MAX])
        if len(causes) >= limit:
            break
    return (causes + consequences)[:limit]


_SIGNAL_PHRASES = re.compile(r"exits with return code = -?\d+|failed \(exitcode: -?\d+\).*?\(pid: \d+\)|"
                             r"Signal \d+ \(SIG\w+\) received by PID \d+|died with <Signals\.SIG\w+: \d+>|"
                             r"exitcode\s*:\s*-?\d+(?: \(pid: \d+\))?")
_RANK_IN_LINE = re.compile(r"local_rank[=:]\s*(\d+)|--local_rank=(\d+)|\brank\s*:\s*(\d+)")


def _signal_in_log(lines: list[LogLine]) -> tuple[str | None, str | None, str | None]:
    """A signal that killed the run or one of its workers, as the log says it (the last such line): the signal,
    the phrase that shows it, and the rank it names."""
    found: tuple[str | None, str | None, str | None] = (None, None, None)
    rank = None
    for line in lines:
        text = line.text.strip()
        r = _RANK_IN_LINE.search(text)
        if r and ("exit" in text or "rank" in text.split(":")[0]):
            rank = next(g for g in r.groups() if g is not None)
        for pattern, how in _SIGNAL_LINES:
            m = pattern.search(text)
            if not m:
                continue
            if how == "":
                name = signal_of(int(m.group("num")))
            elif how == "+":
                name = signal_of(-int(m.group("num")))
            elif how == "name":
                name = m.group("name")
            else:
                name = how
            if name:
                phrase = _SIGNAL_PHRASES.search(text)
                found = (name, (phrase.group(0) if phrase else text)[:200], f"rank {rank}" if rank else None)
            break
    return found


def _launcher_summary(lines: list[LogLine]) -> list[str]:
    out: list[str] = []
    for line in lines:
        text = line.text.strip()
        if _LAUNCHER_LINES.search(text) and text not in out and not text.startswith(("raise ", "File ")):
            out.append(text)
    return out[-3:]


def _last_meaningful(lines: list[LogLine], n: int = 12) -> list[str]:
    """The last lines worth reading: no progress bars, no blank lines, no repeats."""
    out: list[str] = []
    for line in reversed(lines):
        text = line.text.strip()
        if not text or _PROGRESS.search(text) or text in out or text.startswith("====="):
            continue
        out.append(text[:300])
        if len(out) >= n:
            break
    return out[::-1]


def last_exception_line(lines: Sequence[str]) -> str | None:
    """The root cause's exception line in these lines, if there is a traceback."""
    reading = read_failure(lines)
    return reading.error_line() if reading.root is not None else None
