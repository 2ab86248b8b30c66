"""Log lines as a process wrote them: terminal cleanup, the prefixes launchers and loggers add (and who wrote the
line), progress output glued before a traceback, and rich's boxed tracebacks unwrapped into plain ones; with the
patterns the log reader uses to tell what a line is. Standard library only."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

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
                   r"|[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ "
                   r"|(?:ERROR|CRITICAL|FATAL):? |(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception): )")

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
