"""A real S3 protocol server on loopback for tests (moto's standalone server, in a thread of
the test process, reachable by subprocesses too), the settings that point SoundForge at it,
and a TCP proxy in front of it that can cut every connection mid-transfer (a server that goes
away during an upload)."""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from moto.server import ThreadedMotoServer

REGION = "us-east-1"
CREDENTIALS = {"s3_access_key_id": "test-key", "s3_secret_access_key": "test-secret"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class S3Server:
    """A running moto server; `bucket()` makes a fresh bucket and returns its name."""

    port: int
    server: ThreadedMotoServer

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def bucket(self) -> str:
        name = f"sf-{uuid.uuid4().hex[:12]}"
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("PUT", f"/{name}")
            response = connection.getresponse()
            response.read()
            assert response.status == 200, response.status
        finally:
            connection.close()
        return name

    def restart(self) -> None:
        """Stop and start again on the same port (moto keeps its state in this process)."""
        self.server.stop()
        self.server = _start(self.port)


def _start(port: int) -> ThreadedMotoServer:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server


@contextlib.contextmanager
def moto_s3() -> Iterator[S3Server]:
    port = free_port()
    running = S3Server(port, _start(port))
    try:
        yield running
    finally:
        running.server.stop()


def s3_settings(endpoint: str, bucket: str, prefix: str = "sf") -> dict[str, object]:
    """Settings (keyword form) for S3 storage at `endpoint`, quick to give up when it is down
    (two quick retries: a pooled connection the server closed meanwhile is retried, as in
    production)."""
    return {"storage_url": f"s3://{bucket}/{prefix}", "s3_endpoint_url": endpoint,
            "s3_region": REGION, "s3_max_retries": 2, "s3_retry_timeout_s": 5,
            **CREDENTIALS}  # fmt: skip


def s3_env(endpoint: str, bucket: str, prefix: str = "sf") -> dict[str, str]:
    """The same as `SOUNDFORGE_*` variables, for subprocesses."""
    return {f"SOUNDFORGE_{name.upper()}": str(value)
            for name, value in s3_settings(endpoint, bucket, prefix).items()}  # fmt: skip


class CuttingProxy:
    """Forwards TCP connections to `target_port`; once `cut_after_bytes` have gone upstream
    (or on `cut()`), it closes every connection and refuses new ones until `heal()`."""

    def __init__(self, target_port: int, cut_after_bytes: int | None = None) -> None:
        self.target_port = target_port
        self.cut_after_bytes = cut_after_bytes
        self.upstream_bytes = 0
        self.cut_done = threading.Event()
        self._refusing = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._refusing:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False),
                             daemon=True).start()  # fmt: skip

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
                if upstream:
                    with self._lock:
                        self.upstream_bytes += len(data)
                        over = (self.cut_after_bytes is not None
                                and self.upstream_bytes >= self.cut_after_bytes)  # fmt: skip
                    if over:
                        self.cut()
                        return
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.close()

    def cut(self) -> None:
        with self._lock:
            self._refusing = True
            self.cut_after_bytes = None
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        self.cut_done.set()

    def heal(self) -> None:
        self._refusing = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()
