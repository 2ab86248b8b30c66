"""A real HTTP server on the loopback address that speaks the OpenAI chat-completions API with scripted answers,
streamed (server-sent events, tool-call deltas split by index) or not. It records every request it gets."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = dict[str, Any]


def text(content: str, **kw: Any) -> Answer:
    return {"text": content, **kw}


def call(name: str, arguments: Any = None, **kw: Any) -> Answer:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
    return {"tool_calls": [{"name": name, "arguments": args}], **kw}


def calls(*pairs: tuple[str, Any]) -> Answer:
    return {"tool_calls": [{"name": n, "arguments": a if isinstance(a, str) else json.dumps(a)} for n, a in pairs]}


class FakeLLM:
    def __init__(self, answers: list[Answer] | None = None, model: str = "fake-model", api_key: str | None = None,
                 stream_chunk: int = 7) -> None:
        self.answers = list(answers or [])
        self.model = model
        self.api_key = api_key
        self.stream_chunk = stream_chunk
        self.requests: list[dict[str, Any]] = []
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def next_answer(self) -> Answer:
        return self.answers.pop(0) if self.answers else text("(no more scripted answers)")

    @contextmanager
    def running(self) -> Iterator[FakeLLM]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _auth_ok(self) -> bool:
                if fake.api_key is None:
                    return True
                if self.headers.get("Authorization") == f"Bearer {fake.api_key}":
                    return True
                self._json(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})
                return False

            def _json(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                if not self._auth_ok():
                    return
                if self.path.rstrip("/").endswith("/models"):
                    self._json(200, {"object": "list", "data": [{"id": fake.model, "object": "model"}]})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                fake.requests.append(body)
                if not self._auth_ok():
                    return
                if body.get("model") != fake.model:
                    self._json(404, {"error": {"message": f"model {body.get('model')!r} not found"}})
                    return
                answer = fake.next_answer()
                if answer.get("delay"):
                    time.sleep(answer["delay"])
                if answer.get("status"):
                    self._json(answer["status"], {"error": {"message": answer.get("error", "scripted error")}})
                    return
                if body.get("stream"):
                    self._stream(answer)
                else:
                    self._json(200, fake.completion(answer))

            def _stream(self, answer: Answer) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    for chunk in fake.chunks(answer):
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                        if answer.get("chunk_delay"):
                            time.sleep(answer["chunk_delay"])
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away (a cancelled answer)
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()

    # ------------------------------------------------------------------ the wire format
    def completion(self, answer: Answer) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": answer.get("text")}
        if answer.get("tool_calls"):
            message["tool_calls"] = [{"id": f"call_{i}", "type": "function",
                                      "function": {"name": c["name"], "arguments": c["arguments"]}}
                                     for i, c in enumerate(answer["tool_calls"])]
        if answer.get("reasoning"):
            message["reasoning_content"] = answer["reasoning"]
        return {"id": "cmpl-1", "object": "chat.completion", "created": 0, "model": self.model,
                "choices": [{"index": 0, "message": message,
                             "finish_reason": "tool_calls" if answer.get("tool_calls") else "stop"}]}

    def chunks(self, answer: Answer) -> Iterator[dict[str, Any]]:
        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"id": "cmpl-1", "object": "chat.completion.chunk", "created": 0, "model": self.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        yield chunk({"role": "assistant"})
        content = answer.get("text") or ""
        for i in range(0, len(content), self.stream_chunk):
            yield chunk({"content": content[i : i + self.stream_chunk]})
        for index, c in enumerate(answer.get("tool_calls") or []):
            yield chunk({"tool_calls": [{"index": index, "id": f"call_{index}", "type": "function",
                                         "function": {"name": c["name"], "arguments": ""}}]})
            args = c["arguments"]
            for i in range(0, len(args), 5):
                yield chunk({"tool_calls": [{"index": index, "function": {"arguments": args[i : i + 5]}}]})
        yield chunk({}, "tool_calls" if answer.get("tool_calls") else "stop")
