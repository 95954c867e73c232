"""An embedded PostgreSQL for `soundforge demo`: a private cluster in a data folder, initialised
once, started for the demo, reached only through a Unix socket in a mode-0700 folder, stopped at
the end and reused by the next run.

Why the machine's own `initdb`/`pg_ctl` and not pgserver: our schema needs the `pg_trgm`
extension (trigram search indexes), which pgserver 0.1.4's PostgreSQL 16 build does not ship
(its only extensions are plpgsql and vector); and as root pgserver makes every parent of its
data folder world-readable (`/root` included) and creates a login user. The distributions'
server packages have `pg_trgm` (Debian's `postgresql`, Fedora's `postgresql-contrib`), so we
look for their binaries and say which package to install when none is found.

As root: `initdb` and `postgres` refuse to run as root, so the server runs as an unprivileged
service account: the `postgres` account the distribution's package made, else a system user
`soundforge-pg` created with `useradd --system` (no home, no login shell). Its cluster stays in
the demo folder when that account can reach it; `/root` is mode 0700, so for the usual demo
folder under `/root/.local/share` it lives in `/var/lib/soundforge-demo` instead (root's
processes reach it anyway; no permission of `/root` is changed). Commands run as that account
through `subprocess` with `user=`/`group=`/`extra_groups=[]`, i.e. setuid after fork.

Authentication is `trust` on the socket only (`listen_addresses = ''`): the socket sits in the
mode-0700 data folder, so only its owner (and root) can connect.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from soundforge.errors import SoundForgeError

log = logging.getLogger(__name__)

MIN_MAJOR_VERSION = 13
ROOT_FALLBACK_DIR = Path("/var/lib/soundforge-demo")
SERVICE_ACCOUNTS = ("postgres",)  # an existing unprivileged account made by a server package
CREATED_ACCOUNT = "soundforge-pg"
SUPERUSER = "soundforge"
DEFAULT_DATABASE = "soundforge"
PORT = 5432  # names the socket file; the socket folder is private, so it never collides
START_TIMEOUT_S = 60
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux, 104 on macOS; keep a margin
REQUIRED_PROGRAMS = ("initdb", "pg_ctl", "postgres")
INSTALL_HINT = (
    "install the PostgreSQL server (Debian/Ubuntu: apt-get install postgresql; "
    "Fedora/RHEL: dnf install postgresql-server postgresql-contrib; "
    "macOS: brew install postgresql@16), or set DATABASE_URL to a PostgreSQL server you have"
)


class EmbeddedPostgresError(SoundForgeError):
    """The embedded PostgreSQL cannot be found, initialised, started or stopped."""

    exit_code = 2


@dataclass(frozen=True)
class PostgresBinaries:
    """A PostgreSQL server installation: the folder holding initdb, pg_ctl and postgres."""

    bin_dir: Path
    major_version: int

    def program(self, name: str) -> str:
        return str(self.bin_dir / name)


@dataclass(frozen=True)
class ServiceAccount:
    """The unprivileged account the server runs as when we are root."""

    name: str
    uid: int
    gid: int


# --- finding the binaries ---------------------------------------------------------------------


def candidate_bin_dirs() -> list[Path]:
    """Where server binaries usually are, most specific first: PATH (symlinks resolved), the
    Debian/Ubuntu layout (newest major first), the PGDG RPM layout, source builds, Homebrew."""
    found: list[Path] = []
    for program in ("pg_ctl", "initdb"):
        on_path = shutil.which(program)
        if on_path:
            found.append(Path(on_path).resolve().parent)
    versioned: list[tuple[int, Path]] = []
    patterns = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin",
                "/opt/homebrew/opt/postgresql@*/bin", "/usr/local/opt/postgresql@*/bin")
    for pattern in patterns:
        for path in Path("/").glob(pattern.lstrip("/")):
            digits = re.findall(r"\d+", str(path))
            versioned.append((int(digits[-1]) if digits else 0, path))
    found.extend(path for _, path in sorted(versioned, reverse=True))
    found.extend(Path(p) for p in ("/usr/local/pgsql/bin", "/usr/lib/postgresql/bin",
                                   "/opt/homebrew/bin", "/usr/local/bin", "/usr/bin"))  # fmt: skip
    unique: list[Path] = []
    for path in found:
        if path not in unique:
            unique.append(path)
    return unique


def find_binaries(
    search_dirs: Sequence[Path] | None = None, account: ServiceAccount | None = None
) -> PostgresBinaries:
    """The first usable server installation: initdb, pg_ctl and postgres present, version
    >= 13, `pg_trgm` available, and (as root) reachable by the service account."""
    rejected: list[str] = []
    for bin_dir in search_dirs if search_dirs is not None else candidate_bin_dirs():
        if not all(os.access(bin_dir / name, os.X_OK) for name in REQUIRED_PROGRAMS):
            continue
        reason = _unusable_reason(bin_dir, account)
        if isinstance(reason, str):
            rejected.append(f"{bin_dir}: {reason}")
            continue
        log.info("using PostgreSQL %d server binaries in %s", reason, bin_dir)
        return PostgresBinaries(bin_dir, reason)
    detail = f" (found but unusable: {'; '.join(rejected)})" if rejected else ""
    raise EmbeddedPostgresError(
        f"no usable PostgreSQL server binaries (initdb, pg_ctl, postgres){detail}; {INSTALL_HINT}"
    )


def _unusable_reason(bin_dir: Path, account: ServiceAccount | None) -> str | int:
    """Why this installation cannot serve the demo, or its major version when it can."""
    try:
        output = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True,
                                text=True, timeout=30, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError) as error:
        return f"`postgres --version` failed ({error})"
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", output)
    if match is None:
        return f"unrecognised version {output.strip()!r}"
    major = int(match.group(1))
    if major < MIN_MAJOR_VERSION:
        return f"PostgreSQL {major} is older than {MIN_MAJOR_VERSION}"
    share_dir = _share_dir(bin_dir, major)
    if share_dir is not None and not (share_dir / "extension" / "pg_trgm.control").is_file():
        return (f"the pg_trgm extension is missing from {share_dir}/extension (install the "
                "contrib package, e.g. postgresql-contrib)")  # fmt: skip
    if account is not None and not can_traverse(bin_dir, account):
        return f"the service account {account.name} cannot reach it"
    return major


def _share_dir(bin_dir: Path, major: int) -> Path | None:
    pg_config = bin_dir / "pg_config"
    if os.access(pg_config, os.X_OK):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            output = subprocess.run([str(pg_config), "--sharedir"], capture_output=True,
                                    text=True, timeout=30, check=True).stdout.strip()  # fmt: skip
            if output and Path(output).is_dir():
                return Path(output)
    for guess in (bin_dir.parent / "share" / "postgresql", bin_dir.parent / "share",
                  Path(f"/usr/share/postgresql/{major}")):  # fmt: skip
        if (guess / "extension").is_dir():
            return guess
    return None


# --- root: the service account ----------------------------------------------------------------


def running_as_root() -> bool:
    return os.geteuid() == 0


def service_account(create: bool = True) -> ServiceAccount:
    """An unprivileged account to run the server as: an existing `postgres` account, else
    `soundforge-pg`, created (as a system user without home or login shell) when missing."""
    for name in (*SERVICE_ACCOUNTS, CREATED_ACCOUNT):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            if entry.pw_uid != 0:
                return ServiceAccount(name, entry.pw_uid, entry.pw_gid)
    if not create:
        raise EmbeddedPostgresError(f"no unprivileged account to run PostgreSQL as; create one: "
                                    f"useradd --system --user-group {CREATED_ACCOUNT}")  # fmt: skip
    useradd = shutil.which("useradd")
    if useradd is None:
        raise EmbeddedPostgresError(
            "PostgreSQL refuses to run as root and `useradd` is not available to create an "
            f"account for it; create a system user named {CREATED_ACCOUNT}, or run the demo as "
            "an ordinary user"
        )
    command = [useradd, "--system", "--user-group", "--no-create-home", "--home-dir",
               "/nonexistent", "--shell", _nologin_shell(), CREATED_ACCOUNT]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode not in {0, 9}:  # 9: the name exists (a race)
        raise EmbeddedPostgresError(
            f"cannot create the system user {CREATED_ACCOUNT} for PostgreSQL: "
            f"{result.stderr.strip() or result.returncode}; create it yourself or run the demo "
            "as an ordinary user"
        )
    entry = pwd.getpwnam(CREATED_ACCOUNT)
    log.info("created system user %s to run the embedded PostgreSQL", CREATED_ACCOUNT)
    return ServiceAccount(CREATED_ACCOUNT, entry.pw_uid, entry.pw_gid)


def _nologin_shell() -> str:
    for shell in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false"):
        if os.path.exists(shell):
            return shell
    return "/bin/false"


def can_traverse(path: Path, account: ServiceAccount) -> bool:
    """Whether `account` can search every folder from / down to `path` (its existing part)."""
    groups = {account.gid, *(g.gr_gid for g in _groups_of(account.name))}
    current = path.resolve()
    chain = [current, *current.parents]
    for folder in chain:
        try:
            info = folder.stat()
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(info.st_mode):
            continue
        if info.st_uid == account.uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid in groups:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return False
    return True


def _groups_of(user: str) -> list[Any]:
    import grp

    return [group for group in grp.getgrall() if user in group.gr_mem]


# --- the cluster ------------------------------------------------------------------------------


class EmbeddedPostgres:
    """A private PostgreSQL cluster under `base_dir` (see the module docstring for root).

    Use as a context manager: it takes a lock (one demo per cluster at a time), initialises the
    cluster on first use, starts it (or adopts one left running), creates the database, and
    stops the server on exit. `conninfo` is the connection string while it runs.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        database: str = DEFAULT_DATABASE,
        binaries: PostgresBinaries | None = None,
        account: ServiceAccount | None = None,
        search_dirs: Sequence[Path] | None = None,
    ) -> None:
        self.account = account if account is not None else (
            service_account() if running_as_root() else None)  # fmt: skip
        self.binaries = binaries or find_binaries(search_dirs, self.account)
        self.database = database
        self.pgdata = self._choose_pgdata(Path(base_dir))
        self.log_file = self.pgdata / "server.log"
        self.conninfo = ""
        self._lock_file: IO[str] | None = None
        self._temp_socket_dir: Path | None = None

    def _choose_pgdata(self, base_dir: Path) -> Path:
        name = f"postgres-{self.binaries.major_version}"
        if self.account is None:
            return base_dir / name
        base_dir.mkdir(parents=True, exist_ok=True)
        if can_traverse(base_dir, self.account):
            return base_dir / name
        log.info("%s cannot reach %s; its cluster goes to %s", self.account.name, base_dir,
                 ROOT_FALLBACK_DIR)  # fmt: skip
        return ROOT_FALLBACK_DIR / name

    # -- context manager

    def __enter__(self) -> EmbeddedPostgres:
        self._lock()
        try:
            self.start()
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        finally:
            self._unlock()

    def _lock(self) -> None:
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.pgdata.parent / f".{self.pgdata.name}.lock"
        handle = open(lock_path, "a", encoding="utf-8")  # noqa: SIM115 - held until _unlock
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise EmbeddedPostgresError(
                f"another soundforge demo is using the PostgreSQL cluster in {self.pgdata}; "
                "wait for it to finish"
            ) from None
        self._lock_file = handle

    def _unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the flock
            self._lock_file = None

    # -- lifecycle

    @property
    def initialised(self) -> bool:
        return (self.pgdata / "PG_VERSION").is_file()

    def initialise(self) -> None:
        """`initdb` a new cluster (UTF8, C locale, trust on the socket only)."""
        self.pgdata.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.account is not None:
            os.chown(self.pgdata, self.account.uid, self.account.gid)
        self.pgdata.chmod(0o700)
        log.info("initialising a PostgreSQL %d cluster in %s", self.binaries.major_version,
                 self.pgdata)  # fmt: skip
        self._run([self.binaries.program("initdb"), "--pgdata", str(self.pgdata),
                   "--username", SUPERUSER, "--encoding", "UTF8", "--no-locale",
                   "--auth-local", "trust", "--auth-host", "reject"],
                  what="initialise the cluster")  # fmt: skip
        settings = (
            "\n# soundforge demo: reached only through the Unix socket in this folder\n"
            "listen_addresses = ''\n"
            "unix_socket_permissions = 0700\n"
        )
        with open(self.pgdata / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(settings)  # appending keeps the file's owner and mode

    def running_address(self) -> tuple[Path, int] | None:
        """(socket folder, port) of the server running on this cluster, None when none is."""
        result = self._run([self.binaries.program("pg_ctl"), "status", "--pgdata",
                            str(self.pgdata)], what="check the server", check=False)  # fmt: skip
        if result.returncode != 0:
            return None
        try:
            lines = (self.pgdata / "postmaster.pid").read_text(encoding="utf-8").splitlines()
            return Path(lines[4].strip()), int(lines[3])
        except (OSError, IndexError, ValueError):
            return None

    def start(self) -> str:
        """Start the server (initialising the cluster first if needed), wait until it accepts
        connections, create the database; returns the connection string."""
        if not self.initialised:
            self.initialise()
        address = self.running_address()
        if address is not None:
            log.info("PostgreSQL already running on %s; using it", self.pgdata)
        else:
            address = (self._socket_dir(), PORT)
            self._pg_ctl_start("start", address)
        self.conninfo = make_conninfo(host=str(address[0]), port=address[1], user=SUPERUSER,
                                      dbname=self.database)  # fmt: skip
        self._create_database(address)
        return self.conninfo

    def restart(self) -> None:
        """Stop the running server (fast: sessions are cut off) and start it again on the same
        socket, as a crash-free restart of a real server would look to its clients."""
        address = self.running_address()
        if address is None:
            raise EmbeddedPostgresError(f"no server is running on {self.pgdata}")
        log.info("restarting PostgreSQL on %s", self.pgdata)
        self._pg_ctl_start("restart", address)

    def _pg_ctl_start(self, action: str, address: tuple[Path, int]) -> None:
        """`pg_ctl start` or `restart`, listening only on the socket in `address[0]`."""
        options = f"-k {shlex.quote(str(address[0]))} -p {address[1]}"
        mode = ["--mode", "fast"] if action == "restart" else []
        self._run([self.binaries.program("pg_ctl"), action, "--pgdata", str(self.pgdata), *mode,
                   "--wait", "--timeout", str(START_TIMEOUT_S), "--log", str(self.log_file),
                   "--options", options],
                  what=f"{action} the server", new_session=True,
                  timeout=START_TIMEOUT_S + 30)  # fmt: skip

    def stop(self) -> None:
        """Stop the server if it runs (fast shutdown: open sessions are ended)."""
        if self.initialised and self.running_address() is not None:
            log.info("stopping PostgreSQL on %s", self.pgdata)
            self._run([self.binaries.program("pg_ctl"), "stop", "--pgdata", str(self.pgdata),
                       "--mode", "fast", "--wait", "--timeout", str(START_TIMEOUT_S)],
                      what="stop the server", timeout=START_TIMEOUT_S + 30)  # fmt: skip
        if self._temp_socket_dir is not None:
            shutil.rmtree(self._temp_socket_dir, ignore_errors=True)
            self._temp_socket_dir = None
        self.conninfo = ""

    def _socket_dir(self) -> Path:
        if len(str(self.pgdata)) + len(f"/.s.PGSQL.{PORT}.lock") <= SOCKET_PATH_MAX:
            return self.pgdata
        # A deep data folder: the socket goes to a private short-named folder instead.
        folder = Path(tempfile.mkdtemp(prefix="soundforge-pg-"))
        if self.account is not None:
            os.chown(folder, self.account.uid, self.account.gid)
        self._temp_socket_dir = folder
        return folder

    def _create_database(self, address: tuple[Path, int]) -> None:
        admin = make_conninfo(host=str(address[0]), port=address[1], user=SUPERUSER,
                              dbname="postgres")  # fmt: skip
        with _connect_when_ready(admin, self.log_file) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                  (self.database,)).fetchone()  # fmt: skip
            if exists is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))
                log.info("created database %s", self.database)

    # -- running programs (as the service account when root)

    def _run(
        self,
        command: list[str],
        *,
        what: str,
        check: bool = True,
        new_session: bool = False,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        extra: dict[str, Any] = {}
        if self.account is not None:
            extra = {"user": self.account.uid, "group": self.account.gid, "extra_groups": []}
        environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C",
                       "HOME": str(self.pgdata), "TZ": "UTC"}  # fmt: skip
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, env=environment, cwd="/",
                umask=0o077, timeout=timeout, start_new_session=new_session, check=False, **extra,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError) as error:
            raise EmbeddedPostgresError(f"cannot {what} ({command[0]}): {error}") from None
        if check and result.returncode != 0:
            output = (result.stderr.strip() or result.stdout.strip()).splitlines()[-3:]
            raise EmbeddedPostgresError(
                f"cannot {what} in {self.pgdata}: {' '.join(output) or result.returncode}; "
                f"see {self.log_file}"
            )
        return result


@contextlib.contextmanager
def _connect_when_ready(conninfo: str, log_file: Path) -> Iterator[psycopg.Connection[Any]]:
    """A connection, retried while the server finishes starting (pg_ctl --wait has already
    waited for 'ready'; this covers a server adopted while it was still starting)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=10)
            break
        except psycopg.OperationalError as error:
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(
                    f"the embedded PostgreSQL does not accept connections: {error}; "
                    f"see {log_file}"
                ) from None
            time.sleep(0.2)
    with conn:
        yield conn
