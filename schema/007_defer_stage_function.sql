-- Enqueue a stage's Procrastinate job unless one holding the same queueing lock is already
-- waiting (NULL then), without raising: callers create the job row and its queue job in one
-- statement and one transaction, with no savepoint per defer.

CREATE FUNCTION soundforge_defer_stage_v1(
    queue_name text, task_name text, queueing_lock text, args jsonb
) RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    IF queueing_lock IS NOT NULL AND EXISTS (
        SELECT 1 FROM procrastinate_jobs job
        WHERE job.queueing_lock = soundforge_defer_stage_v1.queueing_lock
          AND job.status = 'todo'
    ) THEN
        RETURN NULL;
    END IF;
    RETURN (procrastinate_defer_jobs_v1(ARRAY[ROW(
        queue_name, task_name, 0, NULL, queueing_lock, args, NULL
    )::procrastinate_job_to_defer_v1]))[1];
END
$$;
