"""A run's script as Python sees it: read in the encoding its coding line declares (PEP 263), written back in that
encoding, checked by the compiler, compared as a diff, and judged for what a change adds that nobody should run
unread (file deletion, new processes, network calls)."""

from __future__ import annotations

import ast
import difflib
import io
import os
import shutil
import tokenize
from dataclasses import dataclass
from pathlib import Path

from twinkle_trainer.protocol import RunMeta, RunPaths, read_meta, update_meta


class ScriptError(Exception):
    """A script that cannot be read, written or compiled; the message is one line."""


def source_encoding(data: bytes, name: str = "script") -> str:
    """The encoding Python reads these bytes in: a BOM or a coding line in the first two lines, else UTF-8."""
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    except (SyntaxError, LookupError) as exc:
        raise ScriptError(f"{name} is not readable as Python source: {exc}") from None
    return encoding


def decode_source(data: bytes, name: str = "script") -> str:
    """The text of a script's bytes, decoded as Python would decode them (a BOM is not part of the text)."""
    encoding = source_encoding(data, name)
    try:
        return data.decode(encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        raise ScriptError(f"{name} is not readable as Python source ({encoding}): {exc}") from None


def encode_source(text: str, name: str = "script") -> bytes:
    """The bytes of a script's text in the encoding its own coding line declares (UTF-8 without one), so the file
    means what the text says when Python reads it back."""
    head = "\n".join(text.splitlines()[:2]).encode("ascii", "replace") + b"\n"
    encoding = source_encoding(head, name)
    if encoding == "utf-8-sig":
        encoding = "utf-8"
    try:
        return text.encode(encoding)
    except (UnicodeEncodeError, LookupError) as exc:
        raise ScriptError(f"{name} declares the encoding {encoding}, which cannot hold its text: {exc}") from None


def read_script(path: Path) -> str:
    """A script's text (UTF-8, or what its coding line declares), or ScriptError with one line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ScriptError(f"cannot read script {path}: {exc.strerror or exc}") from None
    return decode_source(data, path.name)


def write_script(path: Path, text: str) -> None:
    """Write a script in its declared encoding, atomically (readers see the old file or the new one)."""
    data = encode_source(text, path.name)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ScriptError(f"cannot write {path}: {exc.strerror or exc}") from None


def read_checked(path: Path) -> str:
    """A script's text, or ScriptError if it cannot be read or does not compile."""
    source = read_script(path)
    check_compiles(source, str(path))
    return source


def write_version(paths: RunPaths, data: bytes) -> int:
    """Archive the run's train.py as train_v{N}.py (byte for byte) and write `data` as version N+1, recorded in
    meta.json; returns the new version."""
    current = read_meta(paths).script_version
    try:
        if paths.script.exists():
            current = max(current, 1)
            shutil.copy2(paths.script, paths.script_version(current))
        tmp = paths.script.with_name(".train.py.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, paths.script)
    except OSError as exc:
        raise ScriptError(exc.strerror or str(exc)) from None

    def versioned(meta: RunMeta) -> None:
        meta.script_version = current + 1

    update_meta(paths, versioned)
    return current + 1


def check_compiles(source: str, filename: str) -> None:
    """Refuse a script that does not compile, with the compiler's one-line reason."""
    try:
        compile(source, filename, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise ScriptError(f"{Path(filename).name} does not compile: {exc.msg} (line {exc.lineno})") from None
    except ValueError as exc:
        raise ScriptError(f"{Path(filename).name} does not compile: {exc}") from None


def script_diff(old: str, new: str, name: str = "train.py") -> str:
    """A unified diff of two versions of a script."""
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"a/{name}", f"b/{name}"))


def cut_diff(diff: str, max_lines: int = 80, where: str | None = None) -> str:
    """At most max_lines of a diff, with a line that says how much was left out and where the whole script is."""
    lines = diff.splitlines()
    if len(lines) <= max_lines:
        return diff
    rest = f"… {len(lines) - max_lines} more lines of the diff" + (f"; the whole script: {where}" if where else "")
    return "\n".join([*lines[:max_lines], rest]) + "\n"


# What a fix may not add without a person reading it: calls and modules that delete files, start processes or talk
# to the network. A name that the script already used is not new.
DELETING = {"os.remove", "os.unlink", "os.rmdir", "os.removedirs", "shutil.rmtree", "shutil.move", "unlink", "rmdir",
            "rmtree", "os.truncate"}
SPAWNING = {"os.system", "os.popen", "os.fork", "os.forkpty", "os.kill", "os.killpg", "subprocess", "pty.spawn",
            "os.execv", "os.execve", "os.execvp", "os.execl", "os.execlp", "os.spawnv", "os.spawnl", "os.posix_spawn"}
NETWORK = {"socket", "urllib", "urllib.request", "http.client", "requests", "httpx", "aiohttp", "ftplib", "smtplib",
           "telnetlib", "paramiko", "urlopen"}
EVALUATING = {"eval", "exec", "__import__", "importlib.import_module"}
MAX_FIX_BYTES = 200_000
MAX_CHANGED_SHARE = 0.3
MIN_CHANGED_LINES = 20


def _names(source: str) -> set[str]:
    """Dotted names a script calls or imports (`os.remove`, `subprocess`, `rmtree`), as written in its source."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return set()
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Call):
            parts: list[str] = []
            func: ast.expr = node.func
            while isinstance(func, ast.Attribute):
                parts.append(func.attr)
                func = func.value
            if isinstance(func, ast.Name):
                parts.append(func.id)
            if parts:
                dotted = ".".join(reversed(parts))
                found.add(dotted)
                found.add(parts[0])  # the method name alone: path.unlink(), p.rmtree()
    return found


def _matches(names: set[str], kinds: set[str]) -> list[str]:
    return sorted(n for n in names if n in kinds or n.split(".", 1)[0] in kinds)


@dataclass(frozen=True)
class FixRisk:
    """Why a change to a script needs a person's yes before it runs."""

    reasons: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.reasons)

    def __str__(self) -> str:
        return "; ".join(self.reasons)


def fix_risks(old: str, new: str) -> FixRisk:
    """What a proposed script does that an automatic fix may not: grow far past the script it replaces, rewrite
    a large share of it, or add file deletion, process spawning, network access or dynamic code."""
    reasons: list[str] = []
    size = len(new.encode("utf-8", "replace"))
    if size > MAX_FIX_BYTES or size > 2 * len(old.encode("utf-8", "replace")) + 4096:
        reasons.append(f"it is {size:,} bytes, far more than the script it replaces ({len(old):,})")
    matcher = difflib.SequenceMatcher(None, old.splitlines(), new.splitlines(), autojunk=False)
    changed = sum(max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal")
    total = max(len(old.splitlines()), 1)
    if changed >= MIN_CHANGED_LINES and changed / total > MAX_CHANGED_SHARE:
        reasons.append(f"it changes {changed} of {total} lines")
    added = _names(new) - _names(old)
    for label, kinds in (("deletes files", DELETING), ("starts processes", SPAWNING), ("uses the network", NETWORK),
                         ("runs dynamic code", EVALUATING)):
        hits = _matches(added, kinds)
        if hits:
            reasons.append(f"it {label} ({', '.join(hits[:3])})")
    return FixRisk(tuple(reasons))


def previous_version(paths: RunPaths, current: int) -> bytes:
    """The bytes of the script version before `current` (what undo puts back)."""
    previous = paths.script_version(current - 1)
    if current < 2 or not previous.is_file():
        raise ScriptError(f"run {paths.run_id!r} has no earlier version of its script to go back to")
    try:
        return previous.read_bytes()
    except OSError as exc:
        raise ScriptError(f"cannot read {previous.name}: {exc.strerror or exc}") from None


def same_bytes(a: Path, b: Path) -> bool:
    """Whether two files hold the same bytes (False when either cannot be read)."""
    try:
        return a.read_bytes() == b.read_bytes()
    except OSError:
        return False


__all__ = ["FixRisk", "ScriptError", "check_compiles", "cut_diff", "read_checked", "write_version", "decode_source", "encode_source",
           "fix_risks", "previous_version", "read_script", "same_bytes", "script_diff", "source_encoding", "write_script"]
