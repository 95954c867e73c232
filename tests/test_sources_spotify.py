"""The Spotify metadata client against the loopback Web API stand-in: the client-credentials
token flow and its cache, pagination, 429/Retry-After, 401 -> one refresh, deleted tracks, the
offline and no-credentials messages, and the mapping to track rows."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from soundforge.errors import PermanentError, TransientError
from soundforge.sources import (
    SourceConfig,
    SourceNotFoundError,
    SpotifyAuthError,
    SpotifyClient,
    SpotifyCredentialsMissingError,
    SpotifySource,
    SpotifyUnavailableError,
    expand_source,
    parse_source,
)
from soundforge.sources.errors import ExpansionTooLargeError
from tests.support.fake_spotify import FakeSpotify
from tests.support.loopback_http import LOOPBACK_POLICY


class FakeClock:
    """A clock tests move by hand; `sleep` advances it and records the wait."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def spotify() -> Iterator[FakeSpotify]:
    with FakeSpotify() as running:
        yield running


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def client_for(spotify: FakeSpotify, clock: FakeClock) -> SpotifyClient:
    return SpotifyClient(spotify.source_config(clock=clock, sleep=clock.sleep))


def test_track_maps_to_the_row_fields(spotify: FakeSpotify, clock: FakeClock) -> None:
    track = spotify.add_track("Song", ["Alice", "Bob"], duration_ms=201_600, album="Record")
    metadata = client_for(spotify, clock).track(track["id"])
    assert metadata.title == "Song"
    assert metadata.artist == "Alice, Bob"
    assert metadata.album == "Record"
    assert metadata.album_art_url is not None and metadata.album_art_url.endswith("-640")
    assert metadata.duration == 202
    assert metadata.spotify_id == track["id"]
    assert metadata.spotify_url == f"https://open.spotify.com/track/{track['id']}"
    assert metadata.origin == f"spotify:track:{track['id']}"


def test_token_is_fetched_once_and_reused_until_it_expires(
    spotify: FakeSpotify, clock: FakeClock
) -> None:
    track = spotify.add_track("Song", ["Alice"])
    client = client_for(spotify, clock)
    for _ in range(3):
        client.track(track["id"])
    assert spotify.token_requests == 1
    clock.now += spotify.token_lifetime_s  # past expiry (minus the safety margin)
    client.track(track["id"])
    assert spotify.token_requests == 2


def test_wrong_client_secret_is_a_permanent_auth_error(spotify: FakeSpotify) -> None:
    client = SpotifyClient(spotify.source_config(spotify_client_secret="wrong"))
    with pytest.raises(SpotifyAuthError, match=r"refused the client credentials.*Invalid client"):
        client.track(spotify.add_track("Song", ["A"])["id"])


def test_playlist_of_120_tracks_is_read_in_pages(spotify: FakeSpotify, clock: FakeClock) -> None:
    tracks = [spotify.add_track(f"Song {n}", [f"Artist {n}"]) for n in range(120)]
    playlist_id = spotify.add_playlist([*tracks[:60], None, *tracks[60:]])  # one removed entry
    listed = client_for(spotify, clock).playlist_tracks(playlist_id)
    assert [m.spotify_id for m in listed] == [t["id"] for t in tracks]
    pages = [p for p in spotify.api_requests if f"/playlists/{playlist_id}/tracks" in p]
    assert len(pages) == 2 and "offset=100" in pages[1]


def test_a_playlist_past_the_expansion_limit_is_refused_for_good(
    spotify: FakeSpotify, clock: FakeClock
) -> None:
    tracks = [spotify.add_track(f"Song {n}", ["Artist"]) for n in range(30)]
    playlist_id = spotify.add_playlist([*tracks, None])  # and one removed entry
    config = spotify.source_config(clock=clock, sleep=clock.sleep, max_expanded_tracks=20)
    with pytest.raises(ExpansionTooLargeError, match="more than 20 tracks") as refused:
        SpotifyClient(config).playlist_tracks(playlist_id)
    assert isinstance(refused.value, PermanentError)


def test_a_next_link_that_loops_ends_the_expansion_at_once(
    spotify: FakeSpotify, clock: FakeClock
) -> None:
    spotify.looping_pages = True
    tracks = [spotify.add_track(f"Song {n}", ["Artist"]) for n in range(120)]
    playlist_id = spotify.add_playlist([*tracks, None])  # and one removed entry
    with pytest.raises(ExpansionTooLargeError, match="never end"):
        client_for(spotify, clock).playlist_tracks(playlist_id)
    pages = [p for p in spotify.api_requests if f"/playlists/{playlist_id}/tracks" in p]
    assert len(pages) == 2  # the first page and its next, whose next names itself: refused


def test_album_expands_into_its_tracks_with_the_album_art(
    spotify: FakeSpotify, clock: FakeClock
) -> None:
    tracks = [spotify.add_track(f"Part {n}", ["Band"], album="Opus") for n in range(55)]
    album_id = spotify.add_album("Opus", tracks)
    listed = expand_source(
        SpotifySource("album", album_id), spotify.source_config(clock=clock, sleep=clock.sleep),
        spotify=client_for(spotify, clock),
    )  # fmt: skip
    assert [m.title for m in listed] == [f"Part {n}" for n in range(55)]
    assert {m.album for m in listed} == {"Opus"}
    assert all(m.album_art_url and m.album_art_url.endswith("-640") for m in listed)


def test_429_is_waited_out_for_retry_after_then_succeeds(
    spotify: FakeSpotify, clock: FakeClock
) -> None:
    track = spotify.add_track("Song", ["Alice"])
    spotify.fail_next(429, retry_after=7, times=2)
    assert client_for(spotify, clock).track(track["id"]).title == "Song"
    assert clock.sleeps == [7.0, 7.0]


def test_429_with_a_long_retry_after_becomes_a_transient_error(
    spotify: FakeSpotify, clock: FakeClock
) -> None:
    track = spotify.add_track("Song", ["Alice"])
    spotify.fail_next(429, retry_after=3600)
    with pytest.raises(SpotifyUnavailableError, match="wait 3600 s"):
        client_for(spotify, clock).track(track["id"])
    assert clock.sleeps == []


def test_401_refreshes_the_token_once_then_succeeds(spotify: FakeSpotify, clock: FakeClock) -> None:
    track = spotify.add_track("Song", ["Alice"])
    client = client_for(spotify, clock)
    client.track(track["id"])
    spotify.revoke_tokens()
    assert client.track(track["id"]).title == "Song"
    assert spotify.token_requests == 2


def test_401_after_the_refresh_is_a_permanent_auth_error(
    spotify: FakeSpotify, clock: FakeClock
) -> None:
    track = spotify.add_track("Song", ["Alice"])
    spotify.fail_next(401, times=2)
    with pytest.raises(SpotifyAuthError, match="refused a fresh token"):
        client_for(spotify, clock).track(track["id"])
    assert spotify.token_requests == 2


def test_deleted_track_is_a_permanent_not_found_error(
    spotify: FakeSpotify, clock: FakeClock
) -> None:
    track = spotify.add_track("Gone", ["Alice"])
    spotify.delete_track(track["id"])
    with pytest.raises(SourceNotFoundError, match=f"track {track['id']} not found") as caught:
        client_for(spotify, clock).track(track["id"])
    assert isinstance(caught.value, PermanentError)


def test_server_error_is_transient(spotify: FakeSpotify, clock: FakeClock) -> None:
    spotify.fail_next(502)
    with pytest.raises(SpotifyUnavailableError, match="HTTP 502") as caught:
        client_for(spotify, clock).track(spotify.add_track("S", ["A"])["id"])
    assert isinstance(caught.value, TransientError)


def test_spotify_link_without_credentials_says_so() -> None:
    source = parse_source("https://open.spotify.com/track/4cOdK2wGLETKBW3PvgPWqT")
    with pytest.raises(SpotifyCredentialsMissingError) as caught:
        expand_source(source, SourceConfig())
    message = str(caught.value)
    assert "no" in message and "credentials" in message
    assert "SOUNDFORGE_SPOTIFY_CLIENT_ID" in message
    assert "SOUNDFORGE_SPOTIFY_CLIENT_SECRET" in message
    assert isinstance(caught.value, PermanentError)


def test_spotify_link_without_network_says_so() -> None:
    with socket.socket() as probe:  # a port nobody listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    config = SourceConfig(
        spotify_client_id="id", spotify_client_secret="secret",
        spotify_api_url=f"{dead}/v1", spotify_auth_url=f"{dead}/api/token",
        connect_timeout_s=1.0, read_timeout_s=1.0, destinations=LOOPBACK_POLICY,
    )  # fmt: skip
    with pytest.raises(SpotifyUnavailableError, match="no network connection") as caught:
        SpotifyClient(config).track("4cOdK2wGLETKBW3PvgPWqT")
    assert "cannot reach the Spotify API" in str(caught.value)
    assert isinstance(caught.value, TransientError)


def test_next_link_to_another_host_is_not_followed(spotify: FakeSpotify, clock: FakeClock) -> None:
    with pytest.raises(SpotifyUnavailableError, match="another host"):
        client_for(spotify, clock).get("http://evil.example/v1/tracks/x")


def test_one_client_shared_by_many_threads_fetches_one_token(
    spotify: FakeSpotify, clock: FakeClock
) -> None:
    track = spotify.add_track("Song", ["Alice"])
    client = client_for(spotify, clock)
    with ThreadPoolExecutor(max_workers=16) as pool:
        titles = list(pool.map(lambda _: client.track(track["id"]).title, range(64)))
    assert titles == ["Song"] * 64
    assert spotify.token_requests == 1
