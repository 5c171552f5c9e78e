"""A chat-completions server on 127.0.0.1 that returns scripted replies, for backend tests.

Replies are chosen by the text of the last text part of the conversation, so
concurrent requests get their own scripts whatever order they arrive in. Each
script is a list of replies used in turn; its last reply repeats.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self


@dataclass
class CannedReply:
    """One scripted reply: a chat completion with ``answer_text``, or ``body`` as given."""

    status: int = 200
    answer_text: str = "3"
    body: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0

    def render(self) -> bytes:
        if self.body is not None:
            return self.body.encode()
        completion = {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.answer_text},
                    "finish_reason": "stop",
                }
            ],
        }
        return json.dumps(completion).encode()


@dataclass
class ReceivedRequest:
    """A request as the server received it."""

    path: str
    headers: dict[str, str]
    payload: dict[str, Any]
    key: str


def conversation_key(payload: dict[str, Any]) -> str:
    """Return the text of the last text part in ``payload['messages']``."""
    for message in reversed(payload.get("messages", [])):
        content = message.get("content")
        if isinstance(content, str):
            return content
        for part in reversed(content):
            if part.get("type") == "text":
                return part["text"]
    return ""


class FakeOpenAIServer:
    """Threaded HTTP server with scripted replies, used as a context manager."""

    def __init__(self, scripts: dict[str, list[CannedReply]] | None = None) -> None:
        self.scripts = scripts or {}
        self.received: list[ReceivedRequest] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def calls(self, key: str) -> int:
        """Return how many requests arrived for the conversation ``key``."""
        with self._lock:
            return sum(1 for received in self.received if received.key == key)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _next_reply(self, key: str) -> CannedReply:
        with self._lock:
            script = self.scripts.get(key, [CannedReply()])
            index = sum(1 for received in self.received if received.key == key) - 1
            return script[min(index, len(script) - 1)]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                payload = json.loads(self.rfile.read(length))
                key = conversation_key(payload)
                with server._lock:
                    server.received.append(ReceivedRequest(self.path, dict(self.headers), payload, key))
                    server._in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server._in_flight)
                reply = server._next_reply(key)
                time.sleep(reply.delay_s)
                with server._lock:
                    server._in_flight -= 1

                # The count drops before the reply goes out, because a client
                # may send its next request as soon as it reads this one.
                try:
                    body = reply.render()
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # The client timed out and closed the connection first.

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
