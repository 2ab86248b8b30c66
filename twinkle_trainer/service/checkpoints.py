"""Checkpoints by tinker:// path: tinker://RUN/weights/NAME (adapter + optimizer state) and
tinker://RUN/sampler_weights/NAME (adapter only), stored under the run's checkpoints/tinker/ folder.

Listing never deletes: expired checkpoints are left out of lists and refused when loaded, and `prune_expired`
(the service's housekeeping) removes them.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from twinkle_trainer.protocol import RunPaths, read_meta, validate_run_id
from twinkle_trainer.service.errors import EngineError, ServiceError
from twinkle_trainer.service.lora import CheckpointInfo
from twinkle_trainer.service.runs import SERVICE_SOURCE

log = logging.getLogger(__name__)

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
KINDS = ("weights", "sampler_weights", "external_weights")
TYPES = {"weights": "training", "sampler_weights": "sampler", "external_weights": "external"}  # the SDK's names
INFO_FILE = "tinker.json"
EPHEMERAL = "ephemeral"  # sampler weights saved without a name: not listed, deleted when the session ends


@dataclass(frozen=True)
class StoredCheckpoint:
    run_id: str
    kind: str  # weights or sampler_weights
    name: str
    folder: Path
    info: CheckpointInfo

    @property
    def tinker_path(self) -> str:
        return f"tinker://{self.run_id}/{self.kind}/{self.name}"

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())

    def files(self) -> list[str]:
        """The files a client may download (the service's own tinker.json is not one of them)."""
        return sorted(p.name for p in self.folder.iterdir() if p.is_file() and p.name != INFO_FILE)


class CheckpointStore:
    """Where checkpoints live and which tinker:// paths name them."""

    def __init__(self, home: Path, clock: Callable[[], float] = time.time) -> None:
        self.home, self.clock = home, clock

    def folder(self, run_id: str, kind: str, name: str) -> Path:
        if not NAME.fullmatch(name):
            raise ServiceError(f"checkpoint name {name!r}: use 1-128 letters, digits, '.', '_' and '-' (no slashes)")
        sub = "." + kind if kind == EPHEMERAL else kind
        return self.root(run_id) / sub / name

    def root(self, run_id: str) -> Path:
        return RunPaths(self.home / validate_run_id(run_id)).checkpoints / "tinker"

    def resolve(self, tinker_path: str) -> StoredCheckpoint:
        """The live (present, unexpired) checkpoint a tinker:// path names."""
        if not tinker_path.startswith("tinker://"):
            raise ServiceError(f"{tinker_path!r} is not a tinker:// path")
        parts = tinker_path[len("tinker://"):].split("/")
        if len(parts) != 3 or parts[1] not in KINDS:
            raise ServiceError(f"{tinker_path!r}: expected tinker://RUN/weights/NAME, "
                               "tinker://RUN/sampler_weights/NAME or tinker://RUN/external_weights/NAME")
        try:
            folder = self.folder(parts[0], parts[1], parts[2])
        except ValueError as exc:
            raise ServiceError(f"{tinker_path!r}: {exc}") from None
        if not (folder / "tinker.json").is_file():
            raise ServiceError(f"no checkpoint at {tinker_path}", 404)
        info = self._info(folder)
        if info.expires_at is not None and info.expires_at < self.clock():
            raise ServiceError(f"the checkpoint {tinker_path} expired", 404)
        return StoredCheckpoint(parts[0], parts[1], parts[2], folder, info)

    def _info(self, folder: Path) -> CheckpointInfo:
        try:
            return CheckpointInfo.read(folder)
        except EngineError as exc:
            raise ServiceError(str(exc)) from None

    def _stored(self, run_id: str) -> list[StoredCheckpoint]:
        out = []
        for kind in KINDS:
            folder = self.root(run_id) / kind
            if not folder.is_dir():
                continue
            for child in sorted(folder.iterdir()):
                if child.name.startswith(".") or not (child / "tinker.json").is_file():
                    continue
                try:
                    out.append(StoredCheckpoint(run_id, kind, child.name, child, CheckpointInfo.read(child)))
                except EngineError:
                    continue
        return out

    def of_run(self, run_id: str) -> list[StoredCheckpoint]:
        """A run's checkpoints that have not expired (expired ones are left for prune_expired)."""
        now = self.clock()
        return [c for c in self._stored(run_id) if c.info.expires_at is None or c.info.expires_at >= now]

    def prune_expired(self) -> int:
        """Delete every expired checkpoint of the runs this service knows; returns how many."""
        now, removed = self.clock(), 0
        for run_id in self.tinker_runs():
            for c in self._stored(run_id):
                if c.info.expires_at is not None and c.info.expires_at < now:
                    shutil.rmtree(c.folder, ignore_errors=True)
                    log.info("deleted the expired checkpoint %s", c.tinker_path)
                    removed += 1
        return removed

    def delete(self, run_id: str, checkpoint_id: str) -> None:
        shutil.rmtree(self.resolve(f"tinker://{run_id}/{checkpoint_id}").folder)

    def set_ttl(self, c: StoredCheckpoint, ttl: int | None) -> None:
        """A checkpoint expires `ttl` seconds from now (None: never)."""
        import dataclasses
        import json

        if ttl is not None and not 1 <= ttl <= 10 * 365 * 86400:
            raise ServiceError("ttl_seconds must be between 1 second and ten years, or null (no expiry)")
        info = dataclasses.replace(c.info, expires_at=self.clock() + ttl if ttl is not None else None)
        tmp = c.folder / f".{INFO_FILE}.tmp"
        tmp.write_text(json.dumps(dataclasses.asdict(info)))
        tmp.replace(c.folder / INFO_FILE)

    def last(self, run_id: str, kind: str) -> StoredCheckpoint | None:
        return max((c for c in self.of_run(run_id) if c.kind == kind), key=lambda c: c.info.created, default=None)

    def tinker_runs(self) -> list[str]:
        """Runs with tinker checkpoints or made by this service, newest first."""
        out = []
        for root in self.home.iterdir() if self.home.is_dir() else []:
            if root.name.startswith(".") or not root.is_dir():
                continue
            try:
                meta = read_meta(RunPaths(root))
            except Exception:
                continue
            if (meta.config or {}).get("source") == SERVICE_SOURCE or (root / "checkpoints" / "tinker").is_dir():
                out.append((meta.start_time or 0, root.name))
        return [r for _, r in sorted(out, reverse=True)]
