"""Reading growing files by byte offset, the way toolong tails logs: only complete lines are consumed.

Bounded in every direction: a read consumes at most `max_bytes` (the rest waits for the next call, `pending` says
so), a line longer than MAX_LINE is skipped and counted without ever being held in memory (memory per reader is
at most one block plus MAX_LINE), and anything that is not a regular file (a directory, a FIFO, a device) is
never opened for reading.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

BLOCK_SIZE = 4 * 1024 * 1024
MAX_LINE = 1024 * 1024  # longer lines are skipped (a crash can leave gigabytes of NUL bytes without a newline)
CUT_NOTE = " … [twinkle: the rest of this line was cut (over 1 MiB); output.log has all of it]".encode()
FINGERPRINT = 64  # bytes just before the offset, re-checked on every read to notice a rewrite of the file


# Escape sequences (CSI, OSC, DCS/PM/APC strings, and two- or three-byte ones such as ESC c that resets a terminal
# or ESC ( 0 that switches its character set), then every control character left but tab.
ANSI_RE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC
    r"|\x1b[P^_X][^\x1b]*(?:\x1b\\)?"  # DCS, PM, APC, SOS strings
    r"|\x1b[ -/]*[0-~]"  # ESC c, ESC ( 0, ESC 7 ...
    r"|\x1b"  # a lone ESC
)
CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_log_line(raw: bytes) -> str:
    """Decode a log line, keep what a terminal would finally show after carriage returns, and drop every escape
    sequence and control character: the log panel shows text, never terminal commands."""
    text = raw.decode("utf-8", "replace").rstrip("\r")
    if "\r" in text:
        text = text.rsplit("\r", 1)[-1]
    text = ANSI_RE.sub("", text).replace("\t", "    ")
    return CONTROL_RE.sub("", text)


class FileTail:
    """Yields the complete lines appended to a file since the last read.

    A torn last line (no newline yet) is left in the file for the next read, so a line half-written by another
    process is never seen. If the file is replaced, truncated or rewritten in place, `reset` is set and reading
    starts over.
    """

    def __init__(self, path: Path, block_size: int = BLOCK_SIZE, max_line: int = MAX_LINE,
                 keep_head: bool = False) -> None:
        self.path = path
        self.offset = 0
        self.block_size = block_size
        self.max_line = max_line
        self.keep_head = keep_head  # an overlong line yields its first max_line bytes and a note, not nothing
        self._inode: int | None = None
        self._size = 0
        self._fingerprint = b""
        self.reset = False
        self.pending = False  # more complete data is waiting than the last read took
        self.skipping = False  # inside an overlong line: bytes up to its newline are dropped
        self.overlong = 0  # lines skipped for being longer than max_line
        self.problem: str | None = None  # why the file cannot be read (not a regular file, permissions)

    def has_new_data(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self._inode is not None
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode):
            return self.problem is None
        return self.pending or st.st_ino != self._inode or st.st_size != self._size

    def seek_to_last(self, nbytes: int) -> None:
        """Start at a line boundary about `nbytes` before the end (for tails of large logs)."""
        try:
            f = self._open()
        except OSError:
            return
        with f:
            st = os.fstat(f.fileno())
            self._inode = st.st_ino
            start = max(0, st.st_size - nbytes)
            if start:
                f.seek(start - 1)
                # skip the partial line unless we landed just after a newline
                start += len(f.readline(self.max_line)) - 1
            self.offset = start
            self._remember(f)

    @property
    def history(self) -> bytes:
        """The bytes just before the offset, as last read (what the next read checks to notice a rewrite)."""
        return self._fingerprint

    def resume_at(self, offset: int, inode: int, history: bytes, skipping: bool = False, overlong: int = 0) -> None:
        """Go on from a position read earlier (by this reader or a cache of it): the next read starts at `offset`
        of the file with `inode`, whose bytes before the offset were `history`."""
        self.offset, self._inode, self._size, self._fingerprint = offset, inode, offset, history
        self.skipping, self.overlong, self.reset, self.pending = skipping, overlong, False, False

    def _open(self) -> BinaryIO:
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise IsADirectoryError(f"{self.path.name} is not a regular file")
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def _remember(self, f: BinaryIO) -> None:
        """The bytes just before the offset: if they change, the file was rewritten under us."""
        start = max(0, self.offset - FINGERPRINT)
        f.seek(start)
        self._fingerprint = f.read(self.offset - start)

    def blocks(self, max_bytes: int | None = None) -> Iterator[list[bytes]]:
        """Complete new lines (without their newline), a block of up to ~block_size bytes at a time, until
        max_bytes were consumed (then `pending` is set if more is there)."""
        self.reset = False
        self.pending = False
        try:
            f = self._open()
        except FileNotFoundError:
            if self._inode is not None:
                self._restart()
                self._inode = None
            return
        except OSError as exc:
            self.problem = str(exc) if isinstance(exc, IsADirectoryError) else (exc.strerror or str(exc))
            return
        self.problem = None
        with f:
            st = os.fstat(f.fileno())
            if self._inode is not None and (st.st_ino != self._inode or st.st_size < self.offset
                                            or not self._same_history(f)):
                self._restart()
            self._inode = st.st_ino
            self._size = st.st_size
            f.seek(self.offset)
            budget = max_bytes if max_bytes is not None else float("inf")
            carry = b""
            consumed = 0
            while consumed < budget:
                data = f.read(self.block_size)
                if not data:
                    break
                if self.skipping:
                    end = data.find(b"\n")
                    if end < 0:  # still inside the overlong line: drop it all and move on
                        self.offset += len(data)
                        consumed += len(data)
                        continue
                    self.skipping = False
                    self.offset += end + 1
                    consumed += end + 1
                    data = data[end + 1 :]
                data = carry + data
                end = data.rfind(b"\n")
                if end < 0:
                    carry = data
                    if len(carry) > self.max_line:
                        head = self._skip_line(carry)
                        consumed += len(carry)
                        carry = b""
                        if head:
                            yield head
                    continue
                carry = data[end + 1 :]
                self.offset += end + 1
                consumed += end + 1
                lines = data[:end].split(b"\n")
                if self.max_line and any(len(line) > self.max_line for line in lines):
                    kept = [self._head(line) if len(line) > self.max_line else line for line in lines]
                    lines = [line for line in kept if line is not None]
                    self.overlong += sum(line is None or line.endswith(CUT_NOTE) for line in kept)
                head = None
                if len(carry) > self.max_line:
                    head = self._skip_line(carry)
                    consumed += len(carry)
                    carry = b""
                yield lines + (head or [])
            else:
                self.pending = self.offset + len(carry) < st.st_size
            self._remember(f)

    def _skip_line(self, carry: bytes) -> list[bytes] | None:
        """Skip the rest of an overlong line that `carry` starts; with keep_head, its head is the one line returned."""
        self.offset += len(carry)
        self.skipping = True
        self.overlong += 1
        return [carry[: self.max_line] + CUT_NOTE] if self.keep_head else None

    def _head(self, line: bytes) -> bytes | None:
        return line[: self.max_line] + CUT_NOTE if self.keep_head else None

    def read_final_lines(self) -> list[bytes]:
        """What is left once the writer is gone: the complete lines, then a last line that never got its newline
        (a final `print(..., end="")`), so nothing the run wrote is lost."""
        lines = self.read_lines()
        if self.skipping:
            return lines
        try:
            f = self._open()
        except OSError:
            return lines
        with f:
            f.seek(self.offset)
            rest = f.read(self.max_line + 1)
        if rest and b"\n" not in rest:
            self.offset += len(rest)
            lines.append(rest[: self.max_line] + (CUT_NOTE if len(rest) > self.max_line else b""))
        return lines

    def _same_history(self, f: BinaryIO) -> bool:
        if not self._fingerprint:
            return True
        start = self.offset - len(self._fingerprint)
        f.seek(start)
        return bool(f.read(len(self._fingerprint)) == self._fingerprint)

    def _restart(self) -> None:
        self.offset, self.reset, self.skipping, self._fingerprint = 0, True, False, b""

    def read_lines(self, max_bytes: int | None = None) -> list[bytes]:
        """All complete new lines at once (up to max_bytes of them)."""
        out: list[bytes] = []
        for block in self.blocks(max_bytes):
            out.extend(block)
        return out


def read_last_lines(path: Path, count: int, chunk: int = 64 * 1024, max_bytes: int = 8 * 1024 * 1024) -> list[str]:
    """The last `count` lines of a text file (decoded, cleaned of terminal control sequences), reading backwards
    from the end: at most max_bytes, whatever the file's size."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return []
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return []
        end = st.st_size
        data = b""
        while end > 0 and data.count(b"\n") <= count and len(data) < max_bytes:
            start = max(0, end - chunk)
            f.seek(start)
            data = f.read(end - start) + data
            end = start
    lines = data.split(b"\n")
    if end > 0:
        lines = lines[1:]  # the first one is cut
    if lines and not lines[-1]:
        lines.pop()
    return [clean_log_line(line) for line in lines[-count:]]
