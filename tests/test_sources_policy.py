"""The destination policy against real loopback servers: every loopback, private, link-local,
metadata, unique-local, multicast, reserved and odd-spelled address is refused before a
connection is made (no socket opened, the server saw nothing), directly and after a redirect, on
the httpx path, the yt-dlp path (through the policy proxy), spotdl's proxy variables and the
Spotify client; a name is resolved once and the checked address is the one connected to (a
rebinding resolver gains nothing); refusals are permanent, name the rule and quote no reply.

A second loopback server on 127.0.0.2 stands for an internal service; the first, on 127.0.0.1,
plays a public host where a test allows exactly 127.0.0.1/32."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from soundforge.errors import (
    DestinationRefusedError,
    ImportRootError,
    PermanentError,
    SourceError,
)
from soundforge.source_policy import DestinationPolicy, ImportRoots, refusal_rule
from soundforge.sources import (
    DownloadNetworkError,
    DownloadTooLargeError,
    ImportTooLargeError,
    SourceConfig,
    expand_source,
    fetch_audio,
    parse_source,
)
from soundforge.sources.model import TrackMetadata
from soundforge.sources.policy_proxy import PolicyProxy
from soundforge.sources.ytdlp_resolver import download_entry
from soundforge.storage import Storage
from tests.support.audio import tone_bytes
from tests.support.fake_spotify import FakeSpotify
from tests.support.loopback_http import LoopbackServer, podcast_feed

TRACK_ID = uuid.UUID("00000000-0000-4000-8000-0000000000bb")
PUBLIC_STAND_IN = "127.0.0.1/32"


@pytest.fixture(scope="module")
def flac_bytes() -> bytes:
    return tone_bytes(2.0, "flac")


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return Storage(tmp_path / "store")


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every address a socket was opened to (the real connection is still made)."""
    opened: list[tuple[str, int]] = []
    real = socket.create_connection

    def recording(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        opened.append((str(address[0]), int(address[1])))
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", recording)
    return opened


def config(allowed: str = "", dns: Callable[[str, int], list[str]] | None = None,
           **overrides: Any) -> SourceConfig:  # fmt: skip
    """Sources allowed to reach `allowed` (CIDRs), names resolved by `dns` when given."""
    policy = (DestinationPolicy.allowing(allowed, resolver=dns) if dns
              else DestinationPolicy.allowing(allowed))  # fmt: skip
    values: dict[str, Any] = {"connect_timeout_s": 2.0, "read_timeout_s": 5.0,
                              "resume_attempts": 1, "destinations": policy}  # fmt: skip
    return SourceConfig(**(values | overrides))


def fetch(url: str, storage: Storage, source_config: SourceConfig) -> Any:
    """What the download job does with a queued URL (not checked at `add`: queued by SQL)."""
    metadata = TrackMetadata("queued", None, None, None, None, None, None, origin=url)
    return fetch_audio(metadata, storage, TRACK_ID, source_config)


def leftovers(storage: Storage) -> list[Path]:
    return [p for p in storage.root.rglob("*") if p.is_file()] if storage.root.exists() else []


# Each form names an address the policy refuses; the rule its message must name.
METADATA_FORMS = [
    ("169.254.169.254", "cloud metadata"),
    ("0xa9fea9fe", "non-canonical IPv4"),  # hex
    ("2852039166", "non-canonical IPv4"),  # decimal
    ("0251.0376.0251.0376", "non-canonical IPv4"),  # octal
    ("169.254.43518", "non-canonical IPv4"),  # short
    ("0xa9.0xfe.0xa9.0xfe", "non-canonical IPv4"),
    ("[::ffff:169.254.169.254]", "cloud metadata address (IPv4-mapped"),
    ("[::ffff:a9fe:a9fe]", "cloud metadata address (IPv4-mapped"),
    ("[::169.254.169.254]", "cloud metadata address (IPv4-compatible"),
    ("[64:ff9b::a9fe:a9fe]", "cloud metadata address (NAT64"),
    ("[2002:a9fe:a9fe::1]", "cloud metadata address (6to4"),
    ("[fd00:ec2::254]", "cloud metadata"),
]
OTHER_FORMS = [
    ("10.1.2.3", "private network (RFC 1918)"),
    ("172.16.5.4", "private network (RFC 1918)"),
    ("192.168.1.1", "private network (RFC 1918)"),
    ("169.254.1.1", "link-local"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("224.0.0.1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("0.0.0.0", "unspecified"),
    ("192.0.2.1", "not globally routable"),
    ("[fe80::1]", "link-local"),
    ("[fc00::1]", "unique-local"),
    ("[ff02::1]", "multicast"),
    ("[::]", "unspecified"),
    ("[::ffff:10.0.0.1]", "private network (RFC 1918) (IPv4-mapped"),
    ("[2001:0:4136:e378:8000:63bf:3fff:fdd2]", "Teredo"),
    ("[64:ff9b:1::a00:1]", "local-use NAT64"),
]
LOOPBACK_FORMS = [
    ("127.0.0.1", "loopback"),
    ("127.0.0.2", "loopback"),
    ("localhost", "loopback"),
    ("127.1", "non-canonical IPv4"),
    ("0x7f000001", "non-canonical IPv4"),
    ("2130706433", "non-canonical IPv4"),
    ("0177.0.0.1", "non-canonical IPv4"),
    ("[::1]", "loopback"),
    ("[::ffff:127.0.0.1]", "loopback (IPv4-mapped"),
    ("[::ffff:7f00:1]", "loopback (IPv4-mapped"),
]


@pytest.mark.parametrize(("host", "rule"), METADATA_FORMS + OTHER_FORMS + LOOPBACK_FORMS)
def test_every_refused_form_fails_permanently_before_any_connection(
    host: str, rule: str, public: LoopbackServer, storage: Storage,
    connects: list[tuple[str, int]],
) -> None:  # fmt: skip
    port = public.base_url.rsplit(":", 1)[1]
    public.serve_bytes("/song.flac", b"fLaC" + b"\0" * 4000)
    with pytest.raises(DestinationRefusedError, match="destination refused") as refused:
        fetch(f"http://{host}:{port}/song.flac", storage, config())
    assert rule in str(refused.value)
    assert isinstance(refused.value, PermanentError)
    assert connects == [] and public.requests == [], "refused before any connection"
    assert leftovers(storage) == []
    if not host.isalpha():  # a literal address: `add` refuses it already, without DNS
        with pytest.raises(DestinationRefusedError, match=re.escape(rule)):
            expand_source(parse_source(f"http://{host}:{port}/song.flac"), config())


def test_redirect_to_an_internal_address_is_refused_and_never_reaches_it(
    public: LoopbackServer, internal: LoopbackServer, storage: Storage
) -> None:
    port = public.base_url.rsplit(":", 1)[1]
    hops = {
        "/to-internal": f"http://127.0.0.2:{port}/secret",
        "/to-metadata-hex": f"http://0xa9fea9fe:{port}/latest/meta-data/",
        "/to-mapped": f"http://[::ffff:127.0.0.2]:{port}/secret",
        "/to-loopback-v6": f"http://[::1]:{port}/secret",
        "/to-octal": f"http://0177.0.0.2:{port}/secret",
    }
    for path, location in hops.items():
        public.redirect(path, location)
    public.redirect("/twice", "/to-internal")
    for path in [*hops, "/twice"]:
        with pytest.raises(DestinationRefusedError, match="destination refused") as refused:
            fetch(public.url(path), storage, config(PUBLIC_STAND_IN))
        assert "internal-service-reply" not in str(refused.value)
    assert internal.requests == []
    assert leftovers(storage) == []


def test_allowed_network_is_reached(public: LoopbackServer, storage: Storage,
                                    flac_bytes: bytes) -> None:  # fmt: skip
    url = public.serve_bytes("/song.flac", flac_bytes, "audio/flac")
    stored = fetch(url, storage, config("127.0.0.0/8"))
    assert stored.file_size == len(flac_bytes)


def test_a_name_is_resolved_once_and_the_checked_address_is_connected(
    public: LoopbackServer, internal: LoopbackServer, storage: Storage, flac_bytes: bytes,
    connects: list[tuple[str, int]],
) -> None:  # fmt: skip
    """A rebinding resolver: the first answer is the 'public' server, every later one the
    internal service. The download connects where the first answer pointed, never asks again
    for that connection, and the internal service sees nothing."""
    answers: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        answer = "127.0.0.1" if not answers else "127.0.0.2"
        answers.append(answer)
        return [answer]

    port = int(public.base_url.rsplit(":", 1)[1])
    public.serve_bytes("/song.flac", flac_bytes, "audio/flac")
    stored = fetch(f"http://rebind.test:{port}/song.flac", storage,
                   config(PUBLIC_STAND_IN, dns=rebinding))  # fmt: skip
    assert stored.file_size == len(flac_bytes)
    assert answers == ["127.0.0.1"] and connects == [("127.0.0.1", port)]
    assert internal.requests == [] and len(public.requests) == 1


def test_a_rebinding_answer_on_a_later_connection_is_refused(
    public: LoopbackServer, internal: LoopbackServer, storage: Storage, flac_bytes: bytes
) -> None:
    """The connection dropped mid-body; the resumed request resolves again, gets the
    internal address, and is refused (permanent), not sent there."""
    calls: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"] if len(calls) == 1 else ["127.0.0.2"]

    port = int(public.base_url.rsplit(":", 1)[1])
    public.serve_bytes("/song.flac", flac_bytes, "audio/flac", drop_after=2000)
    with pytest.raises(DestinationRefusedError, match=r"rebind\.test resolves to 127\.0\.0\.2"):
        fetch(f"http://rebind.test:{port}/song.flac", storage,
              config(PUBLIC_STAND_IN, dns=rebinding))  # fmt: skip
    assert internal.requests == []


def test_a_name_with_one_private_answer_among_public_ones_is_refused(
    public: LoopbackServer, storage: Storage, connects: list[tuple[str, int]]
) -> None:
    def mixed(host: str, port: int) -> list[str]:
        return ["127.0.0.1", "10.0.0.7"]

    port = public.base_url.rsplit(":", 1)[1]
    with pytest.raises(DestinationRefusedError, match=r"resolves to 10\.0\.0\.7, a private"):
        fetch(f"http://mixed.test:{port}/song.flac", storage,
              config(PUBLIC_STAND_IN, dns=mixed))  # fmt: skip
    assert connects == [] and public.requests == []


def test_refused_reply_bytes_never_reach_the_error(
    public: LoopbackServer, storage: Storage
) -> None:
    """An allowed server answering something else than audio: the error describes it without
    quoting a byte of it, nor the server's own reason phrase."""
    public.serve_bytes("/redis", b"-ERR wrong number of arguments for 'get' command\r\n" * 40)
    public.status("/teapot", 418, b"SECRET-BODY", headers=())
    with pytest.raises(PermanentError) as not_audio:
        fetch(public.url("/redis"), storage, config("127.0.0.0/8"))
    assert "ERR" not in str(not_audio.value) and "2d 45 52" not in str(not_audio.value)
    with pytest.raises(PermanentError) as teapot:
        fetch(public.url("/teapot"), storage, config("127.0.0.0/8"))
    assert "SECRET" not in str(teapot.value) and "418" in str(teapot.value)


def test_policy_rules_cover_the_embedded_forms() -> None:
    ip = ipaddress.ip_address
    assert refusal_rule(ip("93.184.216.34")) is None
    assert refusal_rule(ip("2606:4700:4700::1111")) is None
    assert refusal_rule(ip("64:ff9b::5db8:d822")) is None  # NAT64 of a public address
    assert refusal_rule(ip("2002:5db8:d822::1")) is None  # 6to4 of a public address
    assert "loopback" in str(refusal_rule(ip("::ffff:127.0.0.1")))
    policy = DestinationPolicy.allowing("192.168.1.0/24")
    policy.check_address(ip("192.168.1.20"), "nas.lan")
    policy.check_address(ip("::ffff:192.168.1.20"), "nas.lan")
    with pytest.raises(DestinationRefusedError, match="RFC 1918"):
        policy.check_address(ip("192.168.2.20"), "other.lan")


# -- yt-dlp, through the policy proxy ---------------------------------------------------------


def _feed(server: LoopbackServer, entries: list[tuple[str, str, float]]) -> str:
    feed = podcast_feed(entries)

    def send(request: Any) -> None:
        request.send_response(200)
        request.send_header("Content-Type", "application/rss+xml")
        request.send_header("Content-Length", str(len(feed)))
        request.end_headers()
        request.wfile.write(feed)

    server.add("/search.rss", send)
    return server.url("/search.rss") + "?q={query}"


def _spotify_metadata() -> TrackMetadata:
    return TrackMetadata("Tone", "Sines", None, None, 2, "4cOdK2wGLETKBW3PvgPWqT",
                         "https://open.spotify.com/track/4cOdK2wGLETKBW3PvgPWqT",
                         "spotify:track:4cOdK2wGLETKBW3PvgPWqT")  # fmt: skip


def test_ytdlp_media_url_on_an_internal_address_is_refused(
    public: LoopbackServer, internal: LoopbackServer, storage: Storage
) -> None:
    port = public.base_url.rsplit(":", 1)[1]
    public.redirect("/hop.flac", f"http://127.0.0.2:{port}/secret")
    for media_url in (f"http://127.0.0.2:{port}/secret", public.url("/hop.flac"),
                      f"http://0x7f000002:{port}/secret"):  # fmt: skip
        template = _feed(public, [("Sines - Tone", media_url, 2.0)])
        with pytest.raises(DestinationRefusedError, match="destination refused") as refused:
            fetch_audio(_spotify_metadata(), storage, TRACK_ID,
                        config(PUBLIC_STAND_IN, resolver_search_template=template))  # fmt: skip
        assert isinstance(refused.value, PermanentError)
    assert internal.requests == []
    assert leftovers(storage) == []


def test_ytdlp_search_on_an_internal_address_is_refused(
    public: LoopbackServer, storage: Storage
) -> None:
    template = _feed(public, [("Sines - Tone", public.url("/x.flac"), 2.0)])
    with pytest.raises(DestinationRefusedError, match=r"127\.0\.0\.1, loopback"):
        fetch_audio(_spotify_metadata(), storage, TRACK_ID,
                    config("", resolver_search_template=template))  # fmt: skip
    assert public.requests == []


def test_ytdlp_through_the_proxy_downloads_from_an_allowed_host(
    public: LoopbackServer, storage: Storage, flac_bytes: bytes
) -> None:
    media = public.serve_bytes("/tone.flac", flac_bytes, "audio/flac")
    template = _feed(public, [("Sines - Tone", media, 2.0)])
    stored = fetch_audio(_spotify_metadata(), storage, TRACK_ID,
                         config(PUBLIC_STAND_IN, resolver_search_template=template))  # fmt: skip
    assert stored.file_size == len(flac_bytes)


def test_ytdlp_oversize_download_is_a_permanent_error(
    public: LoopbackServer, storage: Storage, tmp_path: Path
) -> None:
    """No Content-Length, so only the progress hook sees the size: its error used to escape
    yt-dlp raw and count as transient (three downloads); now it fails the job at once."""
    body = tone_bytes(6.0, "wav")
    media = public.serve_bytes("/big.wav", body, "audio/wav", content_length=False)
    entry = {"_type": "url", "url": media, "title": "big one", "ie_key": "Generic"}
    with pytest.raises(DownloadTooLargeError, match="big one: exceeds the download limit") as big:
        download_entry(entry, tmp_path / "staging", config("127.0.0.0/8",
                                                           max_download_bytes=50_000))
    assert isinstance(big.value, PermanentError)
    assert list(tmp_path.glob("staging*")) == [] or all(
        p.stat().st_size <= 50_000 + 65_536 for p in tmp_path.glob("staging*")
    )


# -- spotdl's proxy variables and the Spotify client --------------------------------------------


def test_spotdl_traffic_goes_through_the_policy_proxy(
    tmp_path: Path, storage: Storage, public: LoopbackServer, internal: LoopbackServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A stand-in spotdl that fetches with Python's urllib (which, like spotdl's own stack,
    reads the proxy variables) tries the internal service: refused, and the job's error is the
    policy's, permanent."""
    port = public.base_url.rsplit(":", 1)[1]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "spotdl"
    script.write_text(
        f"#!{sys.executable}\n"
        "import urllib.request\n"
        f"urllib.request.urlopen('http://127.0.0.2:{port}/secret', timeout=5).read()\n"
    )
    script.chmod(0o755)
    (bin_dir / "ffmpeg").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "ffmpeg").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("NO_PROXY", "127.0.0.2")
    with pytest.raises(DestinationRefusedError, match=r"127\.0\.0\.2, loopback"):
        fetch_audio(_spotify_metadata(), storage, TRACK_ID, config(resolver="spotdl"))
    assert internal.requests == []


def test_spotify_api_on_a_refused_address_is_never_contacted() -> None:
    with FakeSpotify() as spotify:
        spotify_config = spotify.source_config(destinations=DestinationPolicy())
        track = spotify.add_track("Song", ["Artist"])
        with pytest.raises(DestinationRefusedError, match="loopback"):
            expand_source(parse_source(f"spotify:track:{track['id']}"), spotify_config)
        assert spotify.api_requests == [] and spotify.token_requests == 0


def test_unresolvable_name_stays_a_transient_network_error(storage: Storage) -> None:
    def nothing(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(DownloadNetworkError, match="cannot connect"):
        fetch("http://nowhere.test/song.flac", storage, config(dns=nothing))


# -- import roots -------------------------------------------------------------------------------


def test_local_files_only_from_the_import_roots(tmp_path: Path, storage: Storage) -> None:
    root, outside = tmp_path / "imports", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    inside_file = root / "song.flac"
    inside_file.write_bytes(tone_bytes(1.0, "flac"))
    secret = outside / "secret.flac"
    secret.write_bytes(tone_bytes(1.0, "flac"))
    (root / "link.flac").symlink_to(secret)
    roots = SourceConfig(import_roots=ImportRoots((root,)))

    assert fetch(str(inside_file), storage, roots).file_size == inside_file.stat().st_size
    for source in (str(secret), f"file://{secret}", str(root / "link.flac"),
                   f"{root}/../elsewhere/secret.flac", "/etc/passwd"):  # fmt: skip
        with pytest.raises(ImportRootError, match="SOUNDFORGE_IMPORT_ROOTS"):
            expand_source(parse_source(source), roots)
        metadata = TrackMetadata("x", None, None, None, None, None, None, origin=source)
        with pytest.raises(ImportRootError):  # a job queued by SQL is checked again
            fetch_audio(metadata, storage, TRACK_ID, roots)
    with pytest.raises(ImportRootError, match="none configured"):
        expand_source(parse_source(str(inside_file)), SourceConfig())


def test_a_local_file_over_the_import_limit_is_refused_when_added_and_when_fetched(
    tmp_path: Path, storage: Storage
) -> None:
    """SOUNDFORGE_MAX_IMPORT_BYTES holds for local files as the download limit does for URLs:
    refused at `add` and again by the job, permanently, nothing left in the storage folder."""
    root = tmp_path / "imports"
    root.mkdir()
    song = root / "song.flac"
    song.write_bytes(tone_bytes(1.0, "flac"))
    size = song.stat().st_size
    tight = SourceConfig(import_roots=ImportRoots((root,)), max_import_bytes=size - 1)
    with pytest.raises(ImportTooLargeError, match=f"{size} bytes.*SOUNDFORGE_MAX_IMPORT_BYTES"):
        expand_source(parse_source(str(song)), tight)
    metadata = TrackMetadata("x", None, None, None, None, None, None, origin=str(song))
    with pytest.raises(ImportTooLargeError) as refused:
        fetch_audio(metadata, storage, TRACK_ID, tight)
    assert isinstance(refused.value, PermanentError)
    assert not [path for path in storage.root.rglob("*") if path.is_file()]
    exact = SourceConfig(import_roots=ImportRoots((root,)), max_import_bytes=size)
    assert fetch(str(song), storage, exact).file_size == size and song.exists()


def test_a_link_or_copy_over_the_import_limit_leaves_nothing(tmp_path: Path) -> None:
    """The size is checked again where the file is taken (it may have grown since `add`): a
    hard link is removed, a copy (another filesystem) is refused before a byte is read, and a
    copy stops one byte past the limit when the file yields more than its size said (a file
    growing as it is read; /proc's files report size 0 and yield kilobytes)."""
    from soundforge.sources.fetch import _copy_without_following, _link_or_copy

    song = tmp_path / "song.flac"
    song.write_bytes(b"fLaC" + bytes(5000))
    staging = tmp_path / "staging.part"
    for take in (_link_or_copy, _copy_without_following):
        with pytest.raises(ImportTooLargeError, match="5004 bytes, over the import limit"):
            take(song, staging, 5003)
        assert not staging.exists()
    grown = Path("/proc/self/maps")
    assert grown.stat().st_size == 0 and len(grown.read_bytes()) > 200
    with pytest.raises(ImportTooLargeError, match="grew past the import limit of 200 bytes"):
        _copy_without_following(grown, staging, 200)
    assert not staging.exists()
    _copy_without_following(song, staging, 5004)
    assert staging.read_bytes() == song.read_bytes()


def _through_proxy(proxy_url: str, request: bytes) -> bytes:
    host, port = proxy_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def test_policy_proxy_checks_connect_tunnels_and_forwards_one_request_per_connection(
    public: LoopbackServer, internal: LoopbackServer, flac_bytes: bytes
) -> None:
    """What yt-dlp sends for https (CONNECT) and for http (an absolute URI), by hand."""
    port = public.base_url.rsplit(":", 1)[1]
    public.serve_bytes("/song.flac", flac_bytes, "audio/flac")
    policy = DestinationPolicy.allowing(PUBLIC_STAND_IN)
    with PolicyProxy(policy, connect_timeout_s=2, idle_timeout_s=5) as proxy:
        refused = _through_proxy(proxy.url, f"CONNECT 127.0.0.2:{port} HTTP/1.1\r\n\r\n".encode())
        assert refused.startswith(b"HTTP/1.1 403")
        tunnel = _through_proxy(proxy.url, (
            f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n"
            f"GET /song.flac HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        ).encode())  # fmt: skip
        assert tunnel.startswith(b"HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200")
        assert tunnel.endswith(flac_bytes)
        forwarded = _through_proxy(proxy.url, (
            f"GET http://127.0.0.1:{port}/song.flac HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Proxy-Connection: keep-alive\r\nConnection: keep-alive\r\n\r\n"
        ).encode())  # fmt: skip
        head = forwarded.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 200") and b"connection: close" in head
        assert b"keep-alive" not in head
        with pytest.raises(DestinationRefusedError, match=r"127\.0\.0\.2, loopback"):
            proxy.raise_if_refused()
    assert internal.requests == []
    assert [r.headers.get("Connection") for r in public.requests] == ["close", "close"]


def test_a_file_swapped_for_a_symlink_after_the_check_is_not_read(tmp_path: Path) -> None:
    """The race the resolved-path check leaves: the checked file replaced by a link to a
    secret before it is linked into staging. Neither the link nor the copy follows it."""
    from soundforge.sources.fetch import _link_or_copy

    secret = tmp_path / "secret.flac"
    secret.write_bytes(b"fLaC secret")
    swapped = tmp_path / "imports" / "song.flac"
    swapped.parent.mkdir()
    swapped.symlink_to(secret)
    staging = tmp_path / "staging.part"
    with pytest.raises(ImportRootError, match="became a symbolic link"):
        _link_or_copy(swapped, staging, 1 << 20)
    assert not staging.exists() and not staging.is_symlink()


@pytest.mark.timeout(60)
def test_a_file_swapped_for_a_fifo_after_the_check_is_refused_without_blocking(
    tmp_path: Path,
) -> None:
    """The same race with a named pipe: linked, it is refused as not a regular file; copied
    (another filesystem), it is refused before a read that would wait for a writer forever."""
    from soundforge.sources.fetch import _copy_without_following, _link_or_copy

    fifo = tmp_path / "imports" / "song.flac"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    staging = tmp_path / "staging.part"
    with pytest.raises(SourceError, match="not a regular file"):
        _link_or_copy(fifo, staging, 1 << 20)
    with pytest.raises(SourceError, match="not a regular file"):
        _copy_without_following(fifo, staging, 1 << 20)
    assert not staging.exists()


@pytest.fixture
def tls_server(tmp_path: Path, flac_bytes: bytes) -> Iterator[tuple[int, list[str]]]:
    """An https server on 127.0.0.1 with a throwaway self-signed certificate for `localhost`
    (openssl), at `tmp_path / "cert.pem"`; yields its port and the paths it was asked for."""
    import http.server
    import shutil
    import ssl
    import subprocess
    import threading

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)  # fmt: skip
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "audio/flac")
            self.send_header("Content-Length", str(len(flac_bytes)))
            self.end_headers()
            self.wfile.write(flac_bytes)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1]), seen
    finally:
        server.shutdown()
        server.server_close()


def test_ytdlp_https_goes_through_a_checked_connect_tunnel(
    tls_server: tuple[int, list[str]], tmp_path: Path, flac_bytes: bytes
) -> None:
    """The real yt-dlp fetching https through the proxy: TLS end to end (the certificate is
    for `localhost`, the name in the URL), the tunnel opened only where the policy allows."""
    import yt_dlp

    port, seen = tls_server
    url = f"https://localhost:{port}/tone.flac"
    for allowed in ("", "127.0.0.0/8"):
        policy = DestinationPolicy.allowing(allowed)
        with PolicyProxy(policy, connect_timeout_s=2, idle_timeout_s=5) as proxy:
            options = {"proxy": proxy.url, "nocheckcertificate": True, "quiet": True,
                       "no_warnings": True, "noprogress": True, "overwrites": True,
                       "outtmpl": str(tmp_path / "out.%(ext)s")}  # fmt: skip
            with yt_dlp.YoutubeDL(options) as ydl:
                if not allowed:
                    with pytest.raises(yt_dlp.utils.DownloadError):
                        ydl.extract_info(url, download=True)
                    with pytest.raises(DestinationRefusedError, match="localhost resolves"):
                        proxy.raise_if_refused()
                    assert seen == []
                else:
                    ydl.extract_info(url, download=True)
                    assert (tmp_path / "out.flac").read_bytes() == flac_bytes


def test_https_download_is_pinned_yet_checks_the_certificate_against_the_url_name(
    tls_server: tuple[int, list[str]], tmp_path: Path, flac_bytes: bytes
) -> None:
    """The socket goes to the checked 127.0.0.1; TLS still verifies the certificate, and
    against `localhost`, the URL's name: the same server by its address fails the check."""
    import ssl

    from soundforge.sources.http_download import download_http
    from soundforge.sources.pinned_http import policy_client

    port, seen = tls_server
    trusting = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    allowed = config("127.0.0.0/8")
    with policy_client(allowed.destinations, verify=trusting) as client:
        size = download_http(f"https://localhost:{port}/a.flac", tmp_path / "a", allowed,
                             client=client)  # fmt: skip
        assert size == len(flac_bytes) and seen == ["/a.flac"]
        with pytest.raises(DownloadNetworkError, match=r"CERTIFICATE_VERIFY_FAILED|match"):
            download_http(f"https://127.0.0.1:{port}/b.flac", tmp_path / "b", allowed,
                          client=client)  # fmt: skip
    with pytest.raises(DownloadNetworkError, match="CERTIFICATE_VERIFY_FAILED"):
        download_http(f"https://localhost:{port}/c.flac", tmp_path / "c", allowed)
    assert seen == ["/a.flac"]
