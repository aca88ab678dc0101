"""A real HTTP receiver for webhook tests, on 127.0.0.1 in a thread of the test process (the standard
library's server): it records every request and answers as the test scripts it (status codes in
order, a delay, a huge body)."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() when it arrived
    status: int  # what the receiver answered


@dataclass
class Script:
    statuses: list[int] = field(default_factory=list)  # answered in order, then `then`
    then: int = 200
    delay_s: float = 0.0  # before answering
    body_bytes: int = 0  # the answer's body (zeros), written in 64 KiB pieces
    headers: dict[str, str] = field(default_factory=dict)


class Server(ThreadingHTTPServer):
    request_queue_size = 256  # the listen backlog (5 by default: a burst of connections would wait for SYN retries)


class Receiver:
    def __init__(self, script: Script | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.script = script or Script()
        self.received: list[Received] = []
        self.body_written = 0  # bytes of answer bodies the socket took, in all
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                receiver.handle(self)

        self.server = Server(("127.0.0.1", 0), Handler)
        if tls is not None:  # https: the listening socket wrapped (each connection's handshake in its thread)
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True, do_handshake_on_connect=False)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        body = request.rfile.read(int(request.headers.get("content-length", 0)))
        with self.lock:
            status = self.script.statuses.pop(0) if self.script.statuses else self.script.then
            self.received.append(Received(request.path, {k.lower(): v for k, v in request.headers.items()}, body,
                                          time.time(), status))
        time.sleep(self.script.delay_s)
        try:
            request.send_response(status)
            for name, value in self.script.headers.items():
                request.send_header(name, value)
            request.send_header("content-length", str(self.script.body_bytes))
            request.end_headers()
            piece = b"\0" * 65536
            left = self.script.body_bytes
            while left > 0:
                request.wfile.write(piece[:left])
                self.body_written += min(left, len(piece))
                left -= len(piece)
            request.wfile.flush()
        except OSError:  # the sender hung up (it reads a bounded answer)
            pass

    def answered(self, status: int) -> list[Received]:
        with self.lock:
            return [item for item in self.received if item.status == status]

    async def wait_for(self, count: int, timeout_s: float = 30.0) -> list[Received]:
        give_up_at = time.monotonic() + timeout_s
        while len(self.received) < count:
            assert time.monotonic() < give_up_at, f"{len(self.received)} requests in {timeout_s} s, not {count}"
            await asyncio.sleep(0.02)
        return list(self.received)


@contextmanager
def receiving(script: Script | None = None, tls: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    receiver = Receiver(script, tls)
    thread = threading.Thread(target=receiver.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
