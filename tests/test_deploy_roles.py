"""deploy/postgres-roles.sql and deploy/postgres-grants.sql, applied with psql as a person would,
against the real server: the owner role migrates, the application role can do what the daemon
does and nothing to the schema, the read-only role can read the inspection views and write
nothing. Roles are cluster-wide, so each run uses role names of its own and drops them."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from procrastinate import App, PsycopgConnector
from psycopg import sql

from soundforge import jobs, music, queue
from soundforge.migrations import migrate
from soundforge.models import Stage
from soundforge.status import Status
from tests.cli_runner import SOUNDFORGE, run_cli
from tests.conftest import ADMIN_URL, database_url_for, drop_database
from tests.support.pipeline import ServiceProcesses
from tests.support.web import start_web

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
ROLES_SQL = DEPLOY / "postgres-roles.sql"
GRANTS_SQL = DEPLOY / "postgres-grants.sql"
DASHBOARD_TABLES = {"tracks", "stems", "analysis_results", "download_jobs", "processing_jobs",
                    "analysis_jobs", "soundforge_stage_outcomes", "soundforge_worker_queues",
                    "soundforge_schema_migrations", "procrastinate_jobs",
                    "procrastinate_workers", "procrastinate_events"}  # fmt: skip
INSPECTION_VIEWS = {
    "soundforge_jobs",
    "soundforge_queue_overview",
    "soundforge_pipeline",
    "soundforge_failures",
    "soundforge_stalled",
}

pytestmark = pytest.mark.skipif(
    shutil.which("psql") is None, reason="psql (postgresql-client) is not installed"
)


@dataclass(frozen=True)
class Deployment:
    dbname: str
    owner_role: str
    app_role: str
    readonly_role: str

    def url(self, role: str) -> str:
        params = psycopg.conninfo.conninfo_to_dict(database_url_for(self.dbname))
        params["user"] = role
        params.pop("password", None)
        return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()})

    @property
    def psql_variables(self) -> list[str]:
        return [
            f"--variable=dbname={self.dbname}",
            f"--variable=owner_role={self.owner_role}",
            f"--variable=app_role={self.app_role}",
            f"--variable=readonly_role={self.readonly_role}",
        ]


def run_psql(conninfo: str, script: Path, *variables: str) -> subprocess.CompletedProcess[str]:
    """`psql -X -v ON_ERROR_STOP=1 -f SCRIPT`, the way the README tells a person to run it."""
    return subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", *variables,
         f"--dbname={conninfo}", "-f", str(script)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    """A database set up by the roles script (run twice: it must be re-runnable), migrated by
    the owner role with the real migrations, then given the post-migrate grants."""
    suffix = uuid.uuid4().hex[:10]
    deployed = Deployment(
        dbname=f"sf_roles_{suffix}",
        owner_role=f"sf_owner_{suffix}",
        app_role=f"sf_app_{suffix}",
        readonly_role=f"sf_ro_{suffix}",
    )
    try:
        for _ in range(2):
            applied = run_psql(
                ADMIN_URL, ROLES_SQL, *deployed.psql_variables,
                f"--variable=app_password=test-only-{suffix}",
            )  # fmt: skip
            assert applied.returncode == 0, applied.stderr
        migrate(deployed.url(deployed.owner_role))
        granted = run_psql(
            database_url_for(deployed.dbname), GRANTS_SQL, *deployed.psql_variables
        )
        assert granted.returncode == 0, granted.stderr
        yield deployed
    finally:
        drop_database(deployed.dbname)
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            for role in (deployed.readonly_role, deployed.app_role, deployed.owner_role):
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def connect_as(deployed: Deployment, role: str) -> psycopg.Connection[Any]:
    return psycopg.connect(
        deployed.url(role), autocommit=True, row_factory=psycopg.rows.dict_row
    )


def public_relations(deployed: Deployment, kinds: tuple[str, ...]) -> dict[str, list[str]]:
    """Every relation of the given pg_class kinds in `public`, with its plain (not identity,
    not generated) column names."""
    with psycopg.connect(database_url_for(deployed.dbname)) as admin:
        rows = admin.execute(
            """
            SELECT c.relname, array_agg(a.attname ORDER BY a.attnum) AS columns
            FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                 AND a.attidentity = '' AND a.attgenerated = ''
            WHERE n.nspname = 'public' AND c.relkind = ANY(%s)
            GROUP BY c.relname ORDER BY c.relname
            """,
            (list(kinds),),
        ).fetchall()
    return {name: list(columns) for name, columns in rows}


def assert_denied(conn: psycopg.Connection[Any], statement: str) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement.encode())


def test_roles_script_creates_login_roles_without_cluster_privileges(
    deployment: Deployment,
) -> None:
    with psycopg.connect(ADMIN_URL, row_factory=psycopg.rows.dict_row) as admin:
        roles = admin.execute(
            "SELECT rolname, rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication,"
            " rolbypassrls, rolpassword IS NOT NULL AS has_password"
            " FROM pg_authid WHERE rolname = ANY(%s) ORDER BY rolname",
            ([deployment.owner_role, deployment.app_role, deployment.readonly_role],),
        ).fetchall()
        owner = admin.execute(
            "SELECT pg_get_userbyid(datdba) AS owner FROM pg_database WHERE datname = %s",
            (deployment.dbname,),
        ).fetchone()
    assert len(roles) == 3
    for role in roles:
        assert role["rolcanlogin"], role
        assert not any(
            role[flag]
            for flag in ("rolsuper", "rolcreatedb", "rolcreaterole", "rolreplication",
                         "rolbypassrls")
        ), role  # fmt: skip
    passwords = {role["rolname"]: role["has_password"] for role in roles}
    assert passwords[deployment.app_role]  # set through -v app_password
    assert not passwords[deployment.readonly_role]  # left for \password
    assert owner is not None and owner["owner"] == deployment.owner_role


def test_migrations_run_as_owner_role_and_it_owns_every_object(deployment: Deployment) -> None:
    with connect_as(deployment, deployment.owner_role) as conn:
        foreign = conn.execute(
            """
            SELECT c.relname, pg_get_userbyid(c.relowner) AS owner FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND pg_get_userbyid(c.relowner) <> current_user
            UNION ALL
            SELECT p.proname, pg_get_userbyid(p.proowner) FROM pg_proc p
            JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = 'public' AND p.proname LIKE ANY(ARRAY['soundforge%%',
                                                                  'procrastinate%%'])
              AND pg_get_userbyid(p.proowner) <> current_user
            """
        ).fetchall()
        applied = conn.execute("SELECT count(*) AS n FROM soundforge_schema_migrations").fetchone()
    assert foreign == []
    assert applied is not None and applied["n"] > 0
    assert migrate(deployment.url(deployment.owner_role)) == []  # a second run: nothing to do


def test_app_role_creates_tracks_defers_and_advances_jobs(deployment: Deployment) -> None:
    with connect_as(deployment, deployment.app_role) as conn:
        track = music.create_track(conn, music.TrackFields(title="Role Song", artist="Tester"))
        job = jobs.create_job(conn, Stage.DOWNLOAD, track.id)
        procrastinate_id = queue.defer_stage(
            conn, Stage.DOWNLOAD, track.id, {"job_id": str(job.id)}
        )
        assert procrastinate_id is not None
        job = jobs.advance(conn, job, Status.DOWNLOADING, progress=40)
        job = jobs.advance(conn, job, Status.COMPLETED)
        assert job.status == Status.COMPLETED and job.lock_version == 3
        assert music.search_tracks(conn, "role song")[0].id == track.id
        assert queue.cancel(conn, procrastinate_id)
        pipeline = conn.execute(
            "SELECT download_status FROM soundforge_pipeline WHERE track_id = %s", (track.id,)
        ).fetchone()
        assert pipeline == {"download_status": "completed"}
        assert music.delete_track(conn, track.id)


def test_app_role_runs_a_procrastinate_worker_through_its_sql_api(
    deployment: Deployment,
) -> None:
    """Defer (procrastinate_defer_jobs_v1), register a worker, fetch, finish, heartbeat,
    unregister, then the maintenance calls: every Procrastinate function the daemon uses."""
    app = App(connector=PsycopgConnector(conninfo=deployment.url(deployment.app_role)))
    done: list[int] = []

    @app.task(name="deploy_test.record", queue="deploy_test")
    def record(value: int) -> None:
        done.append(value)

    async def scenario() -> list[Any]:
        async with app.open_async():
            job_id = await record.defer_async(value=7)
            await app.run_worker_async(
                queues=["deploy_test"], wait=False, install_signal_handlers=False,
                listen_notify=False,
            )  # fmt: skip
            status = await app.job_manager.get_job_status_async(job_id)
            stalled = await app.job_manager.get_stalled_jobs()
            await app.job_manager.prune_stalled_workers(seconds_since_heartbeat=3600)
            await app.job_manager.delete_old_jobs(nb_hours=0, include_failed=True)
            left = await app.job_manager.list_jobs_async(queue="deploy_test")
            return [status, list(stalled), list(left)]

    status, stalled, left = asyncio.run(scenario())
    assert done == [7]
    assert status.value == "succeeded"
    assert stalled == []
    assert left == []  # delete_old_jobs removed the finished job


def test_app_role_cannot_create_alter_drop_or_truncate(deployment: Deployment) -> None:
    with connect_as(deployment, deployment.app_role) as conn:
        assert_denied(conn, "CREATE TABLE app_scratch (id int)")
        assert_denied(conn, "ALTER TABLE tracks ADD COLUMN sneaky text")
        assert_denied(conn, "DROP TABLE tracks")
        assert_denied(conn, "TRUNCATE tracks CASCADE")
        assert_denied(conn, "DROP VIEW soundforge_pipeline")
        assert_denied(conn, "CREATE TEMP TABLE app_scratch (id int)")
        assert_denied(
            conn, "DELETE FROM soundforge_schema_migrations WHERE name = '001_music_tables.sql'"
        )


def test_readonly_role_selects_every_inspection_view(deployment: Deployment) -> None:
    with connect_as(deployment, deployment.app_role) as writer:
        track = music.create_track(writer, music.TrackFields(title="Watched"))
        jobs.create_job(writer, Stage.DOWNLOAD, track.id)
    views = set(public_relations(deployment, ("v",)))
    assert views >= INSPECTION_VIEWS
    with connect_as(deployment, deployment.readonly_role) as reader:
        for view in sorted(v for v in views if v.startswith("soundforge_")):
            reader.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(view))).fetchall()
        row = reader.execute(
            "SELECT download_status FROM soundforge_pipeline WHERE track_id = %s", (track.id,)
        ).fetchone()
    assert row == {"download_status": "queued"}


def test_readonly_role_sees_no_download_credential(deployment: Deployment) -> None:
    """A URL's password and signature stay in download_credentials, which the application
    role reads to fetch and no view (so not the read-only role) shows."""
    secret_url = "http://carol:R0-PASSWORD@203.0.113.9/a.flac?sig=R0-SIGNATURE"
    with connect_as(deployment, deployment.app_role) as writer:
        track = music.create_track(writer, music.TrackFields(title="Signed"))
        job = queue.create_queued_job(writer, Stage.DOWNLOAD, track.id, {}, source=secret_url)
        assert job is not None
        kept = writer.execute(
            "SELECT source FROM download_credentials WHERE download_job_id = %s", (job.id,)
        ).fetchone()
    assert kept == {"source": secret_url}
    with connect_as(deployment, deployment.readonly_role) as reader:
        for view in sorted(v for v in public_relations(deployment, ("v",))
                           if v.startswith("soundforge_")):  # fmt: skip
            rows = reader.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(view)))
            assert "R0-" not in repr(rows.fetchall()), view
        reader.execute("SET default_transaction_read_only = off")
        assert_denied(reader, "SELECT * FROM download_credentials")


def test_readonly_role_cannot_write_any_table_and_reads_only_the_dashboards(
    deployment: Deployment,
) -> None:
    """Denied by the grants themselves: the session first turns off the read-only default it
    starts with, which any role may do."""
    tables = public_relations(deployment, ("r",))
    sequences = public_relations(deployment, ("S",))
    views = public_relations(deployment, ("v",))
    assert {"tracks", "download_jobs", "download_credentials", "procrastinate_jobs"} <= set(tables)
    with connect_as(deployment, deployment.readonly_role) as conn:
        starts = conn.execute("SHOW default_transaction_read_only").fetchone()
        assert starts == {"default_transaction_read_only": "on"}
        conn.execute("SET default_transaction_read_only = off")
        for name, columns in tables.items():
            table = sql.Identifier(name).as_string(conn)
            column = sql.Identifier(columns[0]).as_string(conn)
            assert_denied(conn, f"INSERT INTO {table} DEFAULT VALUES")
            assert_denied(conn, f"UPDATE {table} SET {column} = {column}")
            assert_denied(conn, f"DELETE FROM {table}")
            assert_denied(conn, f"TRUNCATE {table}")
            if name in DASHBOARD_TABLES:
                conn.execute(f"SELECT * FROM {table} LIMIT 1".encode())
            else:
                assert_denied(conn, f"SELECT * FROM {table}")
        for name in sequences:
            assert_denied(conn, f"SELECT nextval('{name}')")
        # A view made of several tables cannot take a write at all; the grant says no too.
        for name in views:
            writable = conn.execute(
                "SELECT has_table_privilege(%s, 'INSERT, UPDATE, DELETE, TRUNCATE')", (name,)
            ).fetchone()
            assert writable == {"has_table_privilege": False}, name


def test_readonly_role_is_enough_for_a_read_only_dashboard(
    deployment: Deployment, services: ServiceProcesses, cli_env: dict[str, str]
) -> None:
    with connect_as(deployment, deployment.app_role) as writer:
        track = music.create_track(writer, music.TrackFields(title="Shown"))
        jobs.create_job(writer, Stage.DOWNLOAD, track.id)
    env = {**cli_env, "DATABASE_URL": deployment.url(deployment.readonly_role)}
    web = start_web(services, env, token=None)
    with web.client() as client:
        for path in ("/", f"/tracks/{track.id}", "/queues", "/api/tracks", "/metrics"):
            answer = client.get(path)
            assert answer.status_code == 200, (path, answer.text)
        assert "Shown" in client.get("/").text
        assert client.get("/healthz").json()["checks"]["database"] == "reachable"


def test_readonly_role_cannot_create_tables_or_defer_jobs(deployment: Deployment) -> None:
    with connect_as(deployment, deployment.readonly_role) as conn:
        conn.execute("SET default_transaction_read_only = off")
        assert_denied(conn, "CREATE TABLE reader_scratch (id int)")
        assert_denied(conn, "CREATE TEMP TABLE reader_scratch (id int)")
        assert_denied(conn, "CREATE VIEW reader_view AS SELECT 1 AS one")
        assert_denied(
            conn,
            "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW('default', 'x', 0, NULL, NULL,"
            " '{}'::jsonb, NULL)::procrastinate_job_to_defer_v1])",
        )


def test_readonly_role_listens_to_progress_notifications(deployment: Deployment) -> None:
    with connect_as(deployment, deployment.readonly_role) as listener:
        listener.execute("LISTEN soundforge_progress")
        with connect_as(deployment, deployment.app_role) as writer:
            track = music.create_track(writer, music.TrackFields(title="Heard"))
            job = jobs.create_job(writer, Stage.ANALYZE, track.id)
        heard = next(listener.notifies(timeout=30, stop_after=1))
    assert heard.channel == "soundforge_progress"
    assert str(job.id) in heard.payload


def _cli_env(deployed: Deployment, role: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOUNDFORGE_")}
    return env | {"DATABASE_URL": deployed.url(role)}


def test_migrate_as_the_app_role_names_the_role_and_the_migration_setting(
    deployment: Deployment,
) -> None:
    result = run_cli("migrate", env=_cli_env(deployment, deployment.app_role))
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert f"role '{deployment.app_role}' may not change the schema" in line
    assert "SOUNDFORGE_MIGRATION_DATABASE_URL" in line


def test_watch_as_the_readonly_role_prints_rows_not_a_forged_notify(
    deployment: Deployment,
) -> None:
    with connect_as(deployment, deployment.app_role) as writer:
        track = music.create_track(writer, music.TrackFields(title="Watched"))
        job = jobs.create_job(writer, Stage.DOWNLOAD, track.id)
    watcher = subprocess.Popen(
        [SOUNDFORGE, "watch", "--max-events", "1"],
        env=_cli_env(deployment, deployment.readonly_role),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert watcher.stderr is not None
        assert "watching" in watcher.stderr.readline()
        forged = json.dumps({"track_id": str(track.id), "stage": "download",
                             "job_id": str(job.id), "status": "failed", "progress": 100,
                             "error": "PWNED: the read-only role wrote this"})  # fmt: skip
        with connect_as(deployment, deployment.readonly_role) as forger:
            forger.execute("SELECT pg_notify('soundforge_progress', %s)", (forged,))
        stdout, stderr = watcher.communicate(timeout=30)
    finally:
        watcher.kill()
    assert watcher.returncode == 0, stderr
    assert stdout.split()[:4] == [str(track.id), "download", "queued", "0%"]
    assert "PWNED" not in stdout
