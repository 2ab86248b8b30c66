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
"""

from __future__ import annotations

import re
import signal as _signal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

MAX_CONTINUATION = 40  # lines after an exception line that can still explain it
ERROR_LINE_MAX = 300

# ------------------------------------------------------------------ cleaning and prefixes
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

_LEVEL = r"(?:TRACE|DEBUG|INFO|NOTICE|WARNING|WARN|ERROR|CRITICAL|FATAL)"
_STAMP = (r"(?:\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?"  # 2024-05-01 12:00:00,123
          r"|\d\d/\d\d(?:/\d{2,4})? \d\d:\d\d:\d\d(?:[.,]\d+)?"  # 12/09 06:49:23, 08/07/2021 02:16:27
          r"|\d\d-\d\d \d\d:\d\d:\d\d(?:[.,]\d+)?)")  # vLLM's 06-28 23:40:03
# (pattern, the group naming the source or None). Tried in order, repeatedly, at the start of a line.
_SOURCE_PREFIXES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^\[(?:rank|default)(?P<src>\d+|x)\]:\s?"), "rank"),  # torchrun --tee / local ranks
    (re.compile(r"^\[\d+,(?P<src>\d+)\]<std(?:out|err)>:\s?"), "rank"),  # mpirun --tag-output
    (re.compile(r"^\((?P<src>(?:[\w.]+ )?pid=\d+(?:, ip=[\d.]+)?)\)\s?"), "actor"),  # Ray actors and workers
    (re.compile(r"^\((?P<src>raylet|gcs_server|autoscaler)\)\s?"), "actor"),
    (re.compile(r"^(?P<src>[A-Za-z][\w.]*[-_]\d+)\s+\|\s?"), "service"),  # docker compose: worker-1 | ...
    (re.compile(r"^(?P<src>(?:worker|node|host)-?\d+|localhost|\d{1,3}(?:\.\d{1,3}){3}): "), "host"),  # pdsh
    (re.compile(r"^(?P<src>\d{1,4}): (?=\S)"), "rank"),  # srun -l / accelerate multi-node
]
_PLAIN_PREFIXES = [
    re.compile(rf"^\[?{_STAMP}\]? ?(?:[-|:] )?"),  # timestamps, bracketed or not
    re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+\s+\S+:\d+\]\s?"),  # glog: E0325 20:57:27.62 2606 api.py:869]
    re.compile(r"^\[[IWEF]\d{0,4}(?: [\d:.]+)? ?[\w.]*\.(?:cpp|cc|cu|h|py):\d+\]\s?"),  # [E ProcessGroupNCCL.cpp:737]
    re.compile(rf"^{_LEVEL}:[\w.]+:(?=\S)"),  # logging.basicConfig: ERROR:torch.distributed...:failed
    re.compile(rf"^\[\s*{_LEVEL}\s*\]\s*(?:[-:|]\s*)?"),  # [INFO], [ WARNING] -
    re.compile(rf"^\[{_LEVEL}\|[\w.]+:\d+\]\s*(?:{_STAMP})?\s*(?:>>\s*)?"),  # [INFO|modeling_utils.py:3319] ... >>
    re.compile(rf"^{_LEVEL}\s+(?:{_STAMP}\s+)?(?:[\w.]+:\d+\]\s*)?(?:[-:|]\s+)?(?=\S)"),  # vLLM: INFO 06-28 ... x.py:9]
    re.compile(rf"^[\w.]+ - {_LEVEL} - "),  # name - LEVEL - message
    re.compile(rf"^{_LEVEL} - [\w.]+ - +"),  # LEVEL - name - message
    re.compile(rf"^[\w.]+ {_LEVEL}: "),  # ppdet.engine INFO:
    re.compile(r"^\|\s*[\w.]+:\s"),  # mmf: "| mmf.utils.general: " after its timestamp
    re.compile(r"^std(?:out|err): "),
]
# After a prefix was stripped, bracketed or parenthesized tokens that follow are more of the same ([pid], [uuid],
# [launch.py:316:sigkill_handler]).
_MORE_PREFIX = re.compile(r"^(?:\[[^\[\]]{1,80}\]|\([^()]{1,40}pid[^()]{0,40}\)) ?(?:[-:] )?")

# Lines that start something new when found glued after other output on the same line (tqdm bars end with no
# newline).
_GLUE = re.compile(r"(?:Traceback \(most recent call last\)|(?:Original )?Traceback \(most recent call last\)"
                   r"|\[rank\d+\]:|\[E ProcessGroupNCCL|\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d|ERROR:torch\.distributed"
                   r"|terminate called after throwing|\{'(?:loss|train_runtime|eval_loss)'|\[E\d{3,4} \d\d:"
                   r"|[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ )")

_HEADER = re.compile(r"^(?:Original )?Traceback \(most recent call last\):?\s*$")
_RICH_TOP = re.compile(r"^[╭+]─*[-─ ]*Traceback \(most recent call last\)[-─ ]*[╮+]\s*$")
_CHAIN = re.compile(r"^(?:During handling of the above exception, another exception occurred:"
                    r"|The above exception was the direct cause of the following exception:)\s*$")
# "SomeError: message", "torch.OutOfMemoryError: ...", a bare "KeyboardInterrupt"
_EXC_LINE = re.compile(r"^(?P<type>(?:[A-Za-z_]\w*\.)*[A-Z]\w*)(?::(?P<msg>.*))?$")
_BARE_EXC = re.compile(r"(?:Error|Exception|Interrupt|Exit|Warning|Failure|Iteration|Fault)$")
_CPP_ABORT = re.compile(r"^terminate called after throwing an instance of '(?P<type>[^']+)'")
_CPP_WHAT = re.compile(r"^\s*what\(\):\s*(?P<msg>.*)$")
_FAULTHANDLER = re.compile(r"^Fatal Python error: (?P<msg>.+)$")

# ------------------------------------------------------------------ what is what
# Launchers report a child's failure; their own traceback is never the root cause.
_LAUNCHER_TYPES = ("ChildFailedError", "CalledProcessError", "SubprocessError")
_LAUNCHER_FRAMES = re.compile(r"torch/distributed/(?:run|launch|launcher|elastic)|accelerate/commands/(?:launch|"
                              r"accelerate_cli)|deepspeed/launcher|torch/multiprocessing/spawn")
# An exception that only carries another one (whose own traceback follows).
_WRAPPERS = re.compile(r"Caught \w+ in (?:DataLoader worker|replica)|terminated with the following error")
# What another rank's death or a stop does to the survivors: never the root cause while something else is there.
_SECONDARY = re.compile(r"connection reset by peer|broken pipe|connection closed by (?:remote )?peer|"
                        r"ncclRemoteError|remote process exited|communicator was aborted|process group (?:was )?"
                        r"aborted|exited unexpectedly|Socket Timeout|The server socket has failed|"
                        r"Sending process \d+ closing signal|TCPStore.*(?:failed|timed out)", re.IGNORECASE)
# Boilerplate hints after an exception line: never the error a user is shown.
_HINTS = re.compile(r"^(?:CUDA kernel errors might be asynchronously reported|For debugging consider passing "
                    r"CUDA_LAUNCH_BLOCKING|Compile with `?TORCH_USE_CUDA_DSA|To enable traceback see|"
                    r"error_file:|traceback\s*:|See https?://|Checkout your internet connection|"
                    r"For information about writing templates|\(look up to see its traceback\))", re.IGNORECASE)
# Fatal lines that mean something without a traceback (the last resort before the exit code).
_FATAL_LINES = re.compile(
    r"Watchdog caught collective operation timeout|Process group watchdog thread terminated|"
    r"NCCL error|ncclSystemError|ncclInternalError|ncclUnhandledCudaError|CUDA error|CUBLAS_STATUS_\w+|cuDNN error|"
    r"out of memory|No space left on device|Disk quota exceeded|Input/output error|Permission denied|"
    r"Assertion `[^`]+` failed|Unexpected bus error|is killed by signal|killed due to (?:the node running low on "
    r"memory|memory pressure)|Segmentation fault|Fatal Python error|Aborted \(core dumped\)|Bus error|"
    r"Illegal instruction|^Killed\s*$|exits with return code = -?\d+|failed \(exitcode: -?\d+\)|"
    r"received by PID|died with <Signals|^(?:\S+: )?error: |^Error: |^(?:[a-z_]\w*\.)*[A-Z]\w*(?:Error|Exception): ",
    re.IGNORECASE)
_SIGNAL_LINES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^Killed\s*$"), "SIGKILL"),
    (re.compile(r"Segmentation fault|Fatal Python error: Segmentation fault"), "SIGSEGV"),
    (re.compile(r"Aborted \(core dumped\)|^Aborted\s*$|Fatal Python error: Aborted"), "SIGABRT"),
    (re.compile(r"^Bus error|Fatal Python error: Bus error"), "SIGBUS"),
    (re.compile(r"^Illegal instruction"), "SIGILL"),
    (re.compile(r"(?:exitcode\s*:?\s*|return code = |exit status |exited with code )(?P<num>-\d+)"), ""),
    (re.compile(r"Signal (?P<num>\d+) \(SIG\w+\) received by PID"), "+"),
    (re.compile(r"died with <Signals\.(?P<name>SIG\w+)"), "name"),
]
_SIGNAL_MARKER = re.compile(r"^(?:Killed|Aborted|Segmentation fault|Bus error|Illegal instruction)"
                            r"(?: \(core dumped\))?\s*$")
_PROGRESS = re.compile(r"\d+%\|[^|]*\||\d+/\d+ \[\d+:\d+|it/s\]|s/it\]")
_LAUNCHER_LINES = re.compile(r"failed \(exitcode|exits with return code|received by PID|returned non-zero exit "
                             r"status|died with <Signals", re.IGNORECASE)
_GENERIC = re.compile(r"^(?:An? )?error (?:occurred|happened)|^$", re.IGNORECASE)
_NUMBERS = re.compile(r"0x[0-9a-fA-F]+|\d+")


@dataclass(frozen=True)
class LogLine:
    """One line as a process wrote it: who (a rank, an actor, a service; "" when nobody said) and the text after
    the launcher's and the logger's prefixes."""

    source: str
    text: str
    prefixed: bool = False  # a logger or launcher prefix was removed (a log record, not raw stderr)


def clean(raw: str) -> str:
    """What a terminal would finally show of a raw line: the text after its last carriage return (tqdm redraws),
    without escape sequences or control characters."""
    text = raw.rstrip("\r\n")
    if "\r" in text:
        text = text.rsplit("\r", 1)[-1]
    return _CONTROL.sub("", _ANSI.sub("", text).replace("\t", "    ")) if ("\x1b" in text or "\t" in text or
                                                                           _CONTROL.search(text)) else text


def strip_prefix(raw: str) -> LogLine:
    """A line without the prefixes launchers and loggers add, and who wrote it."""
    text = clean(raw)
    source = ""
    prefixed = False
    for _ in range(8):
        before = text
        for pattern, kind in _SOURCE_PREFIXES:
            m = pattern.match(text)
            if m:
                src = m.group("src")
                if not source:
                    source = f"rank {src}" if kind == "rank" else src
                text = text[m.end() :]
                prefixed = True
                break
        else:
            for plain in _PLAIN_PREFIXES:
                m = plain.match(text)
                if m and m.end() > 0:
                    text = text[m.end() :]
                    prefixed = True
                    break
            else:
                if prefixed:
                    m = _MORE_PREFIX.match(text)
                    if m and m.end() < len(text):
                        text = text[m.end() :]
        if text == before:
            break
    return LogLine(source, text, prefixed)


def read_lines(raw_lines: Iterable[str]) -> list[LogLine]:
    """Raw output as prefix-stripped lines; a traceback (or a launcher's or logger's line) glued after progress
    output on the same line becomes a line of its own, from the same process."""
    out: list[LogLine] = []
    for raw in raw_lines:
        line = strip_prefix(raw)
        text = line.text
        m = _GLUE.search(text, 1)
        while m is not None:
            head = text[: m.start()]
            if not head.strip() or not (_PROGRESS.search(head) or "%" in head
                                         or head.rstrip().endswith(("]", "|", ":", "^C"))):
                break
            out.append(LogLine(line.source, head, line.prefixed))
            text = text[m.start() :]
            m = _GLUE.search(text, 1)
        if text is not line.text:
            inner = strip_prefix(text)
            line = LogLine(inner.source or line.source, inner.text, True)
        out.append(line)
    return out


# ------------------------------------------------------------------ pretty (rich) tracebacks
_BOX_SIDE = re.compile(r"^[│|] ?(?P<body>.*?) ?[│|]?\s*$")
_RICH_FRAME = re.compile(r"^(?P<path>\S.*?):(?P<line>\d+) in (?P<func>\S+)\s*$")
_RICH_WRAPPED_PATH = re.compile(r"^(?:[A-Za-z]:)?[\\/~.]\S*(?::|:\d+ in)?$")
_RICH_CODE = re.compile(r"^(?:❱|>)?\s*(?P<num>\d+)\s*[│|]\s?(?P<code>.*)$")


def unwrap_rich(lines: list[LogLine]) -> list[LogLine]:
    """Rich's boxed tracebacks as plain ones: `Traceback (most recent call last):`, `  File "p", line N, in f`
    with the highlighted code line, then the exception line (and its wrapped continuation, joined)."""
    out: list[LogLine] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not _RICH_TOP.match(line.text.strip()):
            out.append(line)
            i += 1
            continue
        width = len(line.text.strip())
        out.append(LogLine(line.source, "Traceback (most recent call last):", line.prefixed))
        i += 1
        depth = 1
        pending_path = ""
        frame: LogLine | None = None
        while i < len(lines) and depth:
            text = lines[i].text.strip()
            i += 1
            ascii_rule = text.startswith("+-") and text.endswith("+")
            if text.startswith("╭") or ascii_rule and re.search(r"[A-Za-z]", text):
                depth += 1
                continue
            if text.startswith("╰") or ascii_rule:
                depth -= 1
                continue
            m = _BOX_SIDE.match(text)
            body = (m.group("body") if m else text).strip().rstrip("│").strip()
            if depth > 1 or not body:
                continue  # locals panels and spacing
            fm = _RICH_FRAME.match(pending_path + body)
            if fm:
                pending_path = ""
                frame = LogLine(line.source, f'  File "{fm.group("path")}", line {fm.group("line")}, in '
                                f'{fm.group("func")}', line.prefixed)
                out.append(frame)
                continue
            if _RICH_WRAPPED_PATH.match(body) and not pending_path.endswith(body):
                pending_path += body  # a long path rich wrapped before its line number
                continue
            cm = _RICH_CODE.match(body)
            if cm and body.lstrip().startswith(("❱", ">")):
                out.append(LogLine(line.source, "    " + cm.group("code").strip(), line.prefixed))
        # the exception line(s) after the box, wrapped at the box's width
        if i < len(lines):
            exc = lines[i]
            text = exc.text.rstrip()
            i += 1
            while (i < len(lines) and len(text) >= width - 12 and lines[i].text.strip() and not lines[i].prefixed
                   and not _GLUE.match(lines[i].text) and not _RICH_TOP.match(lines[i].text.strip())
                   and not _HEADER.match(lines[i].text.strip())):
                text += " " + lines[i].text.strip()
                i += 1
            out.append(LogLine(exc.source, text, exc.prefixed))
    return out


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
    for keep in (lambda r: not r.wrapper, lambda r: not r.secondary):
        pool = [r for r in pool if keep(r)] or pool
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
