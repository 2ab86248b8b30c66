"""Request bodies the SDK sends without a type of its own (the others are the SDK's pydantic types)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class FinishReason(BaseModel):
    type: Literal["success", "errored", "interrupted"]


class FinishSessionRequest(BaseModel):
    """ServiceClient.close(status, detail): the session ends, its runs with the status the client names."""

    model_config = ConfigDict(extra="ignore")
    reason: FinishReason
    detail: str | None = None


class WeightsInfoRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    tinker_path: str


class TtlRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    ttl_seconds: int | None = None
