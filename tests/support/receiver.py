"""A real webhook receiver on 127.0.0.1 that records every request and answers from a script.

    with WebhookReceiver([Reply(500), Reply(500), Reply(200)]) as hook:
        ... VISGATE_WEBHOOK=hook.url ...
        hook.wait_for(3)

Each request is recorded on arrival (wall-clock time, path, headers, raw body) before it is
answered. With ``watch_port`` set, the receiver also notes whether that port accepted a TCP
connection at that moment: how a test proves the worker was not serving yet when it announced.
With ``tls`` (a server-side SSLContext), it answers on https://.
Used by the lifecycle tests and the cold-start benchmark.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable


@dataclass(frozen=True)
class Reply:
    """How to answer one request. ``hang``: read it, then never answer (until the receiver stops).
    ``body_length``: the Content-Length announced, when more than the body: the rest never comes
    (a body that stalls, until the receiver stops)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay: float = 0.0
    hang: bool = False
    body_length: int | None = None


@dataclass
class Received:
    at: float  # time.time() when the request was fully read
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    port_listening: bool | None  # whether ``watch_port`` accepted a connection at arrival

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        return json.loads(self.body)


def port_listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away (a worker killed after its POST, an attempt timed out) is
        # part of what the tests do, not an error to print.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError, ssl.SSLError)):
            super().handle_error(request, client_address)


class WebhookReceiver:
    def __init__(self, replies: Iterable[Reply | int] = (), default: Reply | int = 200,
                 watch_port: int | None = None, path: str = "/hooks/boot",
                 tls: ssl.SSLContext | None = None) -> None:
        self.replies = [_reply(r) for r in replies]
        self.default = _reply(default)
        self.watch_port = watch_port
        self.path = path
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        self.scheme = "https" if tls else "http"
        if tls:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{self.path}"

    def start(self) -> "WebhookReceiver":
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        kwargs={"poll_interval": 0.05})
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases hanging handlers
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "WebhookReceiver":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, count: int, timeout: float = 60.0) -> list[Received]:
        """Block until ``count`` requests have arrived (or the timeout); return all so far."""
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.received) >= count, timeout)
            return list(self.received)

    def _record(self, request: Received) -> Reply:
        with self._arrived:
            index = len(self.received)
            self.received.append(request)
            self._arrived.notify_all()
        return self.replies[index] if index < len(self.replies) else self.default

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                watched = receiver.watch_port
                request = Received(at=time.time(), method=self.command, path=self.path,
                                   headers={k.lower(): v for k, v in self.headers.items()},
                                   body=body,
                                   port_listening=port_listening(watched) if watched else None)
                reply = receiver._record(request)
                if reply.hang:
                    receiver._stopping.wait(120)
                    self.close_connection = True
                    return
                if reply.delay:
                    time.sleep(reply.delay)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(reply.body_length or len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
                if (reply.body_length or 0) > len(reply.body):
                    self.wfile.flush()
                    receiver._stopping.wait(120)
                    self.close_connection = True

            do_POST = do_GET = do_PUT = _handle

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
                pass

        return Handler


def _reply(value: Reply | int) -> Reply:
    return value if isinstance(value, Reply) else Reply(status=value)
