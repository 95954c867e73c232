"""Secrets never shown: URL user-info and signed query parameters are masked wherever a URL is
stored for display, logged, notified or printed, while the download still fetches with them
(they live only in `download_credentials`); database URLs are masked in every error, malformed
ones too. End to end with the real CLI, a real `soundforge worker` and a loopback server."""

from __future__ import annotations

import base64
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from soundforge.db import connect
from soundforge.redact import install_log_redaction, mask_text, mask_url
from tests.cli_runner import run_cli
from tests.support.audio import tone_bytes
from tests.support.loopback_http import LoopbackServer
from tests.support.pipeline import (
    ServiceProcesses,
    service_env,
    wait_for_pipeline,
)

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize(("url", "shown"), [
    ("http://alice:pw@host/a.flac", "http://alice:***@host/a.flac"),
    ("https://TOKEN@host/a.flac", "https://***@host/a.flac"),
    ("https://s3.example/b/k.flac?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIA&X-Amz-Date=1"
     "&X-Amz-Expires=60&X-Amz-Signature=abc",
     "https://s3.example/b/k.flac?X-Amz-Algorithm=AWS4&X-Amz-Credential=***&X-Amz-Date=***"
     "&X-Amz-Expires=***&X-Amz-Signature=***"),
    ("https://cdn/x.mp3?Expires=99&Signature=s&Key-Pair-Id=K",
     "https://cdn/x.mp3?Expires=***&Signature=***&Key-Pair-Id=***"),
    ("https://blob/x.wav?sv=1&se=2&sig=3&name=x", "https://blob/x.wav?sv=***&se=***&sig=***&name=x"),
    ("https://g/x?X-Goog-Signature=1&token=2&access_token=3&key=4&page=2",
     "https://g/x?X-Goog-Signature=***&token=***&access_token=***&key=***&page=2"),
    ("https://h/x#access_token=abc&t=1", "https://h/x#access_token=***&t=1"),
    ("https://medium.com/@user/x", "https://medium.com/@user/x"),
    ("postgresql://u:p@ss@host/db", "postgresql://u:***@host/db"),
    ("postgresql://u:pa/ss?#x@host:5432/db?sslmode=require",
     "postgresql://u:***@host:5432/db?sslmode=require"),
])  # fmt: skip
def test_mask_url_masks_user_info_and_signed_parameters(url: str, shown: str) -> None:
    assert mask_url(url) == shown
    assert mask_text(f"failed: {url} (retry)") == f"failed: {shown} (retry)"


def test_mask_text_masks_libpq_passwords() -> None:
    assert mask_text("host=db password=s3cret user=x") == "host=db password=*** user=x"
    assert mask_text("host=db password='a b' user=x") == "host=db password=*** user=x"


@pytest.mark.parametrize("database_url", [
    "postgresql://sf:S3CRET-PW@127.0.0.1:1/db",  # valid, unreachable
    "postgresql://sf:S3CRET@PW@localhost:5432/db",  # unescaped '@'
    "postgresql://sf:S3CRET PW@localhost/db",  # a space
    "postgresql://sf:S3CRET-PW@[::1/db",  # broken IPv6 host
    "postgresql://sf:S3CRET-PW@localhost:notaport/db",
    "host=127.0.0.1 port=1 password=S3CRET-PW dbname=x",
    "host=127.0.0.1 port=1 password='S3CRET PW' dbname=x",
])  # fmt: skip
def test_a_database_url_is_masked_in_every_cli_error(
    database_url: str, cli_env: dict[str, str]
) -> None:
    result = run_cli("status", env={**cli_env, "DATABASE_URL": database_url})
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "S3CRET" not in output and "PW@" not in output, output
    assert "Traceback" not in output
    assert output.strip().startswith("soundforge: error:")


def test_log_records_are_masked_whatever_logs_them(caplog: pytest.LogCaptureFixture) -> None:
    install_log_redaction()
    install_log_redaction()  # idempotent
    with caplog.at_level(logging.INFO):
        logging.getLogger("httpx").info('HTTP Request: GET %s "200 OK"',
                                        "http://u:LOGPW@h/a?X-Amz-Signature=LOGSIG")  # fmt: skip
        logging.getLogger("any").warning("connect %s failed", "host=h password=LOGPW")
    assert "LOGPW" not in caplog.text and "LOGSIG" not in caplog.text
    assert "u:***@h" in caplog.text and "password=***" in caplog.text


def _notify_payloads(conn: psycopg.Connection[Any]) -> list[str]:
    return [notify.payload for notify in conn.notifies(timeout=1.0)]


def _every_view_row(conn: psycopg.Connection[Any]) -> str:
    views = conn.execute(
        "SELECT viewname FROM pg_views WHERE schemaname = 'public' "
        "AND viewname LIKE 'soundforge%%'"
    ).fetchall()
    assert len(views) >= 5
    rows = [conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(v["viewname"])))
            .fetchall() for v in views]  # fmt: skip
    return repr(rows)


def test_no_password_or_signature_in_rows_views_notifies_logs_or_output(
    cli_env: dict[str, str], database_url: str, services: ServiceProcesses, tmp_path: Path,
    conn: psycopg.Connection[Any],
) -> None:  # fmt: skip
    password, signature = f"pw-{uuid.uuid4().hex}", f"sig-{uuid.uuid4().hex}"
    secrets = (password, signature)
    listener = connect(database_url, autocommit=True)
    listener.execute("LISTEN soundforge_progress")
    env = service_env(cli_env, log_level="DEBUG")
    with LoopbackServer() as server:
        server.serve_bytes("/song.flac", tone_bytes(2.0, "flac"), "audio/flac")
        netloc = server.base_url.removeprefix("http://")
        good = f"http://alice:{password}@{netloc}/song.flac?X-Amz-Signature={signature}&a=1"
        bad = f"http://bob:{password}@{netloc}/missing.flac?sig={signature}"
        worker = services.start("worker", "--queues", "download", env=env, label="worker")
        added = [run_cli("add", "--json", "--no-stems", "--no-analysis", url, env=env)
                 for url in (good, bad)]  # fmt: skip
        track_ids = [json.loads(result.stdout)[0]["track_id"] for result in added]
        rows = [wait_for_pipeline(database_url, track_id) for track_id in track_ids]
        fetched = server.requests_for("/song.flac")

    assert rows[0]["download_status"] == "completed", rows[0]
    assert rows[1]["download_status"] == "failed"
    assert "bob:***@" in rows[1]["download_error"] and "sig=***" in rows[1]["download_error"]
    # The credentials reached the server: user-info as Basic auth, the signature in the query.
    expected_auth = "Basic " + base64.b64encode(f"alice:{password}".encode()).decode()
    assert fetched[0].headers.get("Authorization") == expected_auth
    assert signature in fetched[0].path

    stored = conn.execute(
        "SELECT source, error FROM download_jobs ORDER BY insert_order"
    ).fetchall()
    assert [row["source"].split("@")[0] for row in stored] == ["http://alice:***",
                                                               "http://bob:***"]
    kept = conn.execute("SELECT source FROM download_credentials ORDER BY source").fetchall()
    assert [row["source"] for row in kept] == sorted([good, bad])

    retried = run_cli("retry", str(rows[1]["download_job_id"]), env=env)
    assert retried.returncode == 0, retried.stderr
    newest = conn.execute(
        "SELECT job.source, credential.source AS fetch_source FROM download_jobs job "
        "LEFT JOIN download_credentials credential ON credential.download_job_id = job.id "
        "ORDER BY job.insert_order DESC LIMIT 1"
    ).fetchone()
    assert newest == {"source": mask_url(bad), "fetch_source": bad}

    shown = [
        repr(stored),
        _every_view_row(conn),
        *_notify_payloads(listener),
        *(result.stdout + result.stderr for result in added),
        *(run_cli(*args, env=env).stdout for args in (("status",), ("status", "--json"))),
    ]
    services.stop(worker)
    shown.append(ServiceProcesses.log_text(worker))
    listener.close()
    assert any("alice:***@" in text for text in shown[-1:]), "the worker logged the masked URL"
    for text in shown:
        for secret in secrets:
            assert secret not in text, text[:2000]


def test_download_credentials_are_read_by_no_view(conn: psycopg.Connection[Any]) -> None:
    views = conn.execute(
        "SELECT viewname, definition FROM pg_views WHERE schemaname = 'public'"
    ).fetchall()
    assert views and all("download_credentials" not in view["definition"] for view in views)

