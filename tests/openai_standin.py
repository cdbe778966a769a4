"""An OpenAI-compatible chat-completions server on loopback, for the real ``openai`` client to talk to.

Tests queue the answers they want (good JSON, malformed text, a slow reply, a 429 with
Retry-After, ...) and read back every request body and header the client sent, so they can prove
what left the process. Any path ending in ``/chat/completions`` is served, which covers both
``<base>/v1/chat/completions`` (OpenAI) and ``<workspace>/serving-endpoints/chat/completions``
(Databricks model serving).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class Reply:
    """One programmed answer: HTTP status, raw body or chat content, headers, and a delay."""

    status: int = 200
    content: str | None = None  # the assistant message text (wrapped in a chat completion)
    body: str | None = None  # a raw body, used as is (for error payloads)
    headers: dict[str, str] = field(default_factory=dict)
    delay_seconds: float = 0.0


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]  # names lower-cased
    body: dict[str, Any]
    raw: str


def good_answer(decision: str, confidence: float, reason: str) -> Reply:
    return Reply(
        content=json.dumps({"decision": decision, "confidence": confidence, "reason": reason})
    )


def rate_limited(retry_after: str = "0") -> Reply:
    return Reply(
        status=429,
        body=json.dumps({"error": {"message": "Rate limit reached", "type": "requests"}}),
        headers={"Retry-After": retry_after},
    )


class OpenAIStandIn:
    """A threaded HTTP server; ``replies`` are served in order, then ``default`` forever."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.default: Reply = Reply(status=500, body='{"error": {"message": "nothing queued"}}')
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """Base URL for ``openai.OpenAI(base_url=...)``."""
        return self.root_url + "/v1"

    def queue(self, *replies: Reply) -> None:
        with self._lock:
            self.replies.extend(replies)

    def all_sent_text(self) -> str:
        """Every request body and header value received, as one string to search for secrets."""
        parts = [r.raw for r in self.requests]
        parts += [v for r in self.requests for v in r.headers.values()]
        return "\n".join(parts)

    def start(self) -> OpenAIStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in a programmed delay
        self._server.shutdown()
        self._server.server_close()

    def _next_reply(self) -> Reply:
        with self._lock:
            return self.replies.pop(0) if self.replies else self.default

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep pytest output clean

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode("utf-8", "replace")
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    body = {}
                with standin._lock:
                    standin.requests.append(
                        RecordedRequest(
                            self.path, {k.lower(): v for k, v in self.headers.items()}, body, raw
                        )
                    )
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, '{"error": {"message": "unknown path"}}', {})
                    return
                reply = standin._next_reply()
                if reply.delay_seconds and standin._stopping.wait(reply.delay_seconds):
                    return
                text = reply.body
                if text is None:
                    text = json.dumps(_completion(body.get("model", "stand-in"), reply.content))
                self._send(reply.status, text, reply.headers)

            def _send(self, status: int, text: str, headers: dict[str, str]) -> None:
                data = text.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test); nothing to answer

        return Handler


def _completion(model: str, content: str | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-standin",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


@pytest.fixture
def openai_standin() -> Iterator[OpenAIStandIn]:
    """A running stand-in; stopped (and any delayed reply released) after the test."""
    server = OpenAIStandIn().start()
    try:
        yield server
    finally:
        server.stop()
