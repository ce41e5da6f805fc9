"""A scripted OpenAI-compatible chat server on 127.0.0.1, for testing the judge without a model or network.

    with StubServer(script) as server:          # a free port (or port=N), served from a background thread
        Judge(Config(model="stub", base_url=server.url)) ...
        server.requests                          # every request: {"path", "body", "headers"}

`script(n, prompt)` decides the reply to chat request number n (0-based) whose user message is
`prompt`: a string is sent back as the assistant's message; `Status(code)` answers with that
HTTP error (optionally with a Retry-After header); `Sleep(seconds, then)` waits before replying
`then`, to provoke client timeouts; `WithLogprobs(content, prob_a)` adds token log-probs whose last token is
the verdict letter. GET /v1/models lists one model.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass
class Status:
    code: int
    retry_after: float | None = None
    message: str | None = None


@dataclass
class Sleep:
    seconds: float
    then: Any


@dataclass
class WithLogprobs:
    """Reply `content` with token log-probs: its last token is the verdict letter, with alternatives A and B."""

    content: str
    prob_a: float


def shown(prompt: str) -> tuple[str, str]:
    """The two completions in a rendered judge prompt (the paper's layout: "<Label> A:" and "<Label> B:" lines)."""
    m = re.search(r"\n[^\n]*\bA:\n(.*?)\n\n[^\n]*\bB:\n(.*?)\n\n", prompt, re.S)
    if m is None:
        raise AssertionError(f"not a judge prompt: {prompt[:200]!r}")
    return m.group(1), m.group(2)


def answer(letter: str, key: str = "Preferred") -> str:
    return f"Comparison: {letter} is better.\n{key}: {letter}"


def prefer(marker: str, key: str = "Preferred") -> Callable[[int, str], str]:
    """A judge that prefers the completion containing `marker`, else the longer one (B on a full tie)."""

    def script(n: int, prompt: str) -> str:
        a, b = shown(prompt)
        return answer("A" if (marker in a, len(a)) > (marker in b, len(b)) else "B", key)

    return script


class StubServer:
    def __init__(self, script: Callable[[int, str], Any], usage: tuple[int, int] = (100, 10), port: int = 0):
        self.script = script
        self.usage = usage
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                server._record(self, None)
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": "stub", "object": "model", "owned_by": "test"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                n = server._record(self, body)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": "not found"}})
                reply = server.script(n, body["messages"][-1]["content"])
                while isinstance(reply, Sleep):
                    time.sleep(reply.seconds)
                    reply = reply.then
                if isinstance(reply, Status):
                    headers = {"Retry-After": str(reply.retry_after)} if reply.retry_after is not None else {}
                    return self._send(
                        reply.code,
                        {"error": {"message": reply.message or f"scripted {reply.code}", "type": "test"}},
                        headers,
                    )
                pt, ct = server.usage
                choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": reply}}
                if isinstance(reply, WithLogprobs):
                    head, letter = reply.content[:-1], reply.content[-1]
                    alternatives = [
                        {"token": f" {x}", "logprob": math.log(q), "bytes": None}
                        for x, q in (("A", reply.prob_a), ("B", 1 - reply.prob_a))
                        if q > 0
                    ]
                    choice["message"]["content"] = reply.content
                    choice["logprobs"] = {
                        "content": [
                            {"token": head, "logprob": -0.1, "bytes": None, "top_logprobs": []},
                            {"token": f" {letter}", "logprob": -0.2, "bytes": None, "top_logprobs": alternatives},
                        ]
                    }
                self._send(
                    200,
                    {
                        "id": f"chatcmpl-{n}",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body.get("model", ""),
                        "choices": [choice],
                        "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
                    },
                )

            def _send(self, code: int, payload: dict, headers: dict | None = None):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout) before the reply

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def _record(self, handler, body) -> int:
        with self.lock:
            chats = sum(1 for r in self.requests if r["body"] is not None)
            self.requests.append({"path": handler.path, "body": body, "headers": dict(handler.headers)})
            return chats

    @property
    def chat_requests(self) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["body"] is not None]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> "StubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
