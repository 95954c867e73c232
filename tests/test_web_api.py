"""The dashboard as a real `soundforge serve` process on a free port, over real HTTP: the JSON
API shares the CLI's track-list query, writes need the token (and from a browser, the session
and CSRF token, same origin), writes are rate limited, answers carry the security headers,
stems are served only from inside the storage root, /metrics parses as Prometheus text, and
/healthz and `soundforge health` say when the database, schema or workers are wrong."""

from __future__ import annotations

import hashlib
import hmac
import io
import re
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg.types.json import Jsonb

from soundforge import music
from soundforge.models import Stage
from soundforge.queries import query
from soundforge.storage import Storage
from tests.cli_runner import run_cli
from tests.factories import make_job, make_track, separated
from tests.support.pipeline import ServiceProcesses, service_env
from tests.support.web import TOKEN, WebServer, analysed_track, start_web
from tests.support.worker_thread import wait_for

pytestmark = pytest.mark.timeout(300)
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def web(services: ServiceProcesses, cli_env: dict[str, str]) -> WebServer:
    return start_web(services, cli_env, web_writes_per_minute=1000)


def test_api_tracks_filters_by_tempo_key_and_search_like_the_cli(
    conn: psycopg.Connection[Any], web: WebServer
) -> None:
    analysed_track(conn, "Groove", 128.0, "A minor", artist="The Band")
    analysed_track(conn, "Ballad", 72.0, "A minor")
    analysed_track(conn, "Anthem", 125.0, "C major", artist="The Band")
    with web.client() as client:
        found = client.get("/api/tracks", params={"tempo_min": 120, "tempo_max": 130,
                                                  "key": "8A"}).json()  # fmt: skip
        assert [t["title"] for t in found["tracks"]] == ["Groove"]
        assert found["tracks"][0]["key_camelot"] == "8A" and found["has_more"] is False
        searched = client.get("/api/tracks", params={"q": "band", "limit": 1}).json()
        assert [t["title"] for t in searched["tracks"]] == ["Anthem"] and searched["has_more"]
        bad = client.get("/api/tracks", params={"tempo_min": "fast"})
        assert bad.status_code == 400 and "tempo_min must be a number" in bad.json()["error"]
        empty = client.get("/api/tracks", params={"tempo_min": 130, "tempo_max": 120})
        assert empty.status_code == 400 and "empty" in empty.json()["error"]
        page = client.get("/", params={"tempo_min": 120, "tempo_max": 130})
        assert "Groove" in page.text and "Anthem" in page.text and "Ballad" not in page.text
        assert "A minor / 8A" in page.text


def test_track_detail_and_analysis_download_and_clear_json_errors(
    conn: psycopg.Connection[Any], web: WebServer
) -> None:
    track = analysed_track(conn, "Detail <b>Song</b>", 128.0, "F# minor")
    with web.client() as client:
        detail = client.get(f"/api/tracks/{track.id}").json()
        assert detail["analysis"]["key_camelot"] == "11A"
        assert detail["jobs"][0]["stage"] == "analyze"
        analysis = client.get(f"/api/tracks/{track.id}/analysis.json")
        assert analysis.status_code == 200 and analysis.json()["tempo"] == 128.0
        assert "attachment" in analysis.headers["content-disposition"]
        page = client.get(f"/tracks/{track.id}")
        assert "Detail &lt;b&gt;Song&lt;/b&gt;" in page.text and "<b>Song" not in page.text
        assert "F# minor / 11A" in page.text and "<svg" in page.text
        missing = client.get(f"/api/tracks/{uuid.uuid4()}")
        assert missing.status_code == 404 and "no track with id" in missing.json()["error"]
        invalid = client.get("/api/tracks/not-a-uuid")
        assert invalid.status_code == 404 and "not a valid UUID" in invalid.json()["error"]
        models = client.get("/api/models").json()
        assert {m["name"] for m in models["models"]} >= {"htdemucs", "htdemucs_6s"}
        assert all(isinstance(m["present"], bool) and m["stems"] for m in models["models"])


def test_every_answer_carries_the_security_headers(web: WebServer) -> None:
    with web.client() as client:
        for path in ("/", "/api/tracks", "/static/app.css", "/api/tracks/x"):
            headers = client.get(path).headers
            csp = headers["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp
            assert "frame-ancestors 'none'" in csp and headers["x-frame-options"] == "DENY"
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["referrer-policy"] == "same-origin"
        page = client.get("/").text
        assert "<script>" not in page and " on" + "click=" not in page


def test_writes_need_the_token_and_a_read_only_dashboard_refuses_all(
    conn: psycopg.Connection[Any], services: ServiceProcesses, cli_env: dict[str, str],
    web: WebServer,
) -> None:  # fmt: skip
    track = make_track(conn, "Keep me")
    job = make_job(conn, Stage.DOWNLOAD, track)
    with web.client() as client:
        for method, path in (("POST", "/api/tracks"), ("DELETE", f"/api/tracks/{track.id}"),
                             ("POST", f"/api/jobs/{job.id}/cancel"),
                             ("POST", f"/api/jobs/{job.id}/retry")):  # fmt: skip
            answer = client.request(method, path, json={"source": "/nowhere.wav"})
            assert answer.status_code == 403, (method, path, answer.text)
            assert "token" in answer.json()["error"]
            wrong = client.request(method, path, headers={"authorization": "Bearer nope"})
            assert wrong.status_code == 403 and wrong.json()["error"] == "wrong token"
        cancelled = client.post(f"/api/jobs/{job.id}/cancel", headers=AUTH)
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "failed"
        again = client.post(f"/api/jobs/{job.id}/cancel", headers=AUTH)
        assert again.status_code == 400 and "nothing to cancel" in again.json()["error"]
        retried = client.post(f"/api/jobs/{job.id}/retry", headers=AUTH)
        assert retried.status_code == 200 and retried.json()["status"] == "queued"
        unknown = client.post(f"/api/jobs/{job.id}/explode", headers=AUTH)
        assert unknown.status_code == 404
        deleted = client.delete(f"/api/tracks/{track.id}", headers=AUTH)
        assert deleted.status_code == 200 and music.get_track(conn, track.id) is None
    read_only = start_web(services, cli_env, token=None)
    with read_only.client() as client:
        refused = client.post("/api/tracks", headers=AUTH, json={"source": "x"})
        assert refused.status_code == 403 and "read-only" in refused.json()["error"]
        assert "read-only" in client.get("/add").text


def test_browser_writes_need_the_session_csrf_token_and_the_same_origin(
    conn: psycopg.Connection[Any], web: WebServer
) -> None:
    track = make_track(conn, "Form target")
    same_origin = {"origin": web.url}
    with web.client(follow_redirects=False) as client:
        bad_login = client.post("/login", data={"token": "guess"}, headers=same_origin)
        assert bad_login.status_code == 403
        foreign = client.post("/login", data={"token": TOKEN},
                              headers={"origin": "http://evil.example"})  # fmt: skip
        assert foreign.status_code == 403 and "set-cookie" not in foreign.headers
        login = client.post("/login", data={"token": TOKEN}, headers=same_origin)
        assert login.status_code == 303
        cookie = login.headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        assert TOKEN not in cookie
        page = client.get(f"/tracks/{track.id}").text
        assert TOKEN not in page
        match = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page)
        assert match is not None
        csrf = match.group(1)
        no_csrf = client.post(f"/tracks/{track.id}/delete", headers=same_origin)
        assert no_csrf.status_code == 403 and "CSRF" in no_csrf.text
        cross_site = client.post(f"/tracks/{track.id}/delete", data={"csrf_token": csrf},
                                 headers={"origin": "http://evil.example"})  # fmt: skip
        assert cross_site.status_code == 403 and "cross-site" in cross_site.text
        done = client.post(f"/tracks/{track.id}/delete", data={"csrf_token": csrf},
                           headers=same_origin)  # fmt: skip
        assert done.status_code == 303 and music.get_track(conn, track.id) is None


def _signed_session(issued: int, session_id: str = "0" * 32) -> str:
    """A session cookie as the server signs one, for any issue time (the test knows the token)."""
    mac = hmac.new(TOKEN.encode(), f"session:{issued}:{session_id}".encode(), hashlib.sha256)
    return f"{issued}.{session_id}.{mac.hexdigest()}"


def test_a_session_expires_ends_at_sign_out_and_has_its_own_csrf_token(
    conn: psycopg.Connection[Any], web: WebServer
) -> None:
    track = make_track(conn, "Session target")
    same_origin = {"origin": web.url}

    def signed_in(cookie: str) -> bool:
        with web.client() as other:
            page = other.get("/", headers={"cookie": f"soundforge_session={cookie}"}).text
            return "Sign out" in page

    def sign_in(client: Any) -> tuple[str, str]:
        login = client.post("/login", data={"token": TOKEN}, headers=same_origin)
        assert login.status_code == 303 and "max-age=43200" in login.headers["set-cookie"].lower()
        page = client.get(f"/tracks/{track.id}").text
        match = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page)
        assert match is not None
        return client.cookies["soundforge_session"], match.group(1)

    with web.client(follow_redirects=False) as first, web.client(follow_redirects=False) as second:
        cookie, csrf = sign_in(first)
        other_cookie, other_csrf = sign_in(second)
        assert cookie != other_cookie and csrf != other_csrf
        crossed = second.post(f"/tracks/{track.id}/delete", data={"csrf_token": csrf},
                              headers=same_origin)  # fmt: skip
        assert crossed.status_code == 403 and "CSRF" in crossed.text
        signed_out = first.post("/logout", data={"csrf_token": csrf}, headers=same_origin)
        assert signed_out.status_code == 303
        # the copied cookie is dead on the server, the other browser is still signed in
        assert not signed_in(cookie) and signed_in(other_cookie)
        replayed = second.post(f"/tracks/{track.id}/delete", data={"csrf_token": csrf},
                               headers={**same_origin,
                                        "cookie": f"soundforge_session={cookie}"})  # fmt: skip
        assert replayed.status_code == 403 and music.get_track(conn, track.id) is not None
    now = int(time.time())
    assert signed_in(_signed_session(now - 3600))
    assert not signed_in(_signed_session(now - 13 * 3600))  # past the 12 h a sign-in lasts
    assert not signed_in(_signed_session(now + 3600))  # issued in the future
    forged = _signed_session(now - 13 * 3600).replace(str(now - 13 * 3600), str(now), 1)
    assert not signed_in(forged)  # a fresh time on an old signature
    assert "Traceback" not in web.log()


def test_writes_beyond_the_per_client_limit_get_429(
    services: ServiceProcesses, cli_env: dict[str, str]
) -> None:
    limited = start_web(services, cli_env, web_writes_per_minute=3)
    with limited.client() as client:
        codes = [client.post("/api/tracks", headers=AUTH, json={}).status_code
                 for _ in range(5)]  # fmt: skip
    assert codes == [400, 400, 400, 429, 429]


def test_stems_are_served_with_ranges_and_only_from_inside_the_storage_root(
    conn: psycopg.Connection[Any], web: WebServer, cli_env: dict[str, str], tmp_path: Path
) -> None:
    track = make_track(conn, "Stems")
    storage = Storage(Path(cli_env["SOUNDFORGE_STORAGE_PATH"]))
    storage.ensure_root()
    _, stems = separated(conn, storage, track, {"vocals": bytes(range(256)) * 40,
                                                "drums": b"x" * 9, "bass": b"x" * 9})  # fmt: skip
    stem, crafted, absolute = stems["vocals"], stems["drums"], stems["bass"]
    secret = tmp_path / "outside.flac"
    secret.write_bytes(b"not yours")
    # rows a separation never writes (paths outside the root) must still not be served
    for row, path in ((crafted, "../outside.flac"), (absolute, str(secret))):
        conn.execute("UPDATE stems SET file_path = %s WHERE id = %s", (path, row.id))
    with web.client() as client:
        part = client.get(f"/api/stems/{stem.id}", headers={"range": "bytes=256-511"})
        assert part.status_code == 206 and part.content == bytes(range(256))
        assert part.headers["content-type"] == "audio/flac"
        assert part.headers["content-range"] == "bytes 256-511/10240"
        whole = client.get(f"/api/stems/{stem.id}", params={"download": 1})
        assert whole.status_code == 200 and "attachment" in whole.headers["content-disposition"]
        for path in (f"/api/stems/{crafted.id}", f"/api/stems/{absolute.id}",
                     "/api/stems/..%2F..%2F..%2Fetc%2Fpasswd", "/static/..%2F..%2Fsettings.py",
                     "/static/../../soundforge/settings.py"):  # fmt: skip
            answer = client.get(path)
            assert answer.status_code == 404, (path, answer.status_code)
            assert b"not yours" not in answer.content
        archive = client.get(f"/api/tracks/{track.id}/stems.zip")
        assert archive.status_code == 200 and archive.headers["content-type"] == "application/zip"
        assert zipfile.ZipFile(io.BytesIO(archive.content)).namelist() == ["vocals.flac"]


def test_metrics_parse_as_prometheus_text_and_carry_no_secret(
    conn: psycopg.Connection[Any], web: WebServer
) -> None:
    track = make_track(conn, "Metered")
    job = make_job(conn, Stage.DOWNLOAD, track)
    with web.client() as client:
        before = _download_outcomes(client.get("/metrics").text)
        client.post(f"/api/jobs/{job.id}/cancel", headers=AUTH)
        text = client.get("/metrics").text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert {"soundforge_queue_jobs", "soundforge_queue_oldest_waiting_seconds",
            "soundforge_stage_duration_seconds", "soundforge_stage_failures",
            "soundforge_workers_alive"} <= set(families)  # fmt: skip
    after = _download_outcomes(text)
    assert after == (before[0] + 1, before[1] + 1)  # one more failure, one more duration
    assert TOKEN not in text and "postgres@" not in text


def _download_outcomes(text: str) -> tuple[float, float]:
    """(download failures, failed download durations counted) in a /metrics text."""
    failures = durations = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("stage") != "download":
                continue
            if sample.name == "soundforge_stage_failures_total":
                failures = sample.value
            if (sample.name == "soundforge_stage_duration_seconds_count"
                    and sample.labels["outcome"] == "failed"):  # fmt: skip
                durations = sample.value
    return failures, durations


def test_healthz_and_health_command_follow_the_worker_and_the_database(
    conn: psycopg.Connection[Any], services: ServiceProcesses, cli_env: dict[str, str],
    web: WebServer, tmp_path: Path,
) -> None:  # fmt: skip
    env = service_env(cli_env)
    worker = services.start("worker", "--queues", "download,maintenance", "--name", "health",
                            env=env, label="worker")  # fmt: skip
    with web.client() as client:
        wait_for(lambda: client.get("/healthz").json()["checks"].get("live_workers", 0) >= 1,
                 timeout_s=300, message="the worker's heartbeat")  # fmt: skip
        healthy = client.get("/healthz")
        assert healthy.status_code == 200, healthy.text
        assert run_cli("health", env=env).returncode == 0
        queues = client.get("/api/queues").json()
        assert ["download", "maintenance"] in [worker["queues"] for worker in queues["workers"]]
        page = client.get("/queues")
        assert page.status_code == 200 and "download, maintenance" in page.text
        services.stop(worker)
        track = make_track(conn, "Waiting")
        conn.execute(query("defer_job"), {"queue": "download", "task_name": "soundforge.download",
                     "queueing_lock": None, "args": Jsonb({"track_id": str(track.id)})})
        down = client.get("/healthz")
        assert down.status_code == 503 and down.json()["status"] == "degraded"
        assert "queue download has 1 waiting job" in down.json()["reasons"][0]
    degraded = run_cli("health", "--json", env=env)
    assert degraded.returncode == 1 and "queue download" in degraded.stdout
    nowhere = {**env, "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x"}
    unreachable = run_cli("health", env=nowhere)
    assert unreachable.returncode == 2 and unreachable.stdout.startswith("down")


def test_a_source_added_through_the_api_uses_the_cli_import(
    web: WebServer, tmp_path: Path
) -> None:
    with web.client() as client:
        missing = client.post("/api/tracks", headers=AUTH,
                              json={"source": str(tmp_path / "missing.wav")})  # fmt: skip
        assert missing.status_code == 400 and "missing.wav" in missing.json()["error"]
        assert "Traceback" not in missing.text
        bad_model = client.post("/api/tracks", headers=AUTH,
                                json={"source": "x.wav", "model": "nope"})  # fmt: skip
        assert bad_model.status_code == 400
        assert "unknown separation model" in bad_model.json()["error"]
        not_json = client.post("/api/tracks", headers=AUTH, content=b"[1,")
        assert not_json.status_code == 400 and "JSON object" in not_json.json()["error"]


def test_a_database_without_the_schema_gets_one_clear_answer_not_a_traceback(
    services: ServiceProcesses, cli_env: dict[str, str], fresh_database: str
) -> None:
    web = start_web(services, {**cli_env, "DATABASE_URL": fresh_database})
    with web.client() as client:
        listed = client.get("/api/tracks")
        assert listed.status_code == 503 and "soundforge migrate" in listed.json()["error"]
        page = client.get("/")
        assert page.status_code == 503 and "soundforge migrate" in page.text
        health = client.get("/healthz")
        assert health.status_code == 503 and health.json()["status"] == "down"
    assert "Traceback" not in web.log()
