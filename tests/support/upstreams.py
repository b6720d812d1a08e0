"""Misbehaving upstreams of a test's own: raw TCP servers that answer exactly the bytes a test scripts.

Each connection is served in a thread of its own by the test's handler, which
reads and writes the socket as the attack needs (a HEAD answered with a body,
a second answer nobody asked for, a GET body left unread). What the server
saw is kept for the test: the request heads per connection, the bytes it
wrote, and when each connection was closed by the other side.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

DEADLINE = 10.0  # seconds a test waits for what must happen at once; only reached when it fails


class Conn:
    """One connection to the upstream, as its handler sees it."""

    def __init__(self, sock: socket.socket, number: int, upstream: RawUpstream) -> None:
        self.sock = sock
        self.number = number
        self.upstream = upstream
        self._buffer = b""
        self.heads: list[bytes] = []
        self.written = 0
        self.closed = threading.Event()  # the other side (fluxauth) closed it

    def read_head(self) -> bytes:
        """The next request head (up to its blank line); the body, if any, is left unread."""
        while b"\r\n\r\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                self.closed.set()
                raise ConnectionError("closed by the client")
            self._buffer += chunk
        head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        self.heads.append(head)
        with self.upstream.lock:
            self.upstream.heads.append(head)
        return head

    def read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                self.closed.set()
                raise ConnectionError("closed by the client")
            self._buffer += chunk
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed.set()
            raise
        self.written += len(data)

    def drop(self) -> None:
        """Close the connection from the upstream's side, answered or not."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def wait_closed(self, timeout: float = DEADLINE) -> bool:
        """Block until fluxauth closes this connection (reading and dropping whatever it sends)."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except (OSError, TimeoutError):
            return self.closed.is_set()
        self.closed.set()
        return True


Handler = Callable[[Conn], None]


class RawUpstream:
    """A TCP server on 127.0.0.1 whose ``handler`` gets each connection, in a thread of its own."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.conns: list[Conn] = []
        self.heads: list[bytes] = []
        self.accepted = threading.Semaphore(0)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                conn = Conn(sock, len(self.conns), self)
                self.conns.append(conn)
            self.accepted.release()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: Conn) -> None:
        with conn.sock, contextlib.suppress(OSError):
            self.handler(conn)
            conn.wait_closed()

    @property
    def connections(self) -> int:
        return len(self.conns)

    def close(self) -> None:
        self.listener.close()
        for conn in list(self.conns):
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> RawUpstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def raw_upstream(handler: Handler) -> Iterator[RawUpstream]:
    with RawUpstream(handler) as upstream:
        yield upstream


def response(body: bytes = b"tile", *headers: bytes, status: bytes = b"200 OK") -> bytes:
    """A response with a Content-Length, and ``headers`` (whole lines) before it."""
    lines = b"".join(header + b"\r\n" for header in headers)
    return b"HTTP/1.1 " + status + b"\r\n" + lines + b"content-length: %d\r\n\r\n" % len(body) + body


def path_of(head: bytes) -> bytes:
    return head.split(b" ", 2)[1]
