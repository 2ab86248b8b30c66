"""Reading growing files by byte offset, the way toolong tails logs: only complete lines are consumed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

BLOCK_SIZE = 4 * 1024 * 1024


class FileTail:
    """Yields the complete lines appended to a file since the last read.

    A torn last line (no newline yet) is left in the file for the next read, so a line half-written by another
    process is never seen. If the file is replaced or truncated, `reset` is set and reading starts over.
    """

    def __init__(self, path: Path, block_size: int = BLOCK_SIZE) -> None:
        self.path = path
        self.offset = 0
        self.block_size = block_size
        self._inode: int | None = None
        self.reset = False

    def has_new_data(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self._inode is not None
        return st.st_ino != self._inode or st.st_size != self.offset

    def seek_to_last(self, nbytes: int) -> None:
        """Start at a line boundary about `nbytes` before the end (for tails of large logs)."""
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                self._inode = st.st_ino
                start = max(0, st.st_size - nbytes)
                if start:
                    f.seek(start - 1)
                    # skip the partial line unless we landed just after a newline
                    start += len(f.readline()) - 1
                self.offset = start
        except FileNotFoundError:
            pass

    def blocks(self) -> Iterator[list[bytes]]:
        """Complete new lines (without their newline), a block of up to ~block_size bytes at a time."""
        self.reset = False
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            if self._inode is not None:
                self._inode, self.offset, self.reset = None, 0, True
            return
        with f:
            st = os.fstat(f.fileno())
            if self._inode is not None and (st.st_ino != self._inode or st.st_size < self.offset):
                self.offset, self.reset = 0, True
            self._inode = st.st_ino
            f.seek(self.offset)
            carry = b""
            while True:
                data = f.read(self.block_size)
                if not data:
                    return
                data = carry + data
                end = data.rfind(b"\n")
                if end < 0:
                    carry = data
                    continue
                carry = data[end + 1 :]
                self.offset += end + 1
                yield data[:end].split(b"\n")

    def read_lines(self) -> list[bytes]:
        """All complete new lines at once."""
        out: list[bytes] = []
        for block in self.blocks():
            out.extend(block)
        return out
