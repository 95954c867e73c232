-- Statements of the operations views (soundforge/operations.py): the Queues page, /metrics,
-- /healthz and `soundforge health`; same `-- name:` format as queries.sql. Each reads only a
-- few rows or an index, so a scrape costs the same with 100 000 tracks as with ten.

-- name: queue_job_counts
-- Procrastinate jobs per queue and status
SELECT queue_name AS queue, status::text AS status, count(*) AS jobs
FROM procrastinate_jobs GROUP BY queue_name, status ORDER BY queue_name, status;

-- name: queue_live_counts
-- Procrastinate jobs waiting or running, per queue (served by Procrastinate's partial index on
-- exactly these two statuses, so a scrape never counts the finished history)
SELECT queue_name AS queue, status::text AS status, count(*) AS jobs
FROM procrastinate_jobs
WHERE status = ANY (ARRAY['todo'::procrastinate_job_status, 'doing'::procrastinate_job_status])
GROUP BY queue_name, status ORDER BY queue_name, status;

-- name: queue_waiting
-- Per queue: waiting jobs and the age of the oldest (from its schedule or its deferral)
SELECT job.queue_name AS queue, count(*) AS waiting,
       extract(epoch FROM now() - min(coalesce(job.scheduled_at, deferred.at)))::float8 AS oldest_age_s
FROM procrastinate_jobs job
LEFT JOIN LATERAL (
    SELECT min(event.at) AS at FROM procrastinate_events event
    WHERE event.job_id = job.id AND event.type = 'deferred'
) deferred ON true
WHERE job.status = 'todo'
GROUP BY job.queue_name;

-- name: stage_outcomes
-- Finished job rows per stage, outcome and duration bucket (the tally kept by the row trigger)
SELECT stage, status, le, jobs, seconds FROM soundforge_stage_outcomes ORDER BY stage, status, le;

-- name: duration_buckets
-- The upper bounds (seconds) of the duration buckets the tally counts in
SELECT unnest(soundforge_duration_buckets_v1()) AS le;

-- name: done_since
-- Job rows per stage that ended (completed or failed) since a moment
SELECT stage, status, count(*) AS jobs FROM (
    SELECT 'download' AS stage, status FROM download_jobs WHERE finished_at >= %(since)s
    UNION ALL
    SELECT 'separate', status FROM processing_jobs WHERE finished_at >= %(since)s
    UNION ALL
    SELECT 'analyze', status FROM analysis_jobs WHERE finished_at >= %(since)s
) ended GROUP BY stage, status;

-- name: recent_failures
-- The newest failed job rows with their track and error
SELECT stage, job_id, track_id, title, error, attempts, failed_at
FROM soundforge_failures ORDER BY failed_at DESC LIMIT %(limit)s;

-- name: stalled_rows
-- Job rows a worker is supposed to be running but whose queue job or worker is gone or silent
SELECT stage, job_id, track_id, status, progress, procrastinate_job_id, queue_status, worker_id,
       extract(epoch FROM heartbeat_age)::float8 AS heartbeat_age_s
FROM soundforge_stalled ORDER BY job_id LIMIT %(limit)s;

-- name: live_workers
-- Registered Procrastinate workers, their heartbeat age, queues (when SoundForge's worker
-- recorded them) and running jobs
SELECT worker.id, extract(epoch FROM now() - worker.last_heartbeat)::float8 AS heartbeat_age_s,
       served.name, served.queues, served.pid, served.hostname,
       (SELECT count(*) FROM procrastinate_jobs job
        WHERE job.worker_id = worker.id AND job.status = 'doing') AS running
FROM procrastinate_workers worker
LEFT JOIN soundforge_worker_queues served ON served.worker_id = worker.id
ORDER BY worker.id;

-- name: record_worker_queues
-- Remember which queues a worker that just registered serves
INSERT INTO soundforge_worker_queues (worker_id, name, queues, pid, hostname)
VALUES (%(worker_id)s, %(name)s, %(queues)s, %(pid)s, %(hostname)s)
ON CONFLICT (worker_id) DO UPDATE SET name = excluded.name, queues = excluded.queues;

-- name: applied_soundforge_migrations
-- Names of the applied schema files (for "is the schema current?")
SELECT name FROM soundforge_schema_migrations;
