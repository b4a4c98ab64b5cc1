"""Loopback peers for the remote tests: scripted raw-socket servers, a byte-counting listener, and a
server that follows OpenAI's documented chat-completions request/response shapes."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

from edge_eco.manifest import Policy, RemoteSpec, parse_manifest
from edge_eco.tomlwrite import manifest_to_toml


def read_request(conn: socket.socket) -> tuple[bytes, bytes]:
    """Read one HTTP request (headers + Content-Length body); returns (head, body), b"" at EOF."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return b"", b""
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length")), 0)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head, body


def http_reply(body: bytes | str, status: str = "200 OK", extra: str = "") -> bytes:
    if isinstance(body, str):
        body = body.encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            .encode() + body)


def reset(conn: socket.socket) -> None:
    """Make the coming close() send RST instead of FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class RawServer:
    """Accepts connections on loopback and runs ``script(conn, request_body)`` for each request.

    Counts accepted connections and received bytes (``connections``, ``bytes_received``) and keeps
    every request body (``bodies``)."""

    def __init__(self, script: Callable[[socket.socket, bytes], None], *, per_connection: int = 100):
        self.script, self.per_connection = script, per_connection
        self.connections, self.bytes_received, self.bodies = 0, 0, []
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.02)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(3)
            try:
                for _ in range(self.per_connection):
                    head, body = read_request(conn)
                    if not head:
                        break
                    self.bytes_received += len(head) + 4 + len(body)
                    self.bodies.append(body)
                    self.script(conn, body)
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.listener.close()


def counting_listener() -> tuple[socket.socket, Callable[[], tuple[int, int]]]:
    """A listening socket and a function returning (connections accepted, bytes received) so far,
    draining whatever is pending without blocking."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    seen = [0, 0]
    conns: list[socket.socket] = []

    def count() -> tuple[int, int]:
        time.sleep(0.05)  # let anything in flight arrive
        while True:
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                break
            conn.setblocking(False)
            conns.append(conn)
            seen[0] += 1
        for conn in conns:
            try:
                while chunk := conn.recv(65536):
                    seen[1] += len(chunk)
            except BlockingIOError:
                pass
        return seen[0], seen[1]

    return listener, count


# -- an OpenAI-compatible chat-completions server --------------------------------------------------

class OpenAIStub:
    """Follows the documented chat-completions shapes: ``POST /v1/chat/completions`` with ``model`` and
    ``messages`` (role/content), replying ``{"id", "object": "chat.completion", "created", "model",
    "choices": [{"index", "message": {"role": "assistant", "content"}, "logprobs", "finish_reason"}],
    "usage"}``; errors as ``{"error": {"message", "type", "code"}}``. ``GET /v1/models`` lists the model.

    ``pick(system, user)`` plays the LLM: it gets the system prompt (with the labels) and the user text.
    """

    def __init__(self, pick: Callable[[str, str], str], *, model: str = "tiny-llm", token: str | None = None):
        self.pick, self.model, self.token, self.requests = pick, model, token, []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, doc: dict) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _error(self, status: int, message: str, kind: str) -> None:
                self._send(status, {"error": {"message": message, "type": kind, "param": None, "code": None}})

            def _authorized(self) -> bool:
                if stub.token and self.headers.get("Authorization") != f"Bearer {stub.token}":
                    self._error(401, "Incorrect API key provided", "invalid_request_error")
                    return False
                return True

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                if not self._authorized():
                    return
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": stub.model, "object": "model",
                                                                  "created": 0, "owned_by": "test"}]})
                else:
                    self._error(404, f"no route {self.path}", "invalid_request_error")

            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if not self._authorized():
                    return
                if self.path != "/v1/chat/completions":
                    return self._error(404, f"no route {self.path}", "invalid_request_error")
                req = json.loads(raw)
                stub.requests.append(req)
                msgs = req.get("messages")
                if req.get("model") != stub.model:
                    return self._error(404, f"The model `{req.get('model')}` does not exist", "invalid_request_error")
                if not isinstance(msgs, list) or not all(isinstance(m, dict) and m.get("role") in
                                                         ("system", "user", "assistant") and
                                                         isinstance(m.get("content"), str) for m in msgs):
                    return self._error(400, "'messages' is malformed", "invalid_request_error")
                system = next((m["content"] for m in msgs if m["role"] == "system"), "")
                user = [m["content"] for m in msgs if m["role"] == "user"][-1]
                content = stub.pick(system, user)
                choice = {"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
                          "logprobs": None, "finish_reason": "stop"}
                if req.get("logprobs"):
                    choice["logprobs"] = {"content": [{"token": content, "logprob": -0.105, "bytes": None,
                                                       "top_logprobs": []}]}
                self._send(200, {"id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()),
                                 "model": stub.model, "system_fingerprint": None, "choices": [choice],
                                 "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.thread.join()
        self.httpd.server_close()


def keyword_llm(system: str, user: str) -> str:
    """A deterministic 'LLM' for the fake ecology: keywords -> one of its labels."""
    text = user.lower()
    for word, label in (("money", "transfer"), ("balance", "balance"), ("flight", "book_flight"),
                        ("alarm", "alarm")):
        if word in text:
            return label
    return "oos"


def with_remote(folder: Path, remote: RemoteSpec, **policy) -> Path:
    """Rewrite the ecology.toml in ``folder`` with a [remote] table and policy fields."""
    m = parse_manifest((folder / "ecology.toml").read_text())
    m = replace(m, remote=remote, policy=replace(m.policy, **policy))
    (folder / "ecology.toml").write_text(manifest_to_toml(m))
    return folder


SEND_REMOTE = Policy(direct_threshold=0.6, fallback_threshold=0.999999)  # every request wants the remote
