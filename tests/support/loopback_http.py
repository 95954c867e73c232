"""A loopback HTTP/1.1 server on a real socket for download tests: register routes that serve
bytes (with Range/If-Range), redirect, fail with a status, stall, or drop the connection
mid-body; every request is recorded so tests can see what a client asked for."""

from __future__ import annotations

import email.utils
import http.server
import re
import threading
import xml.sax.saxutils
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from soundforge.source_policy import DestinationPolicy

LOOPBACK_NETWORKS = "127.0.0.0/8"
"""What tests allow (SOUNDFORGE_ALLOWED_NETWORKS) so the destination policy lets them reach
their loopback servers; tests of the policy itself allow nothing."""
LOOPBACK_POLICY = DestinationPolicy.allowing(LOOPBACK_NETWORKS)
RANGE = re.compile(r"^bytes=(\d+)-$")
Handler = Callable[["http.server.BaseHTTPRequestHandler"], None]
LAST_MODIFIED = email.utils.formatdate(1_700_000_000, usegmt=True)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class _Faults:
    """Per-route misbehaviour for the first `times` responses."""

    drop_after: int | None = None
    drops_left: int = 0
    stall_s: float = 0.0


class _QuietServer(http.server.ThreadingHTTPServer):
    """Clients that hang up early (timeouts, dropped downloads) are normal here, not errors."""

    daemon_threads = True
    request_queue_size = 256  # pipeline tests open hundreds of connections at once

    def handle_error(self, request: object, client_address: object) -> None:
        pass


@dataclass
class LoopbackServer:
    """`with LoopbackServer() as server:` gives a running server at `server.base_url`."""

    host: str = "127.0.0.1"
    """Any 127/8 address works on Linux: a second server on 127.0.0.2 stands for an internal
    service beside a 'public' one (give `port` to share the first one's port)."""
    port: int = 0
    routes: dict[str, Handler] = field(default_factory=dict)
    prefix_routes: dict[str, Handler] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _server: http.server.ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> LoopbackServer:
        owner = self

        class RequestHandler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep test output quiet

            def do_GET(self) -> None:
                owner._dispatch(self)

            def do_HEAD(self) -> None:
                owner._dispatch(self)

            def do_POST(self) -> None:
                owner._dispatch(self)

        self._server = _QuietServer((self.host, self.port), RequestHandler)
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def requests_for(self, path: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path.split("?")[0] == path]

    # -- routes ------------------------------------------------------------------------------

    def add(self, path: str, handler: Handler) -> str:
        """Route `path` (query string ignored) to `handler`; returns its URL."""
        self.routes[path] = handler
        return self.url(path)

    def add_prefix(self, prefix: str, handler: Handler) -> None:
        """Route every path starting with `prefix` (and no exact route) to `handler`."""
        self.prefix_routes[prefix] = handler

    def serve_bytes(
        self,
        path: str,
        body: bytes,
        content_type: str = "application/octet-stream",
        *,
        drop_after: int | None = None,
        drops: int = 1,
        stall_s: float = 0.0,
        content_length: bool = True,
        ranges: bool = True,
    ) -> str:
        """Serve `body`. `drop_after`: the first `drops` responses close the connection after
        that many bytes. `stall_s`: send the headers, then wait before the body.
        `content_length=False` streams it chunked with no size. `ranges=False` ignores Range."""
        faults = _Faults(drop_after=drop_after, drops_left=drops if drop_after else 0,
                         stall_s=stall_s)  # fmt: skip

        def handler(request: http.server.BaseHTTPRequestHandler) -> None:
            self._send_body(
                request, body, content_type, faults, content_length=content_length, ranges=ranges
            )

        return self.add(path, handler)

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        def handler(request: http.server.BaseHTTPRequestHandler) -> None:
            request.send_response(status)
            request.send_header("Location", location)
            request.send_header("Content-Length", "0")
            request.end_headers()

        return self.add(path, handler)

    def status(self, path: str, status: int, body: bytes = b"", content_type: str = "text/plain",
               headers: Sequence[tuple[str, str]] = ()) -> str:  # fmt: skip
        def handler(request: http.server.BaseHTTPRequestHandler) -> None:
            request.send_response(status)
            for name, value in headers:
                request.send_header(name, value)
            request.send_header("Content-Type", content_type)
            request.send_header("Content-Length", str(len(body)))
            request.end_headers()
            if request.command != "HEAD":
                request.wfile.write(body)

        return self.add(path, handler)

    # -- internals ---------------------------------------------------------------------------

    def _dispatch(self, request: http.server.BaseHTTPRequestHandler) -> None:
        route = request.path.split("?")[0]
        with self._lock:
            self.requests.append(
                RecordedRequest(request.command, request.path, dict(request.headers.items()))
            )
        length = int(request.headers.get("Content-Length") or 0)
        if length:
            request.rfile.read(length)
        handler = self.routes.get(route) or next(
            (h for prefix, h in self.prefix_routes.items() if route.startswith(prefix)), None
        )
        if handler is None:
            request.send_error(404, "Not Found")
            return
        handler(request)

    def _send_body(
        self,
        request: http.server.BaseHTTPRequestHandler,
        body: bytes,
        content_type: str,
        faults: _Faults,
        *,
        content_length: bool,
        ranges: bool,
    ) -> None:
        etag = f'"{len(body):x}-{hash(body) & 0xFFFFFFFF:x}"'
        start = 0
        match = RANGE.match(request.headers.get("Range", ""))
        if_range = request.headers.get("If-Range")
        if ranges and match and (if_range is None or if_range == etag):
            start = min(int(match[1]), len(body))
            request.send_response(206)
            request.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            request.send_response(200)
        part = body[start:]
        request.send_header("Content-Type", content_type)
        request.send_header("ETag", etag)
        request.send_header("Last-Modified", LAST_MODIFIED)
        if ranges:
            request.send_header("Accept-Ranges", "bytes")
        if content_length:
            request.send_header("Content-Length", str(len(part)))
        else:
            request.send_header("Transfer-Encoding", "chunked")
        request.end_headers()
        if request.command == "HEAD":
            return
        if faults.stall_s:
            request.wfile.flush()
            self.stop.wait(faults.stall_s)
        with self._lock:
            drop = faults.drops_left > 0
            if drop:
                faults.drops_left -= 1
        if drop and faults.drop_after is not None:
            request.wfile.write(part[: faults.drop_after])
            request.wfile.flush()
            request.close_connection = True
            return
        if content_length:
            request.wfile.write(part)
        else:
            for offset in range(0, len(part), 8192):
                chunk = part[offset : offset + 8192]
                request.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            request.wfile.write(b"0\r\n\r\n")


def podcast_feed(entries: Sequence[tuple[str, str, float]], title: str = "search") -> bytes:
    """An RSS 2.0 podcast feed of (title, enclosure URL, duration seconds) items: yt-dlp's
    generic extractor expands it into a playlist of entries with durations."""
    escape = xml.sax.saxutils.escape
    items = "".join(
        f"<item><title>{escape(item_title)}</title><guid>candidate-{index}</guid>"
        f'<enclosure url="{escape(url)}" type="audio/mpeg" length="0"/>'
        f"<itunes:duration>{round(duration_s)}</itunes:duration></item>"
        for index, (item_title, url, duration_s) in enumerate(entries)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<rss version="2.0" xmlns:itunes="http://www.itunes.com/dtds/podcast-1.0.dtd">'
        f"<channel><title>{escape(title)}</title>{items}</channel></rss>"
    ).encode()


@contextmanager
def loopback_server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as server:
        yield server
