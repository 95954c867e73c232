-- soundforge_complete_download_v2 (016) completed the download row with one UPDATE and then
-- recorded the file's SHA-256 with a second UPDATE of the same row: a second row version, the
-- status guard and the stage-times trigger run twice, and lock_version grew by two. v3 is v1
-- (009) with the digest written by the completing UPDATE itself: one row change per
-- completion, same results (the completed row's id, one row per follow-up created, no rows
-- when the row changed since it was read).

CREATE FUNCTION soundforge_complete_download_v3(
    download_id uuid, expected_lock_version integer, stored_path text, stored_size bigint,
    audio_duration integer, follow_ups jsonb, stored_sha256 text
) RETURNS TABLE (stage text, created_id uuid)
LANGUAGE plpgsql AS $$
DECLARE
    completed download_jobs;
    follow_up jsonb;
BEGIN
    PERFORM 1 FROM tracks track
    WHERE track.id = (SELECT job.track_id FROM download_jobs job WHERE job.id = download_id)
    FOR UPDATE;
    UPDATE download_jobs AS job
    SET status = 'completed', progress = 100, output_path = stored_path,
        file_size = stored_size, error = NULL,
        audio_sha256 = coalesce(stored_sha256, job.audio_sha256)
    WHERE job.id = download_id AND job.lock_version = expected_lock_version
    RETURNING job.* INTO completed;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE tracks AS track SET duration = audio_duration, updated_at = timezone('utc', now())
    WHERE track.id = completed.track_id AND track.duration IS NULL;
    stage := 'download';
    created_id := completed.id;
    RETURN NEXT;
    FOR follow_up IN SELECT value FROM jsonb_array_elements(follow_ups) LOOP
        stage := follow_up->>'stage';
        IF stage = 'separate' THEN
            SELECT job.id INTO created_id FROM soundforge_queue_processing_job_v1(
                (follow_up->>'id')::uuid, completed.track_id, follow_up->>'model',
                coalesce(follow_up->'options', '{}'::jsonb), follow_up->>'queue',
                follow_up->>'task_name', follow_up->>'queueing_lock', follow_up->'args'
            ) job;
        ELSIF stage = 'analyze' THEN
            SELECT job.id INTO created_id FROM soundforge_queue_analysis_job_v1(
                (follow_up->>'id')::uuid, completed.track_id, follow_up->>'queue',
                follow_up->>'task_name', follow_up->>'queueing_lock', follow_up->'args'
            ) job;
        ELSE
            RAISE EXCEPTION 'unknown follow-up stage %', quote_literal(stage)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF created_id IS NOT NULL THEN
            RETURN NEXT;
        END IF;
    END LOOP;
END
$$;
