"""What the service refuses, and how a refusal reaches the client: one sentence and an HTTP status."""

from __future__ import annotations


class ServiceError(ValueError):
    """A request the service refuses; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class EngineError(ValueError):
    """A computation this service refuses or cannot serve (a model, a checkpoint, a size); one sentence."""


class MemoryBudgetError(EngineError):
    """A request that cannot be computed within the service's memory budget; says what it needs and what fits."""
