-- For the dashboard, /metrics and /healthz: when each job row started and finished, a running
-- tally of finished rows per stage, outcome and duration bucket (a Prometheus histogram that
-- costs a few rows to read however many jobs ran), and which queues each live Procrastinate
-- worker serves (so health can ask "is anyone serving the queue that has work?").

ALTER TABLE download_jobs ADD COLUMN started_at timestamp(0) without time zone;
ALTER TABLE download_jobs ADD COLUMN finished_at timestamp(0) without time zone;
ALTER TABLE processing_jobs ADD COLUMN started_at timestamp(0) without time zone;
ALTER TABLE processing_jobs ADD COLUMN finished_at timestamp(0) without time zone;
ALTER TABLE analysis_jobs ADD COLUMN started_at timestamp(0) without time zone;
ALTER TABLE analysis_jobs ADD COLUMN finished_at timestamp(0) without time zone;

-- Finished rows per stage and outcome ('completed' / 'failed'), by duration bucket: `le` is the
-- bucket's upper bound in seconds (Infinity for the last); `seconds` sums the durations.
CREATE TABLE soundforge_stage_outcomes (
    stage text NOT NULL,
    status text NOT NULL,
    le double precision NOT NULL,
    jobs bigint NOT NULL DEFAULT 0,
    seconds double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (stage, status, le)
);

CREATE FUNCTION soundforge_duration_buckets_v1() RETURNS double precision[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY[1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 'Infinity']::double precision[]
$$;

CREATE FUNCTION soundforge_stage_times_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    duration double precision;
BEGIN
    IF NEW.status = OLD.status THEN
        RETURN NEW;
    END IF;
    IF NEW.status IN ('downloading', 'processing') AND NEW.started_at IS NULL THEN
        NEW.started_at := timezone('utc', now());
    END IF;
    IF NEW.status IN ('completed', 'failed') AND OLD.status NOT IN ('completed', 'failed') THEN
        NEW.finished_at := timezone('utc', now());
        duration := greatest(0, extract(epoch FROM
            clock_timestamp() AT TIME ZONE 'utc' - coalesce(NEW.started_at, NEW.inserted_at)));
        INSERT INTO soundforge_stage_outcomes AS tally (stage, status, le, jobs, seconds)
        SELECT soundforge_stage_of_table_v1(TG_TABLE_NAME), NEW.status::text, min(bound), 1,
               duration
        FROM unnest(soundforge_duration_buckets_v1()) bound WHERE bound >= duration
        ON CONFLICT (stage, status, le) DO UPDATE
        SET jobs = tally.jobs + 1, seconds = tally.seconds + excluded.seconds;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER download_jobs_stage_times BEFORE UPDATE ON download_jobs
    FOR EACH ROW EXECUTE FUNCTION soundforge_stage_times_v1();
CREATE TRIGGER processing_jobs_stage_times BEFORE UPDATE ON processing_jobs
    FOR EACH ROW EXECUTE FUNCTION soundforge_stage_times_v1();
CREATE TRIGGER analysis_jobs_stage_times BEFORE UPDATE ON analysis_jobs
    FOR EACH ROW EXECUTE FUNCTION soundforge_stage_times_v1();

-- The queues each registered worker serves (written by `soundforge worker` when it registers;
-- gone with the worker's row).
CREATE TABLE soundforge_worker_queues (
    worker_id bigint PRIMARY KEY REFERENCES procrastinate_workers (id) ON DELETE CASCADE,
    name text NOT NULL,
    queues text[] NOT NULL,
    pid integer,
    hostname text
);

-- "Done in the last hour" reads the finish times through these.
CREATE INDEX download_jobs_finished_at_index ON download_jobs (finished_at);
CREATE INDEX processing_jobs_finished_at_index ON processing_jobs (finished_at);
CREATE INDEX analysis_jobs_finished_at_index ON analysis_jobs (finished_at);
