"""The service itself: liveness, capabilities, client configuration, telemetry (accepted and dropped)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from tinker import types as t

from twinkle_trainer.service.catalog import context_length
from twinkle_trainer.service.deps import ServiceDep, SettingsDep

router = APIRouter(prefix="/api/v1", tags=["service"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/get_server_capabilities", response_model_exclude_none=True)
def capabilities(service: ServiceDep) -> t.GetServerCapabilitiesResponse:
    return t.GetServerCapabilitiesResponse(supported_models=[
        t.SupportedModel(model_name=name, max_context_length=context_length(name), trainable=True, sampleable=True)
        for name in service.catalog.offered()])


@router.post("/client/config", response_model_exclude_none=True)
async def client_config(settings: SettingsDep) -> t.ClientConfigResponse:
    return t.ClientConfigResponse(pjwt_auth_enabled=False, proto_compress_fwdbwd=settings.compress_fwdbwd,
                                  sample_use_retrieve_futures=True, custom_loss_server_side=False,
                                  sample_join_sampling_session=True, use_pyqwest_transport=False)


@router.post("/client/dynamic_config", response_model_exclude_none=True)
async def dynamic_config() -> t.ClientDynamicConfigResponse:
    # a sample the SDK abandons is cancelled at once (/cancel_future), not when its session's heartbeats stop
    return t.ClientDynamicConfigResponse(sample_cancel_enabled=True)


@router.post("/telemetry")
async def telemetry() -> dict[str, Any]:
    return {"status": "accepted"}  # this service collects no telemetry: the SDK's events are dropped
