"""Training models: create one, describe it, forward_backward (a protobuf body) and optim_step."""

from __future__ import annotations

import asyncio
import io

import zstandard
from fastapi import APIRouter, Request
from tinker import types as t

from twinkle_trainer.service import wire
from twinkle_trainer.service.catalog import architecture
from twinkle_trainer.service.deps import ServiceDep, SettingsDep, follow_recipe_soon, untyped
from twinkle_trainer.service.errors import ServiceError
from twinkle_trainer.service.lora import MAX_RANK, LoraSpec
from twinkle_trainer.service.training import Adam

router = APIRouter(prefix="/api/v1", tags=["training"])

MAX_BODY = 512 * 1024 * 1024
CHUNK = 1 << 20


@router.post("/create_model", response_model_exclude_none=True)
async def create_model(req: t.CreateModelRequest, service: ServiceDep) -> t.UntypedAPIFuture:
    session = service.sessions.get(req.session_id)
    if req.lora_config is None:
        raise ServiceError(f"this service trains LoRA adapters only: pass a LoRA config (rank 1 to {MAX_RANK})")
    optimizer = getattr(req.optimizer_config, "type", "adamw")
    if optimizer != "adamw":
        raise ServiceError(f"optimizer {optimizer!r} is not supported; this service uses Adam")
    c = req.lora_config
    lora = LoraSpec(c.rank, c.seed, c.train_unembed, c.train_mlp, c.train_attn)
    f = await asyncio.to_thread(service.training.create, session, req.model_seq_id, req.base_model, lora, None,
                                req.user_metadata)
    follow_recipe_soon(service, session.session_id)
    return untyped(f)


@router.post("/get_info", response_model_exclude_none=True)
def get_info(req: t.GetInfoRequest, service: ServiceDep) -> t.GetInfoResponse:
    m = service.training.get(req.model_id)
    tokenizer = service.samplers.tokenizer_dir(m.base_model)
    return t.GetInfoResponse(model_id=m.model_id, is_lora=True, lora_rank=m.lora.rank, model_name=m.base_model,
                             model_data=t.ModelData(arch=architecture(tokenizer), model_name=m.base_model,
                                                    tokenizer_id=str(tokenizer)))


def decompress(raw: bytes, cap: int) -> bytes:
    """A zstd body, decompressed in bounded chunks: a frame that declares (or holds) more than `cap` bytes is
    refused at the cap, never allocated whole; a frame that ends early is refused too."""
    too_big = ServiceError(f"the zstd-compressed body holds more than {cap:,} bytes; this service takes at most that",
                           413)
    out = bytearray()
    try:
        declared = zstandard.get_frame_parameters(raw).content_size
        if 0 <= declared < (1 << 63) and declared > cap:
            raise too_big
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)) as reader:
            while chunk := reader.read(CHUNK):
                out += chunk
                if len(out) > cap:
                    raise too_big
    except zstandard.ZstdError as exc:
        raise ServiceError(f"the zstd-compressed body cannot be read: {exc}") from None
    if 0 <= declared < (1 << 63) and len(out) != declared:
        raise ServiceError(f"the zstd-compressed body cannot be read: the frame ends after {len(out):,} of its "
                           f"{declared:,} bytes")
    return bytes(out)


async def protobuf_body(request: Request, zstd: bool) -> bytes:
    """The forward_backward body, decompressed (off the event loop) when it came zstd-compressed, which the SDK
    does only when this service asked for it (--zstd)."""
    if "protobuf" not in request.headers.get("content-type", ""):
        raise ServiceError("forward_backward takes a protobuf body (application/x-protobuf), as the SDK sends")
    raw = await request.body()
    encoding = request.headers.get("content-encoding", "").lower()
    if encoding == "zstd":
        if not zstd:
            raise ServiceError("this service takes uncompressed forward_backward bodies (start it with --zstd to "
                               "take zstd)", 415)
        return await asyncio.to_thread(decompress, raw, MAX_BODY)
    if encoding not in ("", "identity"):
        raise ServiceError(f"content-encoding {encoding!r} is not supported", 415)
    return raw


@router.post("/forward_backward", response_model_exclude_none=True)
async def forward_backward(request: Request, service: ServiceDep, settings: SettingsDep) -> t.UntypedAPIFuture:
    raw = await protobuf_body(request, settings.compress_fwdbwd)
    try:
        fb = await asyncio.to_thread(wire.read_forward_backward, raw)  # CPU-bound: never on the event loop
    except wire.WireError as exc:
        model_id, seq_id = await asyncio.to_thread(wire.salvage_ids, raw)
        service.training.refuse_unread(model_id, seq_id)
        raise ServiceError(str(exc)) from None
    return untyped(service.training.forward_backward(service.training.get(fb.model_id), fb))


@router.post("/optim_step", response_model_exclude_none=True)
async def optim_step(req: t.OptimStepRequest, service: ServiceDep) -> t.UntypedAPIFuture:
    m = service.training.get(req.model_id)
    p = req.optim_params
    if not isinstance(p, t.AdamParams):
        service.training.refuse(m, req.seq_id, f"optimizer parameters of type {getattr(p, 'type', '?')!r} are not "
                                "supported; this service uses Adam")
    adam = Adam(p.learning_rate, p.beta1, p.beta2, p.eps, p.weight_decay, p.grad_clip_norm)
    f = service.training.optim_step(m, req.seq_id, adam)
    follow_recipe_soon(service, m.session_id)
    return untyped(f)
