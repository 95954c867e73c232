"""A forward HTTP proxy on loopback that carries the traffic of resolvers which do their own
networking (yt-dlp in this process, spotdl in a child) through the destination policy.

Every `CONNECT host:port` (https) and every absolute-URI request (`GET http://host/...`) is
checked by `DestinationPolicy.connect`, which resolves the host once and connects to exactly the
checked address; TLS stays end to end between the resolver and the server, so SNI and the
certificate check keep the host name. Plain http requests are forwarded one per connection
(`Connection: close` both ways), so a kept-alive connection is never reused for another host.
Redirects, search pages, media URLs and HLS fragments all arrive here as fresh requests, so each
hop is checked. A refusal answers 403 and is recorded: the caller turns it into the policy's
permanent error (`raise_if_refused`) instead of the resolver's generic network failure.

Written on the standard library: the proxy packages on the index resolve names themselves and
have no hook between resolution and connect, which is the one place the policy must sit.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import socketserver
import threading
import urllib.parse

from soundforge.errors import DestinationRefusedError
from soundforge.redact import mask_url
from soundforge.source_policy import DestinationPolicy

logger = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
HOP_BY_HOP = (b"connection", b"keep-alive", b"proxy-connection", b"proxy-authorization",
              b"te", b"trailer", b"upgrade")  # fmt: skip
CHUNK_BYTES = 64 * 1024


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, proxy: PolicyProxy) -> None:
        self.proxy = proxy
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        logger.debug("policy proxy: connection ended with an error", exc_info=True)


class PolicyProxy:
    """`with PolicyProxy(policy) as proxy:` gives a running proxy at `proxy.url`."""

    def __init__(
        self, policy: DestinationPolicy, *, connect_timeout_s: float, idle_timeout_s: float
    ) -> None:
        self.policy = policy
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.refusals: list[str] = []
        self._lock = threading.Lock()
        self._server: _Server | None = None

    def __enter__(self) -> PolicyProxy:
        self._server = _Server(self)
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
            name="policy-proxy", daemon=True,
        ).start()  # fmt: skip
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None, "the proxy is not running"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def record_refusal(self, message: str) -> None:
        with self._lock:
            self.refusals.append(message)

    def raise_if_refused(self) -> None:
        """Raise the first refusal as `DestinationRefusedError` (permanent), if there was one."""
        with self._lock:
            first = self.refusals[0] if self.refusals else None
        if first is not None:
            raise DestinationRefusedError(first)


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        client: socket.socket = self.request
        proxy = self.server.proxy
        client.settimeout(proxy.idle_timeout_s)
        head, rest = _read_head(client)
        if head is None:
            return
        request_line, _, header_block = head.partition(b"\r\n")
        try:
            method, target, version = request_line.decode("latin-1").split(" ", 2)
            host, port, forwarded = _destination(method, target, version, header_block)
        except ValueError:
            _answer(client, 400, "Bad Request")
            return
        try:
            upstream = proxy.policy.connect(host, port, proxy.connect_timeout_s)
        except DestinationRefusedError as refusal:
            shown = target if method == "CONNECT" else mask_url(target)
            proxy.record_refusal(f"{shown}: {refusal}")
            _answer(client, 403, "Forbidden by SoundForge's destination policy")
            return
        except OSError as error:
            logger.info("policy proxy: cannot reach %s:%d (%s)", host, port, error)
            _answer(client, 502, "Bad Gateway")
            return
        with upstream:
            if forwarded is None:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                if rest:
                    upstream.sendall(rest)
            else:
                upstream.settimeout(proxy.idle_timeout_s)
                upstream.sendall(forwarded + rest)
                _copy_request_body(client, upstream, _content_length(header_block) - len(rest))
                if not _forward_response_head(upstream, client):
                    return
            _relay(client, upstream, proxy.idle_timeout_s)


def _read_head(client: socket.socket) -> tuple[bytes | None, bytes]:
    """The request head (without the blank line) and whatever body bytes followed it."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        try:
            chunk = client.recv(CHUNK_BYTES)
        except OSError:
            return None, b""
        if not chunk or len(buffer) + len(chunk) > MAX_HEAD_BYTES:
            return None, b""
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    return head, rest


def _content_length(header_block: bytes) -> int:
    for line in header_block.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return int(value.strip())
    return 0


def _copy_request_body(client: socket.socket, upstream: socket.socket, remaining: int) -> None:
    while remaining > 0:
        chunk = client.recv(min(CHUNK_BYTES, remaining))
        if not chunk:
            return
        upstream.sendall(chunk)
        remaining -= len(chunk)


def _forward_response_head(upstream: socket.socket, client: socket.socket) -> bool:
    """Pass the response head on with `Connection: close`: the client must not send another
    request on this connection (it would go to this host without a check). False when the
    server sent no valid head."""
    head, rest = _read_head(upstream)
    if head is None:
        _answer(client, 502, "Bad Gateway")
        return False
    status_line, _, header_block = head.partition(b"\r\n")
    headers = [
        line for line in header_block.split(b"\r\n")
        if line and line.split(b":", 1)[0].strip().lower() not in HOP_BY_HOP
    ]  # fmt: skip
    client.sendall(b"\r\n".join([status_line, *headers, b"Connection: close"]) + b"\r\n\r\n"
                   + rest)  # fmt: skip
    return True


def _destination(
    method: str, target: str, version: str, header_block: bytes
) -> tuple[str, int, bytes | None]:
    """(host, port, the request to forward; None for a CONNECT tunnel). `ValueError` when the
    request is no proxy request."""
    if method == "CONNECT":
        parts = urllib.parse.urlsplit("//" + target)
        if not parts.hostname or parts.port is None:
            raise ValueError(target)
        return parts.hostname, parts.port, None
    parts = urllib.parse.urlsplit(target)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(target)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = [
        line for line in header_block.split(b"\r\n")
        if line and line.split(b":", 1)[0].strip().lower() not in HOP_BY_HOP
    ]  # fmt: skip
    forwarded = b"\r\n".join(
        [f"{method} {path} {version}".encode("latin-1"), *headers, b"Connection: close"]
    ) + b"\r\n\r\n"
    return parts.hostname, parts.port or 80, forwarded


def _answer(client: socket.socket, status: int, reason: str) -> None:
    body = f"{status} {reason}\n".encode()
    with contextlib.suppress(OSError):
        client.sendall(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
        )


def _relay(client: socket.socket, upstream: socket.socket, idle_timeout_s: float) -> None:
    """Copy bytes both ways until the server closes (or nothing moves for the idle timeout);
    a client that stops sending gets its half of the connection closed upstream."""
    peers = {client: upstream, upstream: client}
    with selectors.DefaultSelector() as selector:
        for sock in peers:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        while True:
            ready = selector.select(idle_timeout_s)
            if not ready:
                return
            for key, _ in ready:
                source: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    data = source.recv(CHUNK_BYTES)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    return
                if not data:
                    if source is upstream:
                        return
                    selector.unregister(client)
                    _shutdown_write(upstream)
                    continue
                try:
                    _send_all(peers[source], data, idle_timeout_s)
                except OSError:
                    return


def _send_all(sock: socket.socket, data: bytes, timeout_s: float) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:  # the peer's buffer is full: wait until it reads
            with selectors.DefaultSelector() as waiter:
                waiter.register(sock, selectors.EVENT_WRITE)
                if not waiter.select(timeout_s):
                    raise TimeoutError("peer stopped reading") from None
            continue
        view = view[sent:]


def _shutdown_write(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
