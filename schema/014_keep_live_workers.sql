-- A worker row is the only sign that a running queue job's worker is alive: deleting it sets
-- the job's worker_id to NULL, and the rescuer then takes the job as orphaned. Procrastinate's
-- workers prune rows whose heartbeat is older than their own `stalled_worker_timeout` (30 s by
-- default in a bare `procrastinate worker`), which can be far shorter than SoundForge's
-- threshold. So a row whose worker still runs a job and heartbeated within
-- `soundforge.stalled_after_s` (30 minutes when unset, as in soundforge_stalled) is kept,
-- whoever deletes it; once its jobs ended or were rescued it goes like any other.

CREATE FUNCTION soundforge_keep_live_worker_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.last_heartbeat >= now() - make_interval(secs => coalesce(
           nullif(current_setting('soundforge.stalled_after_s', true), '')::double precision,
           1800))
       AND EXISTS (SELECT 1 FROM procrastinate_jobs job
                   WHERE job.worker_id = OLD.id AND job.status = 'doing') THEN
        RETURN NULL;  -- keep it: its job is not orphaned
    END IF;
    RETURN OLD;
END
$$;

CREATE TRIGGER soundforge_keep_live_worker
    BEFORE DELETE ON procrastinate_workers
    FOR EACH ROW EXECUTE FUNCTION soundforge_keep_live_worker_v1();
