"""What a source may point at: the one policy every fetcher calls.

`DestinationPolicy` decides where an outgoing connection may go. A host name is resolved once,
every address it resolves to is checked (loopback, private, link-local and cloud metadata,
unique-local, multicast, carrier-grade NAT, reserved, and the IPv4-mapped, -compatible, NAT64,
6to4 and Teredo forms of them are refused unless `SOUNDFORGE_ALLOWED_NETWORKS` allows their
network), and `connect` opens the socket to exactly the address that was checked, so a second
DNS answer (rebinding) never reaches a socket. Odd spellings of IPv4 addresses (octal, hex,
decimal, shortened: `0x7f.1`, `2130706433`, `0251.0376.0251.0376`) are refused outright.
`ImportRoots` decides which local files may be imported: only those under configured folders,
checked after symlinks and `..` are resolved.

Written here rather than taken from a library: the candidates on the index either check a URL
and then let the HTTP stack resolve it again (the rebinding hole this policy closes) or hook
only one HTTP library, while SoundForge needs one rule for httpx, for a forward proxy that
carries yt-dlp and spotdl, and for the Spotify client.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from soundforge.errors import DestinationRefusedError, ImportRootError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]
"""(host, port) -> the addresses the name resolves to, as text."""

ALLOW_HINT = "allow a network with SOUNDFORGE_ALLOWED_NETWORKS (comma-separated CIDRs)"

_V4_RULES: tuple[tuple[str, str], ...] = (
    ("169.254.169.254/32", "a cloud metadata address"),
    ("127.0.0.0/8", "loopback"),
    ("0.0.0.0/8", "unspecified ('this network')"),
    ("10.0.0.0/8", "a private network (RFC 1918)"),
    ("172.16.0.0/12", "a private network (RFC 1918)"),
    ("192.168.0.0/16", "a private network (RFC 1918)"),
    ("169.254.0.0/16", "link-local"),
    ("100.64.0.0/10", "carrier-grade NAT shared space (RFC 6598)"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved"),
)
_V6_RULES: tuple[tuple[str, str], ...] = (
    ("fd00:ec2::254/128", "a cloud metadata address"),
    ("::1/128", "loopback"),
    ("::/128", "unspecified"),
    ("fe80::/10", "link-local"),
    ("fc00::/7", "unique-local (private)"),
    ("ff00::/8", "multicast"),
    ("fec0::/10", "site-local (deprecated, private)"),
    ("2001::/32", "a Teredo tunnel address"),
    ("64:ff9b:1::/48", "local-use NAT64 (RFC 8215)"),
)
_RULES: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(cidr), name) for cidr, name in _V4_RULES + _V6_RULES
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # the well-known prefix: IPv4 in the low bits
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")


def embedded_ipv4(address: IPAddress) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 one carries (mapped, compatible, NAT64, 6to4), with the form's
    name; None for a plain address."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped, "IPv4-mapped"
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "IPv4-compatible"
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "NAT64"
    if address.sixtofour is not None:
        return address.sixtofour, "6to4"
    return None


def refusal_rule(address: IPAddress) -> str | None:
    """The name of the rule that refuses `address`, or None when it is a public address."""
    carried = embedded_ipv4(address)
    if carried is not None:
        inner, form = carried
        rule = refusal_rule(inner)
        return f"{rule} ({form} form of {inner})" if rule else None
    for network, name in _RULES:
        if address.version == network.version and address in network:
            return name
    if not address.is_global:
        return "a reserved or special-purpose address (not globally routable)"
    return None


def parse_networks(text: str | Iterable[str]) -> tuple[IPNetwork, ...]:
    """`"127.0.0.0/8, 192.168.1.10"` -> networks; a bad entry raises `ValueError` naming it."""
    entries = text.split(",") if isinstance(text, str) else list(text)
    networks = []
    for entry in (item.strip() for item in entries):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not a CIDR network (e.g. 10.0.0.0/8)") from None
    return tuple(networks)


def system_resolver(host: str, port: int) -> list[str]:
    """Every address `getaddrinfo` gives for a TCP connection, in its order, without repeats."""
    answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for _family, _type, _proto, _name, sockaddr in answers:
        text = str(sockaddr[0]).split("%", 1)[0]
        if text not in addresses:
            addresses.append(text)
    return addresses


@dataclass(frozen=True)
class DestinationPolicy:
    """Where outgoing connections may go. Frozen and hashable (part of `SourceConfig`)."""

    allowed_networks: tuple[IPNetwork, ...] = ()
    resolver: Resolver = field(default=system_resolver, compare=False, repr=False)

    @classmethod
    def allowing(cls, networks: str | Iterable[str], **kwargs: Resolver) -> DestinationPolicy:
        return cls(allowed_networks=parse_networks(networks), **kwargs)

    def is_allowed(self, address: IPAddress) -> bool:
        carried = embedded_ipv4(address)
        candidates = [address] if carried is None else [address, carried[0]]
        return any(
            candidate.version == network.version and candidate in network
            for candidate in candidates
            for network in self.allowed_networks
        )

    def check_address(self, address: IPAddress, host: str) -> None:
        """Raise `DestinationRefusedError` naming the rule when `address` may not be reached."""
        rule = refusal_rule(address)
        if rule is not None and not self.is_allowed(address):
            named = f"{host} resolves to {address}" if host != str(address) else str(address)
            raise DestinationRefusedError(
                f"destination refused: {named}, {rule}; {ALLOW_HINT}"
            )

    def check_url(self, url: str) -> None:
        """Refuse, before any request, a URL that is not http(s), has no host, or names its
        host in a form the policy refuses on sight (odd IPv4 spellings, zone ids); the address
        itself is checked when the connection is made."""
        try:
            parts = urllib.parse.urlsplit(url)
            host = parts.hostname
        except ValueError:
            raise DestinationRefusedError("destination refused: not a valid URL") from None
        if parts.scheme.lower() not in ("http", "https"):
            raise DestinationRefusedError(
                f"destination refused: only http(s) is fetched, not {parts.scheme or 'no'} URLs"
            )
        if not host:
            raise DestinationRefusedError("destination refused: a URL without a host")
        literal = ip_literal(host)
        if literal is not None:
            self.check_address(literal, host)

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        """The checked addresses to connect to: a literal is checked as it is, a name resolved
        once and every answer checked (one refused answer refuses the name). Resolution
        failures raise `OSError` (`socket.gaierror`), as a connection attempt would."""
        name = host.strip("[]").rstrip(".").lower()
        literal = ip_literal(name)
        if literal is not None:
            self.check_address(literal, name)
            return [literal]
        answers = [ipaddress.ip_address(text) for text in self.resolver(name, port)]
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, f"{name}: no address")
        for address in answers:
            self.check_address(address, name)
        return answers

    def connect(self, host: str, port: int, timeout_s: float | None) -> socket.socket:
        """A TCP socket to a checked address of `host` (tried in the resolver's order)."""
        failure: OSError | None = None
        for address in self.resolve(host, port):
            try:
                return socket.create_connection((str(address), port), timeout_s)
            except OSError as error:
                failure = error
        assert failure is not None
        raise failure


def ip_literal(host: str) -> IPAddress | None:
    """The address a host names literally, or None for a name. Non-canonical IPv4 spellings
    (octal, hex, decimal, shortened) and IPv6 zone ids are refused: resolvers and HTTP stacks
    disagree about what they mean."""
    if ":" in host:
        if "%" in host:
            raise DestinationRefusedError(
                f"destination refused: {host} carries an IPv6 zone id (link-local scope)"
            )
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            raise DestinationRefusedError(
                f"destination refused: {host!r} is not a valid IPv6 address"
            ) from None
    try:
        return ipaddress.IPv4Address(host)
    except ValueError:
        pass
    labels = host.split(".")
    if all(_NUMERIC_LABEL.match(label) for label in labels if label) and any(labels):
        meaning = _inet_aton_meaning(host)
        raise DestinationRefusedError(
            f"destination refused: {host} is a non-canonical IPv4 address form (octal, hex, "
            f"decimal or shortened{meaning}); write the address as four decimal numbers"
        )
    return None


def _inet_aton_meaning(host: str) -> str:
    try:
        return f", read by C resolvers as {socket.inet_ntoa(socket.inet_aton(host))}"
    except OSError:
        return ""


@dataclass(frozen=True)
class ImportRoots:
    """The folders local sources may come from (`SOUNDFORGE_IMPORT_ROOTS`); empty: none."""

    roots: tuple[Path, ...] = ()

    def check(self, path: Path) -> Path:
        """`path` with symlinks and `..` resolved, when it lies under an import root; else
        `ImportRootError`. A missing file resolves as far as it exists (the caller then says
        'no such file')."""
        resolved = path.resolve()
        for root in self.roots:
            if resolved.is_relative_to(root.resolve()):
                return resolved
        listed = ", ".join(str(root) for root in self.roots) or "none configured"
        raise ImportRootError(
            f"{path}: local files may only be imported from the import roots ({listed}); "
            "move the file there or add its folder to SOUNDFORGE_IMPORT_ROOTS"
        )
