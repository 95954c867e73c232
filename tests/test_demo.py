"""`soundforge demo` end to end (the real command in a subprocess, no DATABASE_URL, an isolated
HOME/XDG_DATA_HOME, so it starts its own embedded PostgreSQL), and the embedded PostgreSQL's
life cycle: start, stop, reuse, adopting a server left running, one demo at a time."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from soundforge.embedded_pg import (
    ROOT_FALLBACK_DIR,
    EmbeddedPostgres,
    EmbeddedPostgresError,
    find_binaries,
    running_as_root,
)
from tests.cli_runner import run_cli
from tests.support.own_postgres import (
    have_server_binaries,
    stop_servers_under,
    world_traversable_dir,
)
from tests.support.plain_user import interpreter_for, python_path

DEMO_TIMEOUT_S = 300
STEM_LINE = re.compile(r"^\s+(vocals|drums|bass|other)\s+[\d.]+ (B|KiB|MiB)\s+(/\S+)$", re.M)


pytestmark = pytest.mark.skipif(not have_server_binaries(),
                                reason="no PostgreSQL server binaries (initdb/pg_ctl)")  # fmt: skip


@pytest.fixture(scope="module")
def demo_base() -> Iterator[Path]:
    base = world_traversable_dir("sf-demo-test-")
    (base / "empty.env").write_text("")
    try:
        yield base
    finally:
        stop_servers_under(base)
        shutil.rmtree(base, ignore_errors=True)


def demo_env(base: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without any database or SoundForge setting, with a HOME, data
    and caches of its own (so no weights are found in a real cache) and no network for hubs."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("SOUNDFORGE_") and name != "DATABASE_URL"}  # fmt: skip
    env.update(
        HOME=str(base / "home"),
        XDG_DATA_HOME=str(base / "share"),
        XDG_CACHE_HOME=str(base / "cache"),
        TORCH_HOME=str(base / "torch"),
        HF_HOME=str(base / "hf"),
        HF_HUB_OFFLINE="1",
        SOUNDFORGE_ENV_FILE=str(base / "empty.env"),
        SOUNDFORGE_LOG_LEVEL="INFO",
        SOUNDFORGE_FETCH_MODELS="false",
    )
    env.update(extra)
    return env


def _assert_demo_ran_pipeline(result: subprocess.CompletedProcess[str], base: Path) -> str:
    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    demo_dir = base / "share" / "soundforge" / "demo"
    assert f"embedded PostgreSQL {find_binaries().major_version} in {demo_dir}/postgres-" in output
    assert "stages download completed" in output
    assert "analyze completed" in output
    tempo = re.search(r"^\s+tempo\s+([\d.]+) BPM$", output, re.M)
    assert tempo is not None, output
    assert float(tempo.group(1)) == pytest.approx(120.0, abs=2.0)  # the synthesized song's
    assert re.search(r"^\s+key\s+C major$", output, re.M), output
    return output


def test_demo_without_weights_completes_download_and_analysis_and_says_how_to_get_weights(
    demo_base: Path,
) -> None:
    result = run_cli("demo", "--timeout", str(DEMO_TIMEOUT_S - 60), env=demo_env(demo_base),
                     timeout=DEMO_TIMEOUT_S)  # fmt: skip
    output = _assert_demo_ran_pipeline(result, demo_base)
    assert "separate skipped" in output
    assert "stems  not made:" in output
    assert "SOUNDFORGE_DEMUCS_REPO" in output
    assert STEM_LINE.search(output) is None
    track_id = re.search(r"\(track ([0-9a-f-]{36})\)", output)
    assert track_id is not None, output
    assert output.rstrip().splitlines()[-1] == (
        f"look at it: soundforge demo --shell   (a shell on the demo's database: soundforge "
        f"status {track_id.group(1)}, psql \"$DATABASE_URL\")"
    )


SHELL_SCRIPT = """soundforge status --json > {out}/status.json
psql "$DATABASE_URL" -Atc 'SELECT count(*) FROM tracks' > {out}/count.txt
echo "storage=$SOUNDFORGE_STORAGE_PATH"
exit 7
"""


def test_demo_shell_opens_a_shell_on_the_demo_database_and_stops_it_after(
    demo_base: Path, tmp_path: Path
) -> None:
    """What the demo's last line tells a user to run (after the demo above, its track is
    there; alone, the database is merely empty)."""
    out = world_traversable_dir("sf-demo-shell-")
    try:
        result = run_cli("demo", "--shell", env=demo_env(demo_base, SHELL="/bin/sh"),
                         input_text=SHELL_SCRIPT.format(out=out), timeout=120)  # fmt: skip
        assert result.returncode == 7, result.stdout + result.stderr  # the shell's own
        assert "DATABASE_URL is the demo's database" in result.stdout
        demo_dir = demo_base / "share" / "soundforge" / "demo"
        assert f"storage={demo_dir / 'storage'}" in result.stdout
        tracks = json.loads((out / "status.json").read_text())
        assert int((out / "count.txt").read_text()) == len(tracks)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    assert not list(demo_dir.rglob("postgres-*/postmaster.pid")), "the server must stop"


def test_demo_with_a_local_model_repo_prints_four_stems_with_sizes(
    demo_base: Path, tmp_path: Path
) -> None:
    pytest.importorskip("demucs")
    from soundforge.separation import write_local_repo

    repo = world_traversable_dir("sf-demo-repo-")
    try:
        write_local_repo(repo, "htdemucs", size="tiny")
        result = run_cli("demo", "--timeout", str(DEMO_TIMEOUT_S - 60),
                         env=demo_env(demo_base, SOUNDFORGE_DEMUCS_REPO=str(repo)),
                         timeout=DEMO_TIMEOUT_S)  # fmt: skip
    finally:
        shutil.rmtree(repo, ignore_errors=True)
    output = _assert_demo_ran_pipeline(result, demo_base)
    assert "separate completed" in output
    stems = {match.group(1): Path(match.group(3)) for match in STEM_LINE.finditer(output)}
    assert set(stems) == {"vocals", "drums", "bass", "other"}, output
    for path in stems.values():
        assert path.is_file() and path.stat().st_size > 0
        assert demo_base in path.parents  # stored under the demo folder of the isolated HOME


def test_embedded_postgres_stops_at_exit_and_reuses_its_cluster() -> None:
    base = world_traversable_dir("sf-embedded-pg-")
    try:
        with EmbeddedPostgres(base) as server:
            assert base in server.pgdata.parents
            conninfo = server.conninfo
            with psycopg.connect(server.conninfo, autocommit=True) as conn:
                conn.execute("CREATE TABLE kept (note text)")
                conn.execute("INSERT INTO kept VALUES ('from the first run')")
            with pytest.raises(EmbeddedPostgresError, match="another soundforge demo"):
                EmbeddedPostgres(base).__enter__()
        assert server.running_address() is None
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(conninfo, connect_timeout=5)
        initialised_at = (server.pgdata / "PG_VERSION").stat().st_mtime_ns

        left_running = EmbeddedPostgres(base)  # a demo killed before it could stop its server
        left_running.start()
        with EmbeddedPostgres(base) as again:
            assert again.pgdata == server.pgdata
            with psycopg.connect(again.conninfo) as conn:
                assert conn.execute("SELECT note FROM kept").fetchall() == [("from the first run",)]
        assert again.running_address() is None
        assert (server.pgdata / "PG_VERSION").stat().st_mtime_ns == initialised_at
    finally:
        stop_servers_under(base)
        shutil.rmtree(base, ignore_errors=True)


def test_missing_server_binaries_say_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedPostgresError, match="apt-get install postgresql"):
        find_binaries([tmp_path])


@pytest.mark.skipif(not running_as_root(), reason="root only")
def test_as_root_a_cluster_the_service_account_cannot_reach_goes_to_var_lib(
    tmp_path: Path,
) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    server = EmbeddedPostgres(private / "demo")
    assert server.account is not None and server.account.uid != 0
    assert server.pgdata == ROOT_FALLBACK_DIR / f"postgres-{server.binaries.major_version}"


ORDINARY_USER_SCRIPT = """
import sys
from pathlib import Path
import psycopg
from soundforge.embedded_pg import EmbeddedPostgres
with EmbeddedPostgres(Path(sys.argv[1])) as server:
    assert server.account is None, server.account
    with psycopg.connect(server.conninfo) as conn:
        print("connected as", conn.execute("SELECT current_user").fetchone()[0])
print("stopped:", server.running_address() is None)
"""


@pytest.mark.skipif(not running_as_root(), reason="root only: switches to an ordinary account")
def test_embedded_postgres_runs_as_an_ordinary_user_as_that_user() -> None:
    """The non-root path of the demo's database (the whole demo as an ordinary user, from a
    fresh virtualenv, needs a first numba compile of about a minute: checked by hand)."""
    import pwd

    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no `nobody` account")
    interpreter = interpreter_for("nobody")
    if interpreter is None:
        pytest.skip("no Python the `nobody` account can run")
    base = world_traversable_dir("sf-demo-user-")
    try:
        home = base / "home"
        home.mkdir()
        os.chown(home, nobody.pw_uid, nobody.pw_gid)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
               "PYTHONPATH": python_path()}  # fmt: skip
        result = subprocess.run(
            [interpreter, "-c", ORDINARY_USER_SCRIPT, str(home / "demo")], env=env,
            user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[], cwd=str(home),
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if "ModuleNotFoundError" in result.stderr or "Permission denied" in result.stderr:
            pytest.skip(f"the project is not readable by `nobody`: {result.stderr[-300:]}")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "connected as soundforge" in result.stdout
        assert "stopped: True" in result.stdout
        pgdata = next(home.rglob("postgres-*/PG_VERSION")).parent
        assert pgdata.stat().st_uid == nobody.pw_uid
        assert stat.S_IMODE(pgdata.stat().st_mode) == 0o700
    finally:
        stop_servers_under(base)
        shutil.rmtree(base, ignore_errors=True)


def test_demo_with_a_missing_file_fails_before_starting_anything(demo_base: Path) -> None:
    result = run_cli("demo", str(demo_base / "no-such-song.wav"), env=demo_env(demo_base))
    assert result.returncode == 1
    assert "no-such-song.wav: no such file" in result.stderr
    assert "embedded PostgreSQL" not in result.stdout
