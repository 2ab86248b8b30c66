"""Tracebacks in a process's output: Python's (with their chain: "During handling", "direct cause"), C++ aborts
(`terminate called after throwing ... what():`) and faulthandler dumps, each with the exception line and the lines
after it that explain it. Standard library only."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from twinkle_tui.runs.log_lines import (
    _BARE_EXC,
    _CHAIN,
    _CPP_ABORT,
    _CPP_WHAT,
    _EXC_LINE,
    _FAULTHANDLER,
    _GENERIC,
    _GLUE,
    _HEADER,
    _HINTS,
    _LAUNCHER_FRAMES,
    _LAUNCHER_TYPES,
    _NUMBERS,
    _PROGRESS,
    _SECONDARY,
    _WRAPPERS,
    MAX_CONTINUATION,
    LogLine,
)


# ------------------------------------------------------------------ tracebacks
@dataclass
class RaisedError:
    """One exception as the log shows it: its type, the message on its line, the lines after it that explain it,
    and where it was raised."""

    type: str
    message: str
    continuation: list[str] = field(default_factory=list)
    frames: list[str] = field(default_factory=list)
    kind: str = "python"  # python, c++ (terminate ... what()), fatal (faulthandler)
    nested: bool = False  # another traceback follows right after it (a re-raise that carries a worker's error)

    @property
    def line(self) -> str:
        return f"{self.type}: {self.message}".rstrip(": ") if self.message else self.type

    def explaining_lines(self, limit: int = 6) -> list[str]:
        """The continuation without boilerplate hints and separator rules."""
        out = []
        for text in self.continuation:
            t = text.strip()
            if not t or _HINTS.match(t) or set(t) <= set("=-_ "):
                continue
            out.append(t)
            if len(out) >= limit:
                break
        return out


@dataclass
class TracebackReport:
    """A traceback (with its chain of exceptions) or a C++ abort, from one process."""

    source: str
    position: int  # index of its first line in the log: earlier is first
    chain: list[RaisedError]
    lines: list[str]  # its text, prefix-stripped
    ignored: bool = False  # printed by Python while shutting down ("Exception ignored in ..."): never the cause
    end: int = -1  # index in the log of its last line
    links: list[str] = field(default_factory=list)  # between chain[i] and chain[i + 1]: "during" or "cause"

    @property
    def cause(self) -> RaisedError:
        """The exception of the chain that says why: the original one when others were raised while handling it,
        the wrapping one when it was raised from another (it adds context), unless it only says "an error
        occurred"."""
        i = len(self.chain) - 1
        while i > 0 and i - 1 < len(self.links):
            if self.links[i - 1] == "during" or _GENERIC.search(self.chain[i].message):
                i -= 1
                continue
            break
        return self.chain[i]

    @property
    def final(self) -> RaisedError:
        return self.chain[-1]

    @property
    def launcher(self) -> bool:
        final = self.final
        if final.type.rsplit(".", 1)[-1] in _LAUNCHER_TYPES:
            return True
        return bool(final.frames) and bool(_LAUNCHER_FRAMES.search(final.frames[-1]))

    @property
    def wrapper(self) -> bool:
        final = self.final
        return bool(_WRAPPERS.search(final.message)) or (not final.message and final.nested)

    @property
    def secondary(self) -> bool:
        return bool(_SECONDARY.search(self.final.line + " " + " ".join(self.final.explaining_lines(3))))

    @property
    def interrupted(self) -> bool:
        return self.final.type.rsplit(".", 1)[-1] == "KeyboardInterrupt"

    def signature(self) -> str:
        """The same error from another rank or pid has the same signature."""
        return _NUMBERS.sub("#", self.final.line)[:200]


def _exception_line(text: str) -> re.Match[str] | None:
    m = _EXC_LINE.match(text.strip())
    if m is None:
        return None
    if m.group("msg") is None and not _BARE_EXC.search(m.group("type")):
        return None
    return m


def _continues(text: str) -> bool:
    """Whether a line after an exception line can still belong to its message."""
    t = text.strip()
    if not t:
        return False
    return not (_HEADER.match(t) or _CHAIN.match(t) or _GLUE.match(t) or _PROGRESS.search(t)
                or t.startswith(("[twinkle]", "wandb:", "=====")) and not t.startswith("======"))


_FILE_FRAME = re.compile(r'^File "[^"]+", line \d+')
_CARETS = re.compile(r"^[\^~\s]+$")
_IGNORED_BEFORE = re.compile(r"^(?:Exception ignored in|Error in atexit\._run_exitfuncs|Error in sys\.excepthook)")


def parse_stream(lines: list[tuple[int, LogLine]]) -> list[TracebackReport]:
    """The tracebacks, C++ aborts and faulthandler dumps in the lines one process wrote, in order."""
    reports: list[TracebackReport] = []
    n = len(lines)
    i = 0
    while i < n:
        pos, first = lines[i]
        head = first.text.strip()
        cpp, fatal = _CPP_ABORT.match(head), _FAULTHANDLER.match(head)
        headless = _FILE_FRAME.match(head) is not None  # its header scrolled away (or was not pasted)
        if not (_HEADER.match(head) or cpp or fatal or headless):
            i += 1
            continue
        ignored = i > 0 and bool(_IGNORED_BEFORE.match(lines[i - 1][1].text.strip()))
        report = TracebackReport(first.source, pos, [], [], ignored=ignored)
        if cpp:
            i = _read_cpp_abort(lines, i, cpp.group("type"), report)
        elif fatal:
            i = _read_faulthandler(lines, i, fatal.group("msg"), report)
        else:
            i = _read_traceback(lines, i, report, headless)
        if report.chain:
            report.end = lines[min(i, n) - 1][0]
            reports.append(report)
    return reports


def _read_traceback(lines: list[tuple[int, LogLine]], i: int, report: TracebackReport, headless: bool = False) -> int:
    """A Python traceback with its chain, from its header at i (or its first frame, when the header is not in
    the log); returns the index after it."""
    n = len(lines)
    while i < n and (headless or _HEADER.match(lines[i][1].text.strip())):
        if not headless:
            report.lines.append(lines[i][1].text.strip())
            i += 1
        headless = False
        frames: list[str] = []
        after_file = False
        skipped = 0
        error: RaisedError | None = None
        while i < n:
            text = lines[i][1].text
            s = text.strip()
            if _HEADER.match(s):
                break  # a traceback cut short by another one
            indented = text.startswith((" ", "\t"))
            m = None if indented else _exception_line(text)
            if m is not None:
                error = RaisedError(m.group("type"), (m.group("msg") or "").strip(), frames=frames)
                report.lines.append(s)
                i += 1
                break
            is_file = s.startswith(("File \"", "File <"))
            if indented or is_file or after_file or _CARETS.match(s) or not s:
                if is_file:
                    frames.append(s)
                after_file = is_file
                report.lines.append(text.rstrip())
                i += 1
                continue
            skipped += 1  # another process's line between our frames
            i += 1
            if skipped > 50:
                break
        if error is None:
            break
        while i < n and len(error.continuation) < MAX_CONTINUATION and _continues(lines[i][1].text):
            error.continuation.append(lines[i][1].text.rstrip())
            report.lines.append(lines[i][1].text.rstrip())
            i += 1
        error.nested = i < n and _HEADER.match(lines[i][1].text.strip()) is not None
        report.chain.append(error)
        j = i  # a chained exception follows after a blank line and the chain sentence
        while j < n and not lines[j][1].text.strip():
            j += 1
        if j < n and _CHAIN.match(lines[j][1].text.strip()):
            report.lines.append(lines[j][1].text.strip())
            report.links.append("during" if lines[j][1].text.strip().startswith("During") else "cause")
            i = j + 1
            while i < n and not lines[i][1].text.strip():
                i += 1
            continue
        break
    return i


def _read_cpp_abort(lines: list[tuple[int, LogLine]], i: int, kind: str, report: TracebackReport) -> int:
    """`terminate called after throwing an instance of 'c10::Error'` and its `what():` message."""
    error = RaisedError(kind, "", kind="c++")
    report.lines.append(lines[i][1].text.strip())
    i += 1
    n = len(lines)
    while i < n and len(error.continuation) < MAX_CONTINUATION:
        text = lines[i][1].text.strip()
        if _HEADER.match(text) or _CPP_ABORT.match(text) or (not text and error.message):
            break
        what = _CPP_WHAT.match(text)
        if what and not error.message:
            error.message = what.group("msg").strip()
        elif text and not text.startswith(("frame #", "Exception raised from")) and not _GLUE.match(text):
            error.continuation.append(text)
        report.lines.append(text)
        i += 1
    report.chain.append(error)
    return i


def _read_faulthandler(lines: list[tuple[int, LogLine]], i: int, message: str, report: TracebackReport) -> int:
    """`Fatal Python error: Segmentation fault` and the stacks faulthandler prints after it."""
    error = RaisedError("Fatal Python error", message.strip(), kind="fatal")
    report.lines.append(lines[i][1].text.strip())
    i += 1
    n = len(lines)
    while i < n:
        text = lines[i][1].text
        s = text.strip()
        if s and not text.startswith(" ") and not s.startswith(("Current thread", "Thread 0x", "Extension modules")):
            break
        if s.startswith("File "):
            error.frames.append(s)
        report.lines.append(s)
        i += 1
    report.chain.append(error)
    return i
