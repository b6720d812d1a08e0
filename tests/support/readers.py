"""What the security tests share: raw HTTP on a socket, fluxauth as ``fluxauth serve`` runs it, upstream readers.

The readers are real servers that report how *they* understood a forwarded
request, so that a test can compare it with what fluxauth decided:

- Starlette under uvicorn, routing ``/v1/services/{protocol}/{org}/{repo}/{ref}``
  on the path uvicorn decoded;
- nginx, matching the same pattern against its normalized ``$uri`` (decoded,
  dot segments resolved, slashes merged): what it would serve;
- the standard library's wsgiref, a CGI-style reader: ``PATH_INFO`` decoded
  once, read as is and as ``posixpath.normpath`` (file serving) would, and
  header names folded ``-`` and ``_`` alike into ``HTTP_*``.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import dataclasses
import hashlib
import http.client
import json
import posixpath
import socket
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.servers import ServerThread, free_port, running_process

DATA = Path(__file__).resolve().parent.parent / "data"
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def basic_value(username: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{username}:{password}".encode())


# -- raw HTTP ------------------------------------------------------------------


@dataclasses.dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key.lower() == name.lower()), None)

    def json(self) -> Any:
        return json.loads(self.body)


def send_raw(port: int, data: bytes, *, timeout: float = 10, method: str = "GET") -> RawResponse:
    """Send ``data`` byte for byte on a new connection and read one response (closed or not)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        body = response.read()
        return RawResponse(response.status, response.getheaders(), body)


def request_bytes(
    target: bytes, headers: Iterable[tuple[bytes, bytes]] = (), *, method: bytes = b"GET", body: bytes = b""
) -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: fluxauth.test", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def get_raw(port: int, target: bytes, headers: Iterable[tuple[bytes, bytes]] = ()) -> RawResponse:
    return send_raw(port, request_bytes(target, headers))


def read_response(sock: socket.socket) -> bytes:
    """One whole response with a Content-Length from ``sock``, however it arrives (the connection may stay open)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:"))[15:])
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (or resets) the connection."""
    reply = b""
    try:
        while chunk := sock.recv(65536):
            reply += chunk
    except ConnectionResetError:
        pass
    return reply


# -- the corpus ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    expect: int
    target: bytes
    note: str


def load_corpus(name: str = "path_confusion.txt") -> list[Case]:
    cases = []
    for line in (DATA / name).read_text(encoding="ascii").splitlines():
        if not line or line.startswith("#"):
            continue
        expect, target, note = line.split("\t")
        cases.append(Case(int(expect), codecs.escape_decode(target.encode("ascii"))[0], note))
    return cases


# -- readers -------------------------------------------------------------------

Route4 = tuple[str, str, str, str]


@dataclasses.dataclass
class Reading:
    """How one upstream understood a forwarded request."""

    reader: str
    routes: list[Route4 | None]  # one per way this reader reads the path
    raw_target: str  # what it received, as bytes in latin-1
    headers: dict[str, list[str]]


class Reader:
    """An upstream that reports how it read each request, and counts them."""

    name = ""
    url = ""

    def parse(self, response: RawResponse) -> Reading:
        raise NotImplementedError


def starlette_reader() -> Starlette:
    """Routes on uvicorn's decoded ``path`` with Starlette's own path parameters."""
    count = {"requests": 0}
    received: list[tuple[str, bytes, list[tuple[bytes, bytes]], bytes]] = []

    async def routed(request: Request) -> Response:
        count["requests"] += 1
        body = await request.body()
        received.append((request.method, request.scope["raw_path"], list(request.scope["headers"]), body))
        params = request.path_params
        return JSONResponse(
            {
                "route": [params["protocol"], params["org"], params["repo"], params["ref"]],
                "raw_path": request.scope["raw_path"].decode("latin-1"),
                "query": request.scope["query_string"].decode("latin-1"),
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.scope["headers"]],
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "body_length": len(body),
            }
        )

    async def unrouted(request: Request) -> Response:
        count["requests"] += 1
        received.append(
            (request.method, request.scope["raw_path"], list(request.scope["headers"]), await request.body())
        )
        return JSONResponse({"route": None, "raw_path": request.scope["raw_path"].decode("latin-1"), "headers": []})

    app = Starlette(
        routes=[
            Route("/v1/services/{protocol}/{org}/{repo}/{ref}", routed, methods=ALL_METHODS),
            Route("/v1/services/{protocol}/{org}/{repo}/{ref}/{rest:path}", routed, methods=ALL_METHODS),
            Route("/{rest:path}", unrouted, methods=ALL_METHODS),
        ]
    )
    app.state.count = count
    app.state.received = received
    return app


class StarletteReader(Reader):
    name = "starlette"

    def __init__(self) -> None:
        self.app = starlette_reader()
        self.server = ServerThread(self.app)

    def __enter__(self) -> StarletteReader:
        self.server.start()
        self.url = self.server.url
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    @property
    def requests(self) -> int:
        return int(self.app.state.count["requests"])

    @property
    def received(self) -> list[tuple[str, bytes, list[tuple[bytes, bytes]], bytes]]:
        """(method, raw path, headers, body) of every request that reached this upstream."""
        return list(self.app.state.received)

    def parse(self, response: RawResponse) -> Reading:
        seen = response.json()
        route = tuple(seen["route"]) if seen["route"] else None
        target = seen["raw_path"] + ("?" + seen["query"] if seen.get("query") else "")
        headers: dict[str, list[str]] = {}
        for name, value in seen["headers"]:
            headers.setdefault(name, []).append(value)
        return Reading(self.name, [route], target, headers)  # type: ignore[list-item]


def _route_of(path: str) -> Route4 | None:
    parts = path.split("/")
    if parts[:3] != ["", "v1", "services"] or len(parts) < 7 or not all(parts[3:7]):
        return None
    return (parts[3], parts[4], parts[5], parts[6])


def wsgi_reader(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """A CGI-style upstream: PATH_INFO (decoded once, latin-1), as is and normalized; HTTP_* headers."""
    path = environ["PATH_INFO"]
    body = json.dumps(
        {
            "routes": [_route_of(path), _route_of(posixpath.normpath(path) + "/"), _route_of(path.replace("\\", "/"))],
            "raw_target": environ.get("fluxauth.raw_target", ""),
            "headers": {key: [value] for key, value in environ.items() if key.startswith("HTTP_")},
        }
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def get_environ(self) -> dict[str, Any]:
        environ = super().get_environ()
        environ["fluxauth.raw_target"] = self.path  # the target as received (gunicorn calls it RAW_URI)
        return environ


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class WsgiReader(Reader):
    name = "wsgiref"

    def __enter__(self) -> WsgiReader:
        self.server = make_server(
            "127.0.0.1", 0, wsgi_reader, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
        )
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def parse(self, response: RawResponse) -> Reading:
        seen = response.json()
        routes = [tuple(route) if route else None for route in seen["routes"]]
        return Reading(self.name, routes, seen["raw_target"], seen["headers"])  # type: ignore[arg-type]


NGINX_READER = """\
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        default_type text/plain;
        # Matched against the normalized $uri: decoded, '.' and '..' resolved,
        # '//' merged. The captures are what nginx would serve.
        location ~ ^/v1/services/([^/]+)/([^/]+)/([^/]+)/([^/]+)(/|$) {{
            return 200 "$1\\n$2\\n$3\\n$4\\n$request_uri\\n$uri\\n";
        }}
        location / {{
            return 200 "\\n\\n\\n\\n$request_uri\\n$uri\\n";
        }}
    }}
}}
"""


class NginxReader(Reader):
    name = "nginx"

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    def __enter__(self) -> NginxReader:
        port = free_port()
        self.tmp.mkdir(parents=True, exist_ok=True)
        conf = self.tmp / "nginx.conf"
        conf.write_text(NGINX_READER.format(tmp=self.tmp, port=port))
        self._stack = contextlib.ExitStack()
        self.url = self._stack.enter_context(
            running_process(["nginx", "-p", str(self.tmp), "-c", str(conf)], port, self.tmp / "error.log")
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def parse(self, response: RawResponse) -> Reading:
        lines = response.body.decode("latin-1").split("\n")
        route = tuple(lines[:4]) if all(lines[:4]) else None
        return Reading(self.name, [route], lines[4], {})  # type: ignore[list-item]


# -- a misbehaving upstream ---------------------------------------------------------


class EchoUpstream:
    """An upstream of the tests' own that answers every request with the request itself, as TRACE does.

    Each answer is ``200`` with the request head (and body) it received as a
    ``message/http`` body; it reflects the ``Authorization`` it was sent into
    an ``X-Seen-Authorization`` response header (some debugging servers
    reflect headers so), and adds ``headers`` of the test's choosing.
    Connections are kept alive, so fluxauth's hot path can reuse them.
    """

    def __init__(self, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self.headers = list(headers)
        self.received: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> EchoUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        buffered = b""
        with sock:
            while True:
                while b"\r\n\r\n" not in buffered:
                    try:
                        chunk = sock.recv(65536)
                    except OSError:
                        return
                    if not chunk:
                        return
                    buffered += chunk
                head, _, buffered = buffered.partition(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                fields = [line.partition(b":") for line in lines[1:]]
                length = next((int(v) for n, _, v in fields if n.strip().lower() == b"content-length"), 0)
                while len(buffered) < length:
                    buffered += sock.recv(65536)
                body, buffered = buffered[:length], buffered[length:]
                request = head + b"\r\n\r\n" + body
                self.received.append(request)
                answer = [b"HTTP/1.1 200 OK", b"Content-Type: message/http", b"Content-Length: %d" % len(request)]
                answer += [b"X-Seen-Authorization:" + v for n, _, v in fields if n.strip().lower() == b"authorization"]
                answer += [name + b": " + value for name, value in self.headers]
                sock.sendall(b"\r\n".join(answer) + b"\r\n\r\n" + request)
