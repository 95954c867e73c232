-- Forward-only status machine, enforced in the database so no SQL user can break it
-- (mirrors soundforge/status.py). Ranks: queued 0 < downloading 1 < processing 2 <
-- completed 3 | failed 3; completed and failed are terminal. Progress stays within 0..100 and
-- never decreases. Every update bumps lock_version (optimistic locking) and updated_at.

CREATE FUNCTION soundforge_status_rank_v1(status text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT CASE status
        WHEN 'queued' THEN 0
        WHEN 'downloading' THEN 1
        WHEN 'processing' THEN 2
        WHEN 'completed' THEN 3
        WHEN 'failed' THEN 3
    END
$$;

CREATE FUNCTION soundforge_job_guard_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    allowed constant text := 'statuses only move forward: queued < downloading < processing '
        '< completed | failed, and completed/failed are final';
BEGIN
    IF soundforge_status_rank_v1(NEW.status) IS NULL THEN
        RAISE EXCEPTION 'invalid status % on %: must be one of queued, downloading, '
            'processing, completed, failed', quote_literal(NEW.status), TG_TABLE_NAME
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

CREATE TRIGGER download_jobs_status_guard
    BEFORE INSERT OR UPDATE ON download_jobs
    FOR EACH ROW EXECUTE FUNCTION soundforge_job_guard_v1();
CREATE TRIGGER processing_jobs_status_guard
    BEFORE INSERT OR UPDATE ON processing_jobs
    FOR EACH ROW EXECUTE FUNCTION soundforge_job_guard_v1();
CREATE TRIGGER analysis_jobs_status_guard
    BEFORE INSERT OR UPDATE ON analysis_jobs
    FOR EACH ROW EXECUTE FUNCTION soundforge_job_guard_v1();
