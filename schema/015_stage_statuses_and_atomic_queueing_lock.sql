-- Two fixes to earlier functions:
--
-- 1. The status guard (003) ranked statuses without looking at the table, so a processing_jobs
--    or analysis_jobs row could be set to 'downloading', a download_jobs row to 'processing'.
--    soundforge_job_guard_v2 is v1 plus one rule: each table has its own working status
--    (mirrors `can_move(..., active=...)` in soundforge/status.py). The triggers switch to v2.
-- 2. soundforge_defer_stage_v1 (007) checked the queueing lock, then inserted: a concurrent
--    caller holding the same lock in an uncommitted transaction made the insert fail with
--    unique_violation. Same name and signature, now one INSERT ... ON CONFLICT DO NOTHING on
--    Procrastinate's partial unique index (procrastinate_jobs_queueing_lock_idx_v1): it waits
--    for that transaction and returns NULL when the lock is taken, still with no savepoint.
--    It writes the row procrastinate_defer_jobs_v1 writes (same columns; the same triggers
--    fire).

CREATE FUNCTION soundforge_job_guard_v2() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    allowed constant text := 'statuses only move forward: queued < downloading < processing '
        '< completed | failed, and completed/failed are final';
    working constant text := CASE TG_TABLE_NAME WHEN 'download_jobs' THEN 'downloading'
                                                ELSE 'processing' END;
BEGIN
    IF soundforge_status_rank_v1(NEW.status) IS NULL THEN
        RAISE EXCEPTION 'invalid status % on %: must be one of queued, downloading, '
            'processing, completed, failed', quote_literal(NEW.status), TG_TABLE_NAME
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.status IN ('downloading', 'processing') AND NEW.status <> working THEN
        RAISE EXCEPTION 'illegal status change on % %: -> % (a % row works as %, never %)',
            TG_TABLE_NAME, NEW.id, NEW.status, TG_TABLE_NAME, working, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.progress IS NOT NULL AND (NEW.progress < 0 OR NEW.progress > 100) THEN
        RAISE EXCEPTION 'invalid progress % on %: must be between 0 and 100',
            NEW.progress, TG_TABLE_NAME
            USING ERRCODE = 'check_violation';
    END IF;
    IF TG_OP = 'UPDATE' THEN
        IF OLD.status IN ('completed', 'failed') AND NEW.status <> OLD.status THEN
            RAISE EXCEPTION 'illegal status change on % %: % -> % (% is final; %)',
                TG_TABLE_NAME, OLD.id, OLD.status, NEW.status, OLD.status, allowed
                USING ERRCODE = 'check_violation';
        END IF;
        IF soundforge_status_rank_v1(NEW.status) < soundforge_status_rank_v1(OLD.status) THEN
            RAISE EXCEPTION 'illegal status change on % %: % -> % (%)',
                TG_TABLE_NAME, OLD.id, OLD.status, NEW.status, allowed
                USING ERRCODE = 'check_violation';
        END IF;
        IF coalesce(NEW.progress, 0) < coalesce(OLD.progress, 0) THEN
            RAISE EXCEPTION 'illegal progress change on % %: % -> % (progress never decreases)',
                TG_TABLE_NAME, OLD.id, OLD.progress, NEW.progress
                USING ERRCODE = 'check_violation';
        END IF;
        NEW.lock_version := OLD.lock_version + 1;
        NEW.updated_at := timezone('utc', now());
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER download_jobs_status_guard ON download_jobs;
DROP TRIGGER processing_jobs_status_guard ON processing_jobs;
DROP TRIGGER analysis_jobs_status_guard ON analysis_jobs;
CREATE TRIGGER download_jobs_status_guard
    BEFORE INSERT OR UPDATE ON download_jobs
    FOR EACH ROW EXECUTE FUNCTION soundforge_job_guard_v2();
CREATE TRIGGER processing_jobs_status_guard
    BEFORE INSERT OR UPDATE ON processing_jobs
    FOR EACH ROW EXECUTE FUNCTION soundforge_job_guard_v2();
CREATE TRIGGER analysis_jobs_status_guard
    BEFORE INSERT OR UPDATE ON analysis_jobs
    FOR EACH ROW EXECUTE FUNCTION soundforge_job_guard_v2();

CREATE OR REPLACE FUNCTION soundforge_defer_stage_v1(
    queue_name text, task_name text, queueing_lock text, args jsonb
) RETURNS bigint
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    queued bigint;
BEGIN
    INSERT INTO procrastinate_jobs AS job (queue_name, task_name, priority, lock, queueing_lock,
                                           args, scheduled_at)
    VALUES ($1, $2, 0, NULL, $3, $4, NULL)
    ON CONFLICT (queueing_lock) WHERE status = 'todo' DO NOTHING
    RETURNING job.id INTO queued;
    RETURN queued;
END
$$;
