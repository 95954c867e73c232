-- Statements of the periodic maintenance (soundforge/maintenance.py), over Procrastinate's tables
-- and through its versioned SQL functions; same `-- name:` format as queries.sql.

-- name: lock_stalled_queue_jobs
-- Running queue jobs whose worker is gone or has not sent a heartbeat for longer than the threshold, locked for the rescuer
SELECT job.id, job.task_name, job.queue_name, job.attempts, job.worker_id,
       worker.last_heartbeat, now() - worker.last_heartbeat AS heartbeat_age
  FROM procrastinate_jobs job
  LEFT JOIN procrastinate_workers worker ON worker.id = job.worker_id
 WHERE job.status = 'doing'
   AND (worker.id IS NULL
        OR worker.last_heartbeat < now() - make_interval(secs => %(stalled_after_s)s::float8))
 ORDER BY job.id
   FOR UPDATE OF job SKIP LOCKED;

-- name: lock_dead_worker_queue_jobs
-- The running queue jobs of a worker process known to have ended (its worker row's, or given by id), locked for the rescuer whatever the heartbeat says
SELECT job.id, job.task_name, job.queue_name, job.attempts, job.worker_id,
       worker.last_heartbeat, now() - worker.last_heartbeat AS heartbeat_age
  FROM procrastinate_jobs job
  LEFT JOIN procrastinate_workers worker ON worker.id = job.worker_id
 WHERE job.status = 'doing'
   AND (job.worker_id = %(worker_id)s OR job.id = ANY(%(ids)s::bigint[]))
 ORDER BY job.id
   FOR UPDATE OF job SKIP LOCKED;

-- name: delete_queue_worker
-- Remove the worker row of a worker process known to have ended
DELETE FROM procrastinate_workers WHERE id = %(worker_id)s;

-- name: retry_queue_job
-- Put a running queue job back to `todo` now (counts one attempt); Procrastinate's own retry
SELECT procrastinate_retry_job_v2(%(id)s, now(), NULL, NULL, NULL);

-- name: fail_queue_job
-- End a running queue job `failed` (counts one attempt); Procrastinate's own finish
SELECT procrastinate_finish_job_v1(%(id)s, 'failed', false);

-- name: active_rows_for_queue_job
-- The job rows of one stage table that a queue job is working on and that have not ended
SELECT id FROM {table}
 WHERE procrastinate_job_id = %(procrastinate_job_id)s
   AND status IN ('queued', 'downloading', 'processing');

-- name: delete_finished_queue_jobs
-- Delete finished queue jobs (succeeded, failed, cancelled, aborted) with no event newer than the cutoff; periodic-defer rows pointing at them are unlinked first
WITH old AS (
    SELECT job.id
      FROM procrastinate_jobs job
     WHERE job.status IN ('succeeded', 'failed', 'cancelled', 'aborted')
       AND NOT EXISTS (
           SELECT 1 FROM procrastinate_events event
            WHERE event.job_id = job.id
              AND event.at >= now() - make_interval(days => %(days)s::int))
), unlinked AS (
    UPDATE procrastinate_periodic_defers SET job_id = NULL
     WHERE job_id IN (SELECT id FROM old)
    RETURNING 1
)
DELETE FROM procrastinate_jobs
 WHERE id IN (SELECT id FROM old)
RETURNING id, queue_name;

-- name: lock_orphaned_rows
-- Job rows of one stage table still queued or running although their queue job has ended (its worker lost the database at the wrong moment), untouched for longer than the threshold
SELECT job_row.id, job_row.track_id, queue_job.id AS procrastinate_job_id,
       queue_job.task_name, queue_job.queue_name, queue_job.attempts,
       queue_job.status::text AS queue_status
  FROM {table} job_row
  JOIN procrastinate_jobs queue_job ON queue_job.id = job_row.procrastinate_job_id
 WHERE job_row.status IN ('queued', 'downloading', 'processing')
   AND queue_job.status IN ('succeeded', 'failed', 'cancelled', 'aborted')
   AND job_row.updated_at < timezone('utc', now())
                            - make_interval(secs => %(stalled_after_s)s::float8)
 ORDER BY job_row.id
   FOR UPDATE OF job_row SKIP LOCKED;

-- name: lock_track_for_cleanup
-- Lock a track against new job rows (their foreign key needs a share lock) while cleanup decides about its files; NOWAIT: a busy track is skipped this time
SELECT id FROM tracks WHERE id = %(track_id)s FOR UPDATE NOWAIT;

-- name: lock_download_rows_for_cleanup
-- A track's download rows, locked as a completing download locks its row (NOWAIT: a row being changed means its file is in use)
SELECT id, status FROM download_jobs WHERE track_id = %(track_id)s FOR UPDATE NOWAIT;

-- name: lock_processing_rows_for_cleanup
-- A track's separation rows, locked as a completing separation locks its row (NOWAIT, as above)
SELECT id, status FROM processing_jobs WHERE track_id = %(track_id)s FOR UPDATE NOWAIT;

-- name: path_referenced
-- Whether any row points at a stored path (read under the locks above, so a completion cannot commit in between)
SELECT EXISTS (SELECT 1 FROM download_jobs WHERE output_path = %(path)s)
       OR EXISTS (SELECT 1 FROM stems WHERE file_path = %(path)s) AS referenced;
