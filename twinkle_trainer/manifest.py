"""Checkpoint manifests: the size and hash of every file a checkpoint holds, written beside it, so a resume can tell
a whole checkpoint from a damaged one. Standard library only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

STATE_FILE = "twinkle_state.json"
MANIFEST_HASH_LIMIT = 64 * 1024 * 1024  # files up to this size are also hashed; larger ones are checked by size


def file_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """Size (and sha256 for files up to 64 MB) of every file under `folder`, by relative path."""
    import hashlib

    out: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name == STATE_FILE:
            continue
        entry: dict[str, Any] = {"size": path.stat().st_size}
        if entry["size"] <= MANIFEST_HASH_LIMIT:
            entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        out[str(path.relative_to(folder))] = entry
    return out


def verify_manifest(folder: Path, manifest: Any) -> str | None:
    """None if every file of the manifest is there, whole and unchanged; else what is wrong, in a few words."""
    if not isinstance(manifest, dict):
        return None  # written before manifests existed: nothing to check against
    import hashlib

    for name, entry in manifest.items():
        path = folder / name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != entry.get("size"):
            return f"{name} is {size} bytes, {entry.get('size')} were saved"
        digest = entry.get("sha256")
        if digest and hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            return f"{name} has changed since it was saved"
    return None
