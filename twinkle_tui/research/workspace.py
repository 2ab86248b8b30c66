"""The research's git workspace: every experiment is a commit.

The branch `research` holds the best experiment so far (kept experiments advance it); every experiment, kept,
discarded or crashed, also has its own ref `refs/experiments/eNNN`, so its diff against its parent can be shown
later (`git -C WORKSPACE diff eNNN~ eNNN`). Experiments are built without touching the work tree (a private index
per commit) and exported to their own folder, so several lanes can commit and run at once.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

BRANCH = "research"
MAX_COPY_BYTES = 200 * 1024 * 1024
MAX_COPY_FILES = 5000
SKIP_DIRS = {".git", "__pycache__", ".venv", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
GIT_ENV = {"GIT_AUTHOR_NAME": "twinkle-research", "GIT_AUTHOR_EMAIL": "research@twinkle.local",
           "GIT_COMMITTER_NAME": "twinkle-research", "GIT_COMMITTER_EMAIL": "research@twinkle.local",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}


class WorkspaceError(Exception):
    """A git operation of the workspace failed; the message is one line."""


@dataclass(frozen=True)
class DiffStat:
    added: int
    removed: int
    files: tuple[str, ...]


class Workspace:
    """A git repository under the research directory (work tree: the best experiment's files)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.Lock()  # one writer of refs and the work tree at a time

    @property
    def exists(self) -> bool:
        return (self.root / ".git").is_dir()

    def git(self, *args: str, input: bytes | None = None, env: dict[str, str] | None = None) -> bytes:
        full_env = {**os.environ, **GIT_ENV, **(env or {})}
        try:
            proc = subprocess.run(["git", "-C", str(self.root), *args], input=input, capture_output=True,
                                  env=full_env, check=False)
        except FileNotFoundError:
            raise WorkspaceError("git is not installed; the research workspace needs it") from None
        if proc.returncode != 0:
            reason = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            raise WorkspaceError(f"git {args[0]} failed: {reason[-1] if reason else proc.returncode}")
        return proc.stdout

    def text(self, *args: str) -> str:
        return self.git(*args).decode("utf-8", "replace").strip()

    # ------------------------------------------------------------------ creation
    def create(self, source: Path, exclude: set[str]) -> str:
        """Copy the program's folder in (data files too, not the program file itself) and commit it as the
        baseline; returns its commit."""
        files = list(_folder_files(source, exclude))
        total = sum(p.stat().st_size for _, p in files)
        if len(files) > MAX_COPY_FILES or total > MAX_COPY_BYTES:
            raise WorkspaceError(f"the program's folder {source} holds {len(files)} files, {total / 2**20:.0f} MiB; "
                                 f"keep it under {MAX_COPY_FILES} files and {MAX_COPY_BYTES // 2**20} MiB "
                                 "(put large data elsewhere and read it by absolute path)")
        self.root.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", f"--initial-branch={BRANCH}")
        for rel, path in files:
            target = self.root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        (self.root / ".gitignore").write_text("__pycache__/\n*.pyc\n")
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", "baseline: the program as written")
        return self.head()

    def refresh(self, source: Path, exclude: set[str]) -> str:
        """The program's folder as it is now, committed on the branch (a baseline that gave no metric, fixed by the
        user before --resume); returns the new head (the old one when nothing changed)."""
        with self.lock:
            for rel, path in _folder_files(source, exclude):
                target = self.root / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
            self.git("add", "-A")
            if self.text("status", "--porcelain"):
                self.git("commit", "-q", "-m", "baseline: the program as changed before --resume")
        return self.head()

    def head(self) -> str:
        return self.text("rev-parse", f"refs/heads/{BRANCH}")

    # ------------------------------------------------------------------ experiments
    def commit(self, parent: str, files: dict[str, str], message: str) -> str:
        """A new commit: the parent's tree with `files` (path -> full text) replaced; no ref is moved."""
        with tempfile.TemporaryDirectory(prefix="twinkle-index-") as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            self.git("read-tree", parent, env=env)
            modes = self._modes(parent)
            for path, content in sorted(files.items()):
                blob = self.text_of(self.git("hash-object", "-w", "--stdin", input=content.encode("utf-8")))
                mode = modes.get(path, "100644")
                self.git("update-index", "--add", "--cacheinfo", f"{mode},{blob},{path}", env=env)
            tree = self.text_of(self.git("write-tree", env=env))
        return self.text_of(self.git("commit-tree", tree, "-p", parent, "-m", message))

    @staticmethod
    def text_of(raw: bytes) -> str:
        return raw.decode().strip()

    def _modes(self, commit: str) -> dict[str, str]:
        out = {}
        for line in self.git("ls-tree", "-r", "-z", commit).split(b"\0"):
            if line:
                meta, path = line.split(b"\t", 1)
                out[path.decode()] = meta.split()[0].decode()
        return out

    def tag_experiment(self, experiment: str, commit: str) -> None:
        self.git("update-ref", f"refs/experiments/{experiment}", commit)

    def advance(self, commit: str) -> None:
        """Make `commit` the best: the branch and the work tree follow it."""
        with self.lock:
            self.git("update-ref", f"refs/heads/{BRANCH}", commit)
            self.git("reset", "-q", "--hard", commit)

    def read(self, commit: str, path: str) -> str | None:
        try:
            return self.git("show", f"{commit}:{path}").decode("utf-8", "replace")
        except WorkspaceError:
            return None

    def export(self, commit: str, folder: Path) -> Path:
        """The files of `commit` in `folder` (created fresh), as an experiment runs them."""
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        data = self.git("archive", "--format=tar", commit)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(folder, filter="data")
        return folder

    def diff(self, parent: str | None, commit: str) -> str:
        if not parent or parent == commit:
            return ""
        return self.git("diff", "--no-color", parent, commit).decode("utf-8", "replace")

    def diffstat(self, parent: str, commit: str) -> DiffStat:
        added = removed = 0
        files = []
        for line in self.text("diff", "--numstat", parent, commit).splitlines():
            a, r, path = line.split("\t", 2)
            added += int(a) if a.isdigit() else 0
            removed += int(r) if r.isdigit() else 0
            files.append(path)
        return DiffStat(added, removed, tuple(files))


def _folder_files(source: Path, exclude: set[str]) -> list[tuple[str, Path]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(source).as_posix()
            if rel in exclude or name.endswith(".pyc") or path.is_symlink() or not path.is_file():
                continue
            out.append((rel, path))
    return out
