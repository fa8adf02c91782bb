"""A real HTTP server on 127.0.0.1 for download tests (no network involved).

Usage::

    with LocalServer({"/ckpt.bin": data}) as server:
        kdet.zoo.fetch(server.url("/ckpt.bin"), ...)
        server.hits["/ckpt.bin"]          # how many GETs it answered

Routes map a path to bytes, or to a ``Route`` for special behaviour: a slow
body (to overlap concurrent clients), a truncated body (the connection closes
before ``Content-Length`` bytes are sent), a status code, or a redirect.
"""

from __future__ import annotations

import collections
import dataclasses
import http.server
import threading
import time


@dataclasses.dataclass
class Route:
    body: bytes = b""
    status: int = 200
    delay_per_chunk_s: float = 0.0  # sleep between 4 KiB chunks
    truncate_at: int | None = None  # close the connection after this many bytes
    location: str | None = None     # redirect target (status 3xx)


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        server = self.server.owner
        with server.lock:
            server.hits[self.path] += 1
        route = server.routes.get(self.path)
        if route is None:
            self.send_error(404, "Not Found")
            return
        if route.location is not None:
            self.send_response(route.status)
            self.send_header("Location", route.location)
            self.end_headers()
            return
        if route.status != 200:
            self.send_error(route.status)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(route.body)))
        self.end_headers()
        body = route.body if route.truncate_at is None else route.body[: route.truncate_at]
        for i in range(0, len(body), 4096):
            self.wfile.write(body[i:i + 4096])
            if route.delay_per_chunk_s:
                time.sleep(route.delay_per_chunk_s)
        if route.truncate_at is not None:
            self.close_connection = True


class LocalServer:
    """``ThreadingHTTPServer`` on 127.0.0.1, an OS-chosen port, in a daemon thread."""

    def __init__(self, routes: dict[str, bytes | Route]):
        self.routes = {p: r if isinstance(r, Route) else Route(body=r) for p, r in routes.items()}
        self.hits: collections.Counter = collections.Counter()
        self.lock = threading.Lock()
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> "LocalServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def closed_port_url(path: str = "/model.bin") -> str:
    """A loopback URL on a port nothing listens on (connection refused: 'offline')."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"
