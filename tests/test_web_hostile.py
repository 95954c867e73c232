"""The dashboard against hostile requests, over real HTTP to a real `soundforge serve`: odd
numbers, cookies, JSON and sources get a one-line 400 (or are ignored), never a 500, and the
server answers the next request on the same connection."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.support.pipeline import ServiceProcesses
from tests.support.web import TOKEN, WebServer, analysed_track, start_web

pytestmark = pytest.mark.timeout(300)
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def web(services: ServiceProcesses, cli_env: dict[str, str]) -> WebServer:
    return start_web(services, cli_env, web_writes_per_minute=1000)


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "9" * 5000},  # past Python's int() digit limit
        {"offset": "9" * 30},  # past PostgreSQL's bigint
        {"page": "9" * 30},
        {"limit": "\u00b2"},  # str.isdigit() says yes, int() says no
        {"offset": "\u0661\u0662"},  # Arabic-Indic digits
        {"tempo_min": "x" * 5000},
    ],
)
def test_hostile_list_parameters_get_a_short_400_and_the_connection_stays_usable(
    conn: psycopg.Connection[Any], web: WebServer, params: dict[str, str]
) -> None:
    analysed_track(conn, "Still listed", 120.0, "A minor")
    with web.client() as client:
        for path in ("/api/tracks", "/"):
            answer = client.get(path, params=params)
            assert answer.status_code == 400, (path, answer.text[-300:])
            assert len(answer.text) < 8000 and "internal error" not in answer.text
        listed = client.get("/api/tracks")  # the same kept-alive connection
        assert [t["title"] for t in listed.json()["tracks"]] == ["Still listed"]
    assert "Traceback" not in web.log()


def test_a_cookie_or_csrf_token_with_non_ascii_bytes_is_just_not_signed_in(
    web: WebServer,
) -> None:
    with web.client() as client:
        page = client.get("/", headers={b"cookie": b"soundforge_session=\xc3\xa9t\xc3\xa9"})
        assert page.status_code == 200 and "Sign in" in page.text
        write = client.post("/api/tracks", json={"source": "x"},
                            headers={b"cookie": b"soundforge_session=\xc3\xa9",
                                     b"x-csrf-token": b"\xc3\xa9",
                                     b"origin": web.url.encode()})  # fmt: skip
        assert write.status_code == 403 and "token" in write.json()["error"]
    assert "Traceback" not in web.log()


def test_hostile_json_bodies_get_a_400_naming_what_is_wrong(web: WebServer) -> None:
    with web.client() as client:
        deep = client.post("/api/tracks", headers=AUTH, content=b"[" * 100_000)
        assert deep.status_code == 400 and "JSON object" in deep.json()["error"]
        listed = client.post("/api/tracks", headers=AUTH, json={"source": ["/etc/passwd"]})
        assert listed.status_code == 400 and "source must be a string" in listed.json()["error"]
        huge = client.post("/api/tracks", headers=AUTH, json={"source": "/" + "a" * 100_000})
        assert huge.status_code == 400 and "at most 8192" in huge.json()["error"]
        assert len(huge.text) < 1000
        model = client.post("/api/tracks", headers=AUTH, json={"source": "x.wav", "model": [1]})
        assert model.status_code == 400 and "unknown separation model" in model.json()["error"]
    assert "Traceback" not in web.log()


def test_a_body_past_the_json_limit_is_refused_declared_or_streamed(web: WebServer) -> None:
    # a token holder's 64 MiB body, with its length declared and sent in chunks without one:
    # 413 before it is held, and the server goes on answering
    body = b'{"source": "' + b"a" * (64 << 20) + b'"}'

    def chunks() -> Any:
        for start in range(0, len(body), 1 << 20):
            yield body[start:start + (1 << 20)]

    with web.client() as client:
        for content in (body, chunks()):
            refused = client.post("/api/tracks", headers=AUTH, content=content)
            assert refused.status_code == 413, refused.text[-300:]
            assert "larger than 1048576 bytes" in refused.json()["error"]
    with web.client() as client:
        assert client.get("/healthz").status_code in (200, 503)
    assert "Traceback" not in web.log()


def test_forms_are_bounded_url_encoded_bodies_even_before_sign_in(web: WebServer) -> None:
    # the sign-in form takes anyone's body: a 64 MiB one is refused before it is held, and a
    # multipart upload (which a form parser would spool to disk) is refused outright
    same_origin = {"origin": web.url}
    huge = b"token=" + b"a" * (64 << 20)
    upload = {"token": ("big.bin", b"\0" * (4 << 20), "application/octet-stream")}
    with web.client() as client:
        refused = client.post("/login", content=huge, headers={
            **same_origin, "content-type": "application/x-www-form-urlencoded"})
        assert refused.status_code == 413 and "larger than 65536 bytes" in refused.text
        multipart = client.post("/login", files=upload, headers=same_origin)
        assert multipart.status_code == 415 and "x-www-form-urlencoded" in multipart.text
        typeless = client.post("/login", content=b"token=x", headers=same_origin)
        assert typeless.status_code == 415
        wrong = client.post("/login", data={"token": "guess"}, headers=same_origin)
        assert wrong.status_code == 403 and "wrong token" in wrong.text
    assert "Traceback" not in web.log()
