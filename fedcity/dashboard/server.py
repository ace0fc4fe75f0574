"""The dashboard's HTTP(S) server: uvicorn on its own thread, beside the coordinator's gRPC."""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

import uvicorn

from fedcity.dashboard.app import Snapshots, create_app
from fedcity.net.auth import Authenticator, AuthError, check_listen_address

__all__ = ["MAX_CONNECTIONS", "DashboardServer"]

MAX_CONNECTIONS = 32
"""Connections served at once; further ones are answered 503."""
_MAX_HEADER_BYTES = 16 * 1024
_START_SECONDS = 10.0


class DashboardServer:
    """The read-only dashboard, served beside a coordinator.

    Parameters
    ----------
    snapshots : Snapshots
        The coordinator (its snapshot calls).
    authenticator : Authenticator
        The coordinator's authenticator (same tokens and roles).
    host : str, default "127.0.0.1"
    port : int, default 0
        0 picks a free port (see :attr:`port`).
    tls : (path, path) or None
        PEM certificate and key: serve HTTPS. Without them the dashboard serves plain HTTP,
        which is allowed only on a loopback address (bearer tokens cross it).

    Raises
    ------
    AuthError
        Plain HTTP on an address other machines can reach, a malformed address, or ``tls``
        without both files.
    OSError
        The port cannot be bound.
    """

    def __init__(
        self,
        snapshots: Snapshots,
        authenticator: Authenticator,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: tuple[str | os.PathLike[str] | None, str | os.PathLike[str] | None] | None = None,
    ) -> None:
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        check_listen_address(address, insecure=tls is None)
        self.app = create_app(snapshots, authenticator, secure_cookies=tls is not None)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._socket = socket.create_server((host, port), family=family)
        except OSError as exc:
            raise OSError(f"the dashboard cannot listen on {address}: {exc}") from exc
        self.port: int = int(self._socket.getsockname()[1])
        """The bound port."""
        self.scheme = "http" if tls is None else "https"
        settings: dict[str, Any] = {}
        if tls is not None:
            cert, key = tls
            if not (cert and key):
                self._socket.close()
                raise AuthError(
                    "the dashboard serves HTTPS with the coordinator's --tls-cert and --tls-key; "
                    "give both (or --insecure on a loopback address)"
                )
            settings = {"ssl_certfile": os.fspath(cert), "ssl_keyfile": os.fspath(key)}
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            http="h11",
            ws="none",
            loop="asyncio",
            limit_concurrency=MAX_CONNECTIONS,
            timeout_keep_alive=5,
            h11_max_incomplete_event_size=_MAX_HEADER_BYTES,
            server_header=False,
            proxy_headers=False,
            **settings,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name="fedcity-dashboard",
            daemon=True,
        )

    @property
    def url(self) -> str:
        """The dashboard's base URL."""
        host, port = self._socket.getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{host}:{port}"

    def start(self) -> DashboardServer:
        """Serve on a background thread; returns once it accepts connections.

        Raises
        ------
        OSError
            The server did not start (e.g. an unreadable TLS key).
        """
        self._thread.start()
        deadline = time.monotonic() + _START_SECONDS
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise OSError("the dashboard's web server did not start (see the log)")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        self._socket.close()
