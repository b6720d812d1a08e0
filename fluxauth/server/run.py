"""``fluxauth serve``: uvicorn with fluxauth's protocol, on the proxy port and, with ``admin_listen``, a second one.

One uvicorn server per process, bound to both sockets (each worker of
``--workers N`` serves both, as uvicorn's supervisor hands every worker the
same listening sockets). The app tells the two apart by the address a request
came in on (``scope["server"]``, ``FluxAuthApp.on_admin_listener``), and the
protocol keeps the admin listener's connections off the hot path. One server,
not two: the app, its store, caches and pools stay one per process, and a
second server's lifespan would start them twice.
"""

from __future__ import annotations

import socket
from typing import Any

from uvicorn.config import Config
from uvicorn.server import Server
from uvicorn.supervisors import Multiprocess

from fluxauth.errors import ConfigError

APP = "fluxauth.proxy.app:app_from_environment"


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (IPv6 when ``host`` has a colon), as uvicorn binds its own."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"admin_listen: cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


def serve(*, host: str, port: int, workers: int, admin_listen: tuple[str, int] | None, **options: Any) -> None:
    """Run the app factory under uvicorn until stopped: ``options`` are uvicorn's ``Config`` arguments."""
    config = Config(APP, factory=True, host=host, port=port, workers=workers, **options)
    admin = None if admin_listen is None else listening_socket(*admin_listen)
    if admin is None and workers == 1:
        Server(config).run()
        return
    if workers == 1:
        config.load()
    sockets = [config.bind_socket(), *([admin] if admin is not None else [])]
    if workers > 1:
        Multiprocess(config, sockets=sockets).run()
    else:
        Server(config).run(sockets=sockets)
