"""httpx clients whose every connection passes the destination policy: a network backend that
resolves the host once through `DestinationPolicy`, refuses what the policy refuses, and opens
the socket to exactly the checked address. TLS still uses the URL's host name (SNI and
certificate checks), and every redirect hop or resumed request makes a new checked connection
(or reuses one to the same checked origin). Environment proxies are ignored: a proxy would
resolve the name again, out of the policy's sight."""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from soundforge.source_policy import DestinationPolicy


class _PolicyBackend(httpcore.SyncBackend):
    """httpcore's socket backend with the policy between the host name and `connect`."""

    def __init__(self, policy: DestinationPolicy) -> None:
        self._policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = self._policy.resolve(host, port)  # DestinationRefusedError passes up
        except TimeoutError as error:
            raise httpcore.ConnectTimeout(str(error)) from None
        except OSError as error:
            raise httpcore.ConnectError(f"cannot resolve {host} ({error})") from None
        failure: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                return super().connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as error:
                failure = error
        assert failure is not None
        raise failure


class PolicyTransport(httpx.HTTPTransport):
    """`httpx.HTTPTransport` over `_PolicyBackend` (HTTP/1.1, certificate checks on)."""

    def __init__(self, policy: DestinationPolicy, verify: ssl.SSLContext | bool = True) -> None:
        super().__init__(trust_env=False)
        limits = httpx.Limits()
        # The parent builds its pool without a way to pass a network backend: replace it.
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_PolicyBackend(policy),
        )


def policy_client(
    policy: DestinationPolicy, *, verify: ssl.SSLContext | bool = True, **options: Any
) -> httpx.Client:
    """An `httpx.Client` (options as for httpx) whose connections all pass `policy`;
    `verify` is the TLS verification (a context trusting a test's own certificate)."""
    return httpx.Client(transport=PolicyTransport(policy, verify), trust_env=False, **options)
