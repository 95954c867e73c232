-- Views for watching SoundForge from any SQL client (and for the read-only role).

-- Every job row of the three stages, with its stage name.
CREATE VIEW soundforge_jobs AS
    SELECT 'download'::text AS stage, id, track_id, status, progress, error, attempts,
           procrastinate_job_id, inserted_at, updated_at
    FROM download_jobs
    UNION ALL
    SELECT 'separate', id, track_id, status, progress, error, attempts, procrastinate_job_id,
           inserted_at, updated_at
    FROM processing_jobs
    UNION ALL
    SELECT 'analyze', id, track_id, status, progress, error, attempts, procrastinate_job_id,
           inserted_at, updated_at
    FROM analysis_jobs;

-- Per queue and Procrastinate status: how many jobs, and how long the oldest has waited.
CREATE VIEW soundforge_queue_overview AS
    SELECT job.queue_name AS queue,
           job.status::text AS status,
           count(*) AS jobs,
           max(now() - coalesce(job.scheduled_at, deferred.at))
               FILTER (WHERE job.status = 'todo') AS oldest_waiting
    FROM procrastinate_jobs job
    LEFT JOIN LATERAL (
        SELECT min(event.at) AS at FROM procrastinate_events event
        WHERE event.job_id = job.id AND event.type = 'deferred'
    ) deferred ON true
    GROUP BY job.queue_name, job.status;

-- Per track: the newest job of each stage with its status, progress and error.
CREATE VIEW soundforge_pipeline AS
    SELECT track.id AS track_id, track.title, track.artist, track.inserted_at,
           download.id AS download_job_id, download.status AS download_status,
           download.progress AS download_progress, download.error AS download_error,
           separate.id AS separate_job_id, separate.status AS separate_status,
           separate.progress AS separate_progress, separate.error AS separate_error,
           analysis.id AS analyze_job_id, analysis.status AS analyze_status,
           analysis.progress AS analyze_progress, analysis.error AS analyze_error
    FROM tracks track
    LEFT JOIN LATERAL (
        SELECT * FROM download_jobs j WHERE j.track_id = track.id
        ORDER BY j.inserted_at DESC, j.id DESC LIMIT 1
    ) download ON true
    LEFT JOIN LATERAL (
        SELECT * FROM processing_jobs j WHERE j.track_id = track.id
        ORDER BY j.inserted_at DESC, j.id DESC LIMIT 1
    ) separate ON true
    LEFT JOIN LATERAL (
        SELECT * FROM analysis_jobs j WHERE j.track_id = track.id
        ORDER BY j.inserted_at DESC, j.id DESC LIMIT 1
    ) analysis ON true;

-- Failed job rows, newest first, with the track they belong to.
CREATE VIEW soundforge_failures AS
    SELECT job.stage, job.id AS job_id, job.track_id, track.title, job.error, job.attempts,
           job.updated_at AS failed_at
    FROM soundforge_jobs job JOIN tracks track ON track.id = job.track_id
    WHERE job.status = 'failed';

-- Job rows a worker is (supposedly) running, with the age of that worker's heartbeat; a row
-- is stalled when its queue job is no longer running, or its worker is gone or silent for
-- longer than the default rescue threshold (30 minutes).
CREATE VIEW soundforge_stalled AS
    SELECT job.stage, job.id AS job_id, job.track_id, job.status, job.progress,
           queue_job.id AS procrastinate_job_id, queue_job.status::text AS queue_status,
           queue_job.worker_id, now() - worker.last_heartbeat AS heartbeat_age
    FROM soundforge_jobs job
    LEFT JOIN procrastinate_jobs queue_job ON queue_job.id = job.procrastinate_job_id
    LEFT JOIN procrastinate_workers worker ON worker.id = queue_job.worker_id
    WHERE job.status IN ('downloading', 'processing')
      AND (queue_job.id IS NULL
           OR queue_job.status <> 'doing'
           OR worker.id IS NULL
           OR worker.last_heartbeat < now() - interval '30 minutes');
