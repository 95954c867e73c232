-- Live progress: every job-row change sends NOTIFY soundforge_progress with a small JSON
-- payload, from the row change itself (persist first, then broadcast: a NOTIFY is delivered
-- only when the transaction commits). Also: where a download job takes its audio from.

ALTER TABLE download_jobs ADD COLUMN source text;

CREATE FUNCTION soundforge_stage_of_table_v1(table_name text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT CASE table_name
        WHEN 'download_jobs' THEN 'download'
        WHEN 'processing_jobs' THEN 'separate'
        WHEN 'analysis_jobs' THEN 'analyze'
    END
$$;

CREATE FUNCTION soundforge_notify_progress_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.status = OLD.status
            AND coalesce(NEW.progress, 0) = coalesce(OLD.progress, 0) THEN
        RETURN NULL;  -- bookkeeping only (procrastinate id, attempts): nothing to show
    END IF;
    PERFORM pg_notify('soundforge_progress', json_build_object(
        'track_id', NEW.track_id,
        'stage', soundforge_stage_of_table_v1(TG_TABLE_NAME),
        'job_id', NEW.id,
        'status', NEW.status,
        'progress', coalesce(NEW.progress, 0),
        'error', left(NEW.error, 200)
    )::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER download_jobs_notify_progress
    AFTER INSERT OR UPDATE ON download_jobs
    FOR EACH ROW EXECUTE FUNCTION soundforge_notify_progress_v1();
CREATE TRIGGER processing_jobs_notify_progress
    AFTER INSERT OR UPDATE ON processing_jobs
    FOR EACH ROW EXECUTE FUNCTION soundforge_notify_progress_v1();
CREATE TRIGGER analysis_jobs_notify_progress
    AFTER INSERT OR UPDATE ON analysis_jobs
    FOR EACH ROW EXECUTE FUNCTION soundforge_notify_progress_v1();
