"""Small real backends for the router's integration tests: plain stdlib servers on 127.0.0.1.

:class:`AppServer` is one app instance. It answers every request with JSON naming itself and
echoing what it received (method, path, headers, body length), and has a few special paths:

- ``/login`` sets a ``JSESSIONID`` cookie (sticky sessions);
- ``/slow?s=<seconds>`` answers after a while (least-connections);
- ``/events`` is a server-sent event stream: one event, a pause, another (no buffering);
- a WebSocket upgrade is accepted, and each text frame echoed back.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC11B85"
SSE_PAUSE = 1.0


class AppServer:
    """One instance: ``name`` answers on ``127.0.0.1:<port>`` until :meth:`stop`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: list[dict[str, object]] = []
        self.second_event_sent_at: float | None = None
        self.connections: set[socket.socket] = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                server.connections.add(self.connection)

            def finish(self) -> None:
                server.connections.discard(self.connection)
                super().finish()

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                url = urlsplit(self.path)
                seen = {"name": server.name, "method": self.command, "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body_length": len(body)}
                server.requests.append(seen)
                if self.headers.get("Upgrade", "").lower() == "websocket":
                    return self._websocket()
                if url.path == "/events":
                    return self._events()
                if url.path == "/slow":
                    time.sleep(float(parse_qs(url.query).get("s", ["1"])[0]))
                data = json.dumps(seen).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-Request-Id", "from-the-app")  # the router's wins
                if url.path == "/login":
                    self.send_header("Set-Cookie", f"JSESSIONID={server.name}-session; Path=/")
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def _events(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()

                def chunk(data: bytes) -> None:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()

                chunk(b"data: first\n\n")
                time.sleep(SSE_PAUSE)
                server.second_event_sent_at = time.monotonic()
                chunk(b"data: second\n\n")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

            def _websocket(self) -> None:
                key = self.headers["Sec-WebSocket-Key"]
                accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest())
                self.send_response(101)
                self.send_header("Upgrade", "websocket")
                self.send_header("Connection", "Upgrade")
                self.send_header("Sec-WebSocket-Accept", accept.decode())
                self.end_headers()
                self.wfile.flush()
                while True:
                    frame = read_frame(self.rfile)
                    if frame is None or frame[0] == 0x8:  # gone, or close
                        break
                    self.wfile.write(encode_frame(frame[1], opcode=frame[0], mask=False))
                    self.wfile.flush()
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port: int = self.httpd.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                        daemon=True, name=f"backend-{name}")
        self._thread.start()

    def stop(self) -> None:
        """Die like a killed process: the port refuses connections, open ones are reset."""
        self.httpd.shutdown()
        self.httpd.server_close()
        for conn in list(self.connections):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(5)


def encode_frame(payload: bytes, *, opcode: int = 0x1, mask: bool = True) -> bytes:
    head = bytes([0x80 | opcode])
    length = len(payload)
    bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([bit | length])
    elif length < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def read_frame(stream) -> tuple[int, bytes] | None:  # stream: a file-like of bytes
    """``(opcode, payload)`` of the next frame, or None if the stream ended."""
    head = stream.read(2)
    if len(head) < 2:
        return None
    opcode, length = head[0] & 0x0F, head[1] & 0x7F
    if length == 126:
        length = struct.unpack("!H", stream.read(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", stream.read(8))[0]
    key = stream.read(4) if head[1] & 0x80 else None
    payload = stream.read(length)
    if key:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return opcode, payload


def websocket_echo(port: int, host: str, text: str, timeout: float = 5.0) -> tuple[str, str]:
    """Open a WebSocket to ``host`` through ``127.0.0.1:port``, send ``text``; returns the
    handshake's status line and the text echoed back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall((f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        stream = s.makefile("rb")
        status = stream.readline().decode().strip()
        while stream.readline() not in (b"\r\n", b""):
            pass
        s.sendall(encode_frame(text.encode()))
        frame = read_frame(stream)
        s.sendall(encode_frame(b"", opcode=0x8))
        return status, frame[1].decode() if frame else ""
