"""Dashboard benchmark: with N tracks (default 100 000), each with a completed download,
separation (4 stems) and analysis, plus their queue jobs, in a fresh database, a real
`soundforge serve` process answers:

- the Tracks page (50 rows, newest first; also searched, and filtered by tempo range and key):
  p50 server time (the `Server-Timing` header) and client time, against the same track-list
  query run alone through `music.track_page` (the floor; the ratio is the page's overhead);
- `/metrics`: p50 server time;
- 200 live (SSE) clients: the server's resident memory before and after they connect.

    python bench/web.py [--tracks 100000] [--requests 60] [--clients 200]

Goals (issue 15): tracks page p50 < 100 ms, /metrics < 50 ms server time, 200 SSE clients
< 100 MB.
"""

from __future__ import annotations

import os
import sys

# Run as `python bench/web.py`, this folder comes first on sys.path and bench/queue.py would
# shadow the standard library's `queue` (which psycopg imports).
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse
import contextlib
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx

from bench.queue import bench_database  # the same throwaway database as the queue bench
from soundforge import music
from soundforge.db import connect
from soundforge.migrations import migrate

SOUNDFORGE = str(Path(sys.executable).with_name("soundforge"))
KEYS = [f"{pitch} {mode}" for mode in ("major", "minor")
        for pitch in ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")]  # fmt: skip

LOAD = """
-- bulk load: no per-row NOTIFY or guard triggers
SET session_replication_role = replica;
INSERT INTO tracks (id, title, artist, album, duration, inserted_at, updated_at)
SELECT gen_random_uuid(), 'Song ' || i || ' ' || left(md5(i::text), 8), 'Artist ' || (i %% 5000),
       'Album ' || (i %% 9000), 120 + i %% 240,
       timezone('utc', now()) - make_interval(secs => %(n)s - i),
       timezone('utc', now()) - make_interval(secs => %(n)s - i)
FROM generate_series(1, %(n)s) i;
INSERT INTO download_jobs (id, track_id, status, progress, output_path, file_size, source,
                           inserted_at, updated_at, started_at, finished_at, attempts)
SELECT gen_random_uuid(), id, 'completed', 100, 'downloads/' || id || '.wav', 10000000,
       '/music/' || id || '.wav', inserted_at, updated_at, inserted_at, inserted_at, 1
FROM tracks ORDER BY insert_order;
INSERT INTO processing_jobs (id, track_id, status, progress, model, options, output_path,
                             inserted_at, updated_at, started_at, finished_at, attempts)
SELECT gen_random_uuid(), id, 'completed', 100, 'htdemucs', '{}', 'stems/' || id, inserted_at,
       updated_at, inserted_at, inserted_at, 1
FROM tracks ORDER BY insert_order;
INSERT INTO analysis_jobs (id, track_id, status, progress, results, inserted_at, updated_at,
                           started_at, finished_at, attempts)
SELECT gen_random_uuid(), id, 'completed', 100, '{"type": "full"}', inserted_at, updated_at,
       inserted_at, inserted_at, 1
FROM tracks ORDER BY insert_order;
INSERT INTO stems (id, processing_job_id, track_id, stem_type, file_path, file_size,
                   inserted_at, updated_at)
SELECT gen_random_uuid(), job.id, job.track_id, stem,
       'stems/' || job.track_id || '/' || job.id || '/' || stem || '.flac', 3000000,
       job.inserted_at, job.updated_at
FROM processing_jobs job, unnest(ARRAY['bass', 'drums', 'other', 'vocals']) stem;
INSERT INTO analysis_results (id, track_id, analysis_job_id, tempo, key, energy,
                              spectral_centroid, spectral_rolloff, zero_crossing_rate, features,
                              inserted_at, updated_at)
SELECT gen_random_uuid(), job.track_id, job.id, 60 + (job.insert_order * 7919 %% 12000) / 100.0,
       (%(keys)s::text[])[1 + job.insert_order %% 24], 0.1, 1500, 3000, 0.05,
       jsonb_build_object('key_confidence', 0.8, 'duration', 180,
                          'chroma', to_jsonb(array_fill(0.5, ARRAY[12]))),
       job.inserted_at, job.updated_at
FROM analysis_jobs job;
INSERT INTO procrastinate_jobs (queue_name, task_name, args, status, attempts)
SELECT queue, 'soundforge.' || task, '{}'::jsonb, 'succeeded', 1
FROM generate_series(1, %(n)s) i,
     (VALUES ('download', 'download'), ('processing', 'separate'),
             ('analysis', 'analyze')) stage (queue, task);
INSERT INTO soundforge_stage_outcomes (stage, status, le, jobs, seconds)
VALUES ('download', 'completed', 5, %(n)s, %(n)s * 2.0),
       ('separate', 'completed', 300, %(n)s, %(n)s * 200.0),
       ('analyze', 'completed', 10, %(n)s, %(n)s * 6.0);
SET session_replication_role = origin;
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def web_server(database_url: str, storage: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOUNDFORGE_")}
    env |= {"DATABASE_URL": database_url, "SOUNDFORGE_STORAGE_PATH": str(storage),
            "SOUNDFORGE_LOG_LEVEL": "WARNING"}  # fmt: skip
    process = subprocess.Popen([SOUNDFORGE, "serve", "--port", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/api/tracks?limit=1", timeout=5).status_code == 200:
                    break
            time.sleep(0.2)
        yield url, process
    finally:
        process.terminate()
        process.wait(30)


def p50_ms(samples: list[float]) -> float:
    return statistics.median(samples)


def time_request(client: httpx.Client, path: str, requests: int) -> tuple[float, float]:
    """(p50 server ms from Server-Timing, p50 client ms)."""
    server, wall = [], []
    client.get(path)  # warm
    for _ in range(requests):
        started = time.perf_counter()
        answer = client.get(path)
        wall.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:200])
        timing = answer.headers["server-timing"]
        server.append(float(timing.split("dur=")[1]))
    return p50_ms(server), p50_ms(wall)


def time_query(conninfo: str, wanted: music.TrackQuery, requests: int) -> float:
    with connect(conninfo, autocommit=True) as conn:
        music.track_page(conn, wanted)
        samples = []
        for _ in range(requests):
            started = time.perf_counter()
            music.track_page(conn, wanted)
            samples.append((time.perf_counter() - started) * 1000)
    return p50_ms(samples)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def sse_memory(url: str, pid: int, clients: int) -> tuple[float, float]:
    """Resident MB of the server before and with `clients` SSE streams open."""
    host, port = url.removeprefix("http://").split(":")
    before = rss_mb(pid)
    sockets = []
    for _ in range(clients):
        conn = socket.create_connection((host, int(port)))
        conn.sendall(b"GET /api/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        sockets.append(conn)
    for conn in sockets:
        conn.settimeout(30)
        received = b""
        while b": connected" not in received:
            received += conn.recv(4096)
    time.sleep(1.0)
    with_clients = rss_mb(pid)
    for conn in sockets:
        conn.close()
    return before, with_clients


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--clients", type=int, default=200)
    args = parser.parse_args()
    with bench_database() as database_url, TemporaryDirectory() as storage:
        migrate(database_url)
        started = time.perf_counter()
        with connect(database_url, autocommit=True) as conn:
            for statement in LOAD.split(";\n"):
                if statement.strip():
                    params = {"n": args.tracks, "keys": KEYS}
                    conn.execute(statement, params if "%(" in statement else None)
            conn.execute("VACUUM ANALYZE")
        print(f"loaded {args.tracks} tracks with jobs, stems and results in "
              f"{time.perf_counter() - started:.1f} s")  # fmt: skip
        cases: list[tuple[str, str, music.TrackQuery]] = [
            ("newest 50", "/", music.TrackQuery()),
            ("search", "/?q=Artist+4242", music.TrackQuery(search="Artist 4242")),
            ("tempo 120-130 + key", "/?tempo_min=120&tempo_max=130&key=A+minor",
             music.TrackQuery(tempo_min=120, tempo_max=130, key="A minor")),
            ("page 200", "/?page=200", music.TrackQuery(offset=199 * 50)),
        ]  # fmt: skip
        with web_server(database_url, Path(storage)) as (url, process), \
                httpx.Client(base_url=url, timeout=30) as client:  # fmt: skip
            def run(path: str) -> tuple[float, float]:
                return time_request(client, path, args.requests)

            print(f"{'tracks page':24} {'server p50':>11} {'client p50':>11} "
                  f"{'query alone':>12} {'ratio':>6}")  # fmt: skip
            for label, path, wanted in cases:
                server_ms, client_ms = run(path)
                floor_ms = time_query(database_url, wanted, args.requests)
                print(f"{label:24} {server_ms:9.1f}ms {client_ms:9.1f}ms {floor_ms:10.1f}ms "
                      f"{server_ms / floor_ms:5.1f}x")  # fmt: skip
            metrics_server, metrics_client = run("/metrics")
            print(f"{'/metrics':24} {metrics_server:9.1f}ms {metrics_client:9.1f}ms")
            before, after = sse_memory(url, process.pid, args.clients)
            print(f"{args.clients} SSE clients: server RSS {before:.0f} MB -> {after:.0f} MB "
                  f"(+{after - before:.1f} MB)")  # fmt: skip


if __name__ == "__main__":
    main()
