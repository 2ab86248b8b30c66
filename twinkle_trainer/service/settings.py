"""The service's settings, as `python -m twinkle_trainer.service` (and `twinkle-tui serve`) resolve them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # never logged, never written anywhere
    compress_fwdbwd: bool = False  # ask the SDK to zstd-compress forward_backward bodies (--zstd)
