-- Pipeline steps that took several statements (and an explicit transaction) from Python each
-- become one statement: a stage task is a start and a finish, so its bookkeeping costs two
-- round trips however many rows it touches (bench/queue.py measures the effect).
--
-- soundforge_queue_{download,processing,analysis}_job_v1 create a stage's row and its queue
-- job together (a row of NULLs when a job holding the same queueing lock is already waiting);
-- queue and task names and the queueing lock come from the caller (soundforge/models.py and
-- soundforge/queue.py own them). soundforge_complete_download_v1 completes a download and
-- fans out the stages that follow, atomically.

CREATE FUNCTION soundforge_queue_download_job_v1(
    new_id uuid, for_track uuid, source text,
    queue_name text, task_name text, queueing_lock text, args jsonb
) RETURNS download_jobs
LANGUAGE plpgsql AS $$
DECLARE
    queued bigint := soundforge_defer_stage_v1(queue_name, task_name, queueing_lock, args);
    created download_jobs;
BEGIN
    IF queued IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO download_jobs AS job (id, track_id, source, status, progress,
                                      procrastinate_job_id, inserted_at, updated_at)
    VALUES (new_id, for_track, source, 'queued', 0, queued, timezone('utc', now()),
            timezone('utc', now()))
    RETURNING job.* INTO created;
    RETURN created;
END
$$;

CREATE FUNCTION soundforge_queue_processing_job_v1(
    new_id uuid, for_track uuid, model text, options jsonb,
    queue_name text, task_name text, queueing_lock text, args jsonb
) RETURNS processing_jobs
LANGUAGE plpgsql AS $$
DECLARE
    queued bigint := soundforge_defer_stage_v1(queue_name, task_name, queueing_lock, args);
    created processing_jobs;
BEGIN
    IF queued IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO processing_jobs AS job (id, track_id, model, options, status, progress,
                                        procrastinate_job_id, inserted_at, updated_at)
    VALUES (new_id, for_track, model, options, 'queued', 0, queued, timezone('utc', now()),
            timezone('utc', now()))
    RETURNING job.* INTO created;
    RETURN created;
END
$$;

CREATE FUNCTION soundforge_queue_analysis_job_v1(
    new_id uuid, for_track uuid,
    queue_name text, task_name text, queueing_lock text, args jsonb
) RETURNS analysis_jobs
LANGUAGE plpgsql AS $$
DECLARE
    queued bigint := soundforge_defer_stage_v1(queue_name, task_name, queueing_lock, args);
    created analysis_jobs;
BEGIN
    IF queued IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO analysis_jobs AS job (id, track_id, status, progress, procrastinate_job_id,
                                      inserted_at, updated_at)
    VALUES (new_id, for_track, 'queued', 0, queued, timezone('utc', now()),
            timezone('utc', now()))
    RETURNING job.* INTO created;
    RETURN created;
END
$$;

-- Complete a download (optimistically locked on lock_version) and create and enqueue the
-- follow-ups, each an object {stage, id, queue, task_name, queueing_lock, args, model,
-- options}, in the caller's statement: all of it commits or none of it. The track row is
-- locked first, as every pipeline decision about a track does. Returns the completed row's id
-- (stage 'download') and one row per follow-up created (none for a follow-up already waiting);
-- no rows at all when the download row changed since it was read.
CREATE FUNCTION soundforge_complete_download_v1(
    download_id uuid, expected_lock_version integer, stored_path text, stored_size bigint,
    audio_duration integer, follow_ups jsonb
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
        file_size = stored_size, error = NULL
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

-- The stored path of a track's newest completed download: the audio separation and analysis
-- read (NULL when it has none). A starting stage gets it in its start statement.
CREATE FUNCTION soundforge_track_audio_v1(for_track uuid) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT job.output_path FROM download_jobs job
    WHERE job.track_id = for_track AND job.status = 'completed' AND job.output_path IS NOT NULL
    ORDER BY job.insert_order DESC
    LIMIT 1
$$;
