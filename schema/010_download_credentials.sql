-- Secrets stay out of what people read. download_jobs.source holds the source as shown
-- (URL user-info and signed query parameters masked by soundforge.redact); when masking changed
-- it, the full source a download must fetch lives only in download_credentials, which no
-- inspection view reads, so the read-only role (views only) never sees it, and neither do
-- NOTIFY payloads, `soundforge status` or the logs.

CREATE TABLE download_credentials (
    download_job_id uuid PRIMARY KEY REFERENCES download_jobs (id) ON DELETE CASCADE,
    source text NOT NULL
);

-- soundforge_queue_download_job_v1 with the fetchable source beside the shown one: a row and
-- its queue job as before, plus the credential row when the two differ.
CREATE FUNCTION soundforge_queue_download_job_v2(
    new_id uuid, for_track uuid, source text, fetch_source text,
    queue_name text, task_name text, queueing_lock text, args jsonb
) RETURNS download_jobs
LANGUAGE plpgsql AS $$
DECLARE
    created download_jobs := soundforge_queue_download_job_v1(
        new_id, for_track, source, queue_name, task_name, queueing_lock, args);
BEGIN
    IF created.id IS NOT NULL AND fetch_source IS DISTINCT FROM source THEN
        INSERT INTO download_credentials (download_job_id, source)
        VALUES (created.id, fetch_source);
    END IF;
    RETURN created;
END
$$;
