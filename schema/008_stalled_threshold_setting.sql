-- soundforge_stalled took its threshold from a hard-coded 30 minutes; it now reads the
-- `soundforge.stalled_after_s` parameter (30 minutes when unset), so SQL users can match the
-- daemon's SOUNDFORGE_STALLED_AFTER_S:
--     ALTER DATABASE soundforge SET soundforge.stalled_after_s = 600;   -- or SET per session

CREATE OR REPLACE VIEW soundforge_stalled AS
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
           OR worker.last_heartbeat < now() - make_interval(secs => coalesce(
               nullif(current_setting('soundforge.stalled_after_s', true), '')::double precision,
               1800)));
